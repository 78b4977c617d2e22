#!/usr/bin/env python
"""Write a seeded, deterministic subset of a COCO annotation file (same subset every time),
with its image ids listed, for the label-efficient COCO configs.

    python tools/dataset_converters/coco_subset.py \
        data/coco/annotations/instances_train2017.json \
        data/coco/annotations/instances_train2017_10pct_seed0.json --fraction 0.1 --seed 0

Writes OUT and OUT.ids.txt (one image id a line). The library module is loaded by its file
path: no torch, no toolbox import.
"""
import argparse
import os.path as osp
import sys

PROG = 'tools/dataset_converters/coco_subset.py'
sys.path.append(osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/: _early
from _early import load_library  # noqa: E402


def main(argv=None):
    library = load_library('tools.coco_subset')
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n')[0])
    parser.add_argument('ann_file', help='COCO annotation file (e.g. instances_train2017.json)')
    parser.add_argument('out', help='subset annotation file to write')
    parser.add_argument('--fraction', type=float, required=True,
                        help='share of the images to keep, in (0, 1], e.g. 0.02, 0.1, 0.2')
    parser.add_argument('--seed', type=int, default=0, help='numpy seed (default 0)')
    args = parser.parse_args(argv)
    try:
        ids_file, num_images, num_annotations = library.write_subset(
            args.ann_file, args.out, args.fraction, args.seed)
    except library.SubsetError as err:
        print(f'{PROG}: error: {err}', file=sys.stderr)
        return 2
    print(f'wrote {args.out}: {num_images} images, {num_annotations} annotations '
          f'(fraction {args.fraction}, seed {args.seed}); image ids in {ids_file}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
