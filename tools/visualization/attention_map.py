#!/usr/bin/env python
"""The class token's attention in the image tower's last block, drawn over the image.

The attention is recomputed from the last block's own q and k (a forward hook records the
block's normalised input; the model is not modified): softmax(q k^T / sqrt(d_head)) per head,
a row that sums to 1 over the class token and the patches. The panels show its patch part,
the mean over heads and, with ``--per-head``, every head; titles give the share of the row
that falls on the patches. Any method's checkpoint (RILS, CLIP, MAE, MAE+CLIP, MILAN, LiT,
MaMMUT; RILS pools the mean patch token but its ViT still has the class token) and open_clip
ViTs.

Example::

    python tools/visualization/attention_map.py configs/rils/demo_cpu.py \\
        work_dirs/demo_cpu/epoch_6.pth data/demo_shapes/val/images/000000.png \\
        --per-head --out attention.png

The PNG is ``min(columns, P) * panel`` by ``ceil(P / columns) * panel`` pixels, P = 2 panels
(+ one per head with ``--per-head``), ``--panel-size`` default 200.
"""
import _cli

PROG = 'tools/visualization/attention_map.py'


def parse_args(argv):
    parser = _cli.parser(PROG, __doc__.splitlines()[0])
    parser.add_argument('--per-head', action='store_true', help='one panel per head too')
    parser.add_argument('--columns', type=int, default=6, help='panels per row at most')
    args = parser.parse_args(argv)
    _cli.check_files(PROG, args)
    return args


def main(args):
    from rils_mm.visualization import draw_attention_figure, last_block_attention
    model, image, inputs = _cli.load(args)
    with _cli.input_errors():
        attention = last_block_attention(model, inputs)
        width, height = draw_attention_figure(image, attention, args.out, args.per_head,
                                              args.panel_size, args.columns)
    row = attention.class_token_row()[0].mean(0)
    print(f'{args.out}: {attention.weights.shape[1]} heads, class token -> patches '
          f'{float(row[1:].sum()):.3f}, -> itself {float(row[0]):.3f}, {width} x {height} px')


if __name__ == '__main__':
    _cli.run(parse_args, main, PROG)
