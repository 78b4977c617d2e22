"""Pack an image folder and a caption table into img2dataset-style webdataset shards.

Rows with an unusable caption (missing, empty, not UTF-8) or no image path are skipped: the
console says how many per reason and on which lines, and ``make_shards_report.json`` beside
the shards lists them. A missing image file, or a table with no usable row, is an error.

Example::

    python tools/dataset_converters/make_shards.py data/cc_images data/cc.tsv data/cc_shards \
        --samples-per-shard 1000 --img-key filepath --caption-key title --sep '\\t'
"""
import argparse
import sys

from rils_mm.compat import install_tool_conveniences
from rils_mm.datasets.shard_tools import describe_skipped, make_shards


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('image_root', help='folder the table\'s image paths are relative to')
    parser.add_argument('captions', help='caption table: .csv/.tsv (with header) or .jsonl')
    parser.add_argument('out_dir', help='where to write 00000.tar, 00001.tar, ... and sizes.json')
    parser.add_argument('--samples-per-shard', type=int, default=1000)
    parser.add_argument('--img-key', default='filepath', help='image path column/key')
    parser.add_argument('--caption-key', default='title', help='caption column/key')
    parser.add_argument('--sep', default='\t', help='CSV separator (default: tab)')
    parser.add_argument('--quoting', default='minimal', choices=('minimal', 'none'),
                        help="CSV quoting: 'none' reads quote characters as plain text "
                        '(for captions that contain them)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    sep = args.sep.encode().decode('unicode_escape')  # allow a literal '\t' on the command line
    try:
        result = make_shards(args.image_root, args.captions, args.out_dir,
                             args.samples_per_shard, args.img_key, args.caption_key, sep,
                             args.quoting)
    except (OSError, KeyError, ValueError) as error:
        # Data problems are the user's to fix: one line naming the file, no traceback.
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        sys.exit(f'make_shards.py: error: {message}')
    if result.skipped:
        print(f'make_shards.py: warning: skipped {result.rows - result.written} of '
              f'{result.rows} rows of {args.captions}: '
              f'{describe_skipped(result.skipped, args.captions)}; see '
              f'{result.report_file}', file=sys.stderr)
    print(f'wrote {len(result.paths)} shard(s) ({result.written} samples) to {args.out_dir}')


if __name__ == '__main__':
    install_tool_conveniences()
    main()
