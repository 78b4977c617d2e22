"""Generate the demo's captioned-shapes dataset (train shards, val and held-out splits).

Example (what the README's demo runs on first use)::

    python tools/dataset_converters/make_demo_data.py --out data/demo_shapes --num-train 4096
"""
import argparse
import os.path as osp
import sys
import time

from rils_mm.compat import install_tool_conveniences
from rils_mm.datasets.demo_shapes import generate_demo_shapes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='data/demo_shapes')
    parser.add_argument('--num-train', type=int, default=4096)
    parser.add_argument('--num-val', type=int, default=512)
    parser.add_argument('--num-heldout', type=int, default=512)
    parser.add_argument('--image-size', type=int, default=64)
    parser.add_argument('--samples-per-shard', type=int, default=256)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    existed = osp.exists(osp.join(args.out, 'meta.json'))
    try:
        meta = generate_demo_shapes(args.out, num_train=args.num_train, num_val=args.num_val,
                                    num_heldout=args.num_heldout, image_size=args.image_size,
                                    samples_per_shard=args.samples_per_shard, seed=args.seed)
    except (OSError, ValueError) as error:
        sys.exit(f'make_demo_data.py: error: {error}')
    if existed:
        print(f'{args.out} already holds the demo data with these settings; nothing to do')
        return
    print(f'wrote {meta["num_train"]} train pairs in {meta["num_shards"]} shard(s), '
          f'{meta["num_val"]} val and {meta["num_heldout"]} held-out images to {args.out} '
          f'in {time.time() - start:.1f} s; held-out pairs: {meta["heldout_pairs"]}')


if __name__ == '__main__':
    install_tool_conveniences()
    main()
