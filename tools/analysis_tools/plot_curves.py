#!/usr/bin/env python
"""Plot logged training curves of one or several runs into one PNG.

    python tools/analysis_tools/plot_curves.py work_dirs/rils_demo work_dirs/clip_demo \
        --keys loss loss_contrastive i2t_acc lr --legend RILS CLIP --out curves.png

A run is a work dir (its newest ``<timestamp>/vis_data/scalars.json``), a timestamp folder or
the ``scalars.json`` file itself; the x axis is the training iteration.
"""
import argparse

from rils_mm.tools.cli import UsageError, run_cli
from rils_mm.tools.plot_curves import CurvesError, plot_curves


def main(argv):
    parser = argparse.ArgumentParser(prog='tools/analysis_tools/plot_curves.py',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('runs', nargs='+', help='work dirs, timestamp folders or scalars.json')
    parser.add_argument('--keys', nargs='+', default=['loss'],
                        help='logged keys to plot (default: loss), e.g. loss lr i2t_acc')
    parser.add_argument('--legend', nargs='+', help='one name per run (default: dir names)')
    parser.add_argument('--out', default='curves.png', help='PNG to write (default curves.png)')
    parser.add_argument('--title', help='figure title')
    args = parser.parse_args(argv)
    try:
        out = plot_curves(args.runs, args.keys, args.legend, args.out, args.title)
    except CurvesError as err:
        raise UsageError(str(err)) from None
    print(f'wrote {out}')


if __name__ == '__main__':
    run_cli(main, prog='tools/analysis_tools/plot_curves.py')
