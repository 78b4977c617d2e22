#!/usr/bin/env python
"""Per-patch probabilities over a set of captions, drawn over the image.

For each patch, the softmax over the captions of the similarity between the patch's projected,
L2-normalised output token and each normalised caption embedding, divided by the model's
temperature (rils_mm/visualization/patch_text.py). For RILS these are the teacher
distributions of its reconstruction objective (intact pass, teacher temperature) and, beside
them, the student's (decoder predictions after a masked pass, student temperature; the masked
view shows the hidden patches in grey). For CLIP-type models and open_clip models: the patch
tokens through the image projection, temperature 1 / logit scale.

Examples::

    python tools/visualization/patch_sentence_map.py configs/rils/demo_cpu.py \\
        work_dirs/demo_cpu/epoch_6.pth data/demo_shapes/heldout/images/000000.png \\
        --captions "a red circle" "a blue square" "a green triangle" --out red_circle.png
    python tools/visualization/patch_sentence_map.py configs/clip/demo_cpu.py CKPT IMAGE \\
        --class-names --out all_classes.png   # the demo's 30 classes, "a photo of a {}"

The PNG is ``min(columns, K + 1) * panel`` pixels wide and ``blocks * ceil((K + 1) / columns)
* panel`` high for K captions (``--panel-size``, default 200; blocks: 2 with student maps).
"""
import argparse

import _cli

PROG = 'tools/visualization/patch_sentence_map.py'


def parse_args(argv):
    parser = _cli.parser(PROG, __doc__.splitlines()[0])
    _cli.add_caption_args(parser)
    parser.add_argument('--student', action=argparse.BooleanOptionalAction, default=None,
                        help='RILS: also the decoder\'s maps from a masked view (default: on '
                        'for RILS models)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the mask (default: 0)')
    parser.add_argument('--temperature', type=float, default=None,
                        help='override the softmax temperature of every map')
    parser.add_argument('--columns', type=int, default=6, help='panels per row at most')
    args = parser.parse_args(argv)
    _cli.check_files(PROG, args)
    if not args.captions and args.class_names is None:
        _cli.fail(PROG, 'give the captions: --captions TEXT ... or --class-names [FILE]')
    return args


def main(args):
    from rils_mm.visualization import (default_student, draw_patch_caption_figure,
                                       masked_patch_caption_maps, patch_caption_maps)
    model, image, inputs = _cli.load(args)
    captions = _cli.captions(args)
    with _cli.input_errors():
        maps = [patch_caption_maps(model, inputs, captions, args.temperature)]
        if args.student or (args.student is None and default_student(model)):
            maps.append(masked_patch_caption_maps(model, inputs, captions, args.seed,
                                                  args.temperature))
        width, height = draw_patch_caption_figure(image, captions, maps, args.out,
                                                  args.panel_size, args.columns)
    print(f'{args.out}: {len(captions)} captions, {" and ".join(m.name for m in maps)} maps, '
          f'{width} x {height} px')


if __name__ == '__main__':
    _cli.run(parse_args, main, PROG)
