#!/usr/bin/env python
"""The masks a method draws, and its reconstruction loss on every patch.

RILS, MAE and MAE+CLIP mask uniformly at random (MAE's per-sample shuffle); MILAN keeps
patches drawn with its CLIP teacher's class-token attention as weights (shown in a fourth
column). The loss map is the method's own per-patch loss: RILS's KL(teacher || student) in
language space on the masked patches (against the captions given, by default the demo's 30
class prompts; the vision-space variant uses its fixed prototypes), MAE's pixel MSE on the
masked patches, MILAN's 2 - 2 cos on every patch. Each draw is seeded (``--seed``, then
``seed + 1``, ...) exactly as training draws, so the same seed gives the model's own mask.
See rils_mm/visualization/masking.py for what is left out (loss weight, RILS's filter).

Example::

    python tools/visualization/masks.py configs/mae/demo_cpu.py work_dirs/mae_demo/epoch_6.pth \\
        data/demo_shapes/val/images/000000.png --draws 3 --out mae_masks.png

The PNG is ``C * panel`` by ``draws * panel`` pixels, C = 3 columns (4 for MILAN),
``--panel-size`` default 200.
"""
import _cli

PROG = 'tools/visualization/masks.py'


def parse_args(argv):
    parser = _cli.parser(PROG, __doc__.splitlines()[0])
    _cli.add_caption_args(parser)
    parser.add_argument('--draws', type=int, default=1, help='masks to draw (rows)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the first draw')
    args = parser.parse_args(argv)
    _cli.check_files(PROG, args)
    if not 1 <= args.draws <= 32:
        _cli.fail(PROG, f'--draws must be in 1..32, got {args.draws}')
    return args


def main(args):
    from rils_mm.visualization import draw_mask, draw_masks_figure, reconstruction_kind
    model, image, inputs = _cli.load(args)
    with _cli.input_errors():
        kind = reconstruction_kind(model)
        captions = _cli.captions(args, default_to_demo=kind == 'rils')
        draws = [draw_mask(model, inputs, args.seed + i, captions) for i in range(args.draws)]
        width, height = draw_masks_figure(model, image, draws, args.out, args.panel_size)
    losses = ', '.join(f'{float(d.loss_total[0]):.4g}' for d in draws)
    print(f'{args.out}: {kind} masking, {draws[0].loss_name}: {losses}; {width} x {height} px')


if __name__ == '__main__':
    _cli.run(parse_args, main, PROG)
