#!/usr/bin/env python
"""Print our detection/segmentation transfer configs beside the reference recipes (detectron2's
and mmdet's ViTDet, mmseg's MAE UperNet), one row per setting that moves AP or mIoU.

    python tools/analysis_tools/compare_recipes.py [coco lvis ade20k ...] [--check]

A row is equal, or our config's ``recipe_notes`` says why it differs; ``--check`` exits with
status 1 when a differing row has no reason. Configs are parsed, no model is built, and the
library module is loaded by its file path (``rils_mm`` itself imports torch and the toolboxes:
seconds this tool does not need).
"""
import argparse
import os.path as osp
import sys

PROG = 'tools/analysis_tools/compare_recipes.py'
sys.path.append(osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/: _early
from _early import load_library  # noqa: E402


def main(argv=None):
    library = load_library('tools.compare_recipes')
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n')[0])
    parser.add_argument('recipes', nargs='*', default=list(library.RECIPES), metavar='RECIPE',
                        help=f'any of {", ".join(library.RECIPES)} (default: all)')
    parser.add_argument('--check', action='store_true',
                        help='exit with status 1 if a differing row carries no reason')
    args = parser.parse_args(argv)
    missing = []
    for name in args.recipes:
        try:
            result = library.compare(name)
        except library.RecipeError as err:
            print(f'{PROG}: error: {err}', file=sys.stderr)
            return 2
        print(library.markdown(result) + '\n')
        missing += [f'{name}: {label}' for label in library.unexplained(result)]
    if args.check and missing:
        print(f'{PROG}: differs without a reason in recipe_notes: ' + '; '.join(missing),
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
