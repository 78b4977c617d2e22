"""Count the samples of webdataset shards and list the bad ones with their reasons.

Example::

    python tools/dataset_converters/inspect_shards.py 'data/laion/{00000..00099}.tar' --show 20
"""
import argparse
import json

from rils_mm.datasets.shard_tools import inspect_shards
from rils_mm.tools.cli import UsageError, run_cli

PROG = 'tools/dataset_converters/inspect_shards.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument('shards', nargs='+', help='shard paths, brace patterns or folders')
    parser.add_argument('--no-decode', action='store_true',
                        help='check headers and captions only (fast); skip image decoding')
    parser.add_argument('--max-pixels', type=int, default=8192 * 8192)
    parser.add_argument('--max-aspect-ratio', type=float, default=20.0)
    parser.add_argument('--min-size', type=int, default=8)
    parser.add_argument('--show', type=int, default=50, help='bad samples to list')
    parser.add_argument('--json', action='store_true', help='print the full report as JSON')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        report = inspect_shards(args.shards, decode=not args.no_decode,
                                max_pixels=args.max_pixels,
                                max_aspect_ratio=args.max_aspect_ratio, min_size=args.min_size)
    except (FileNotFoundError, ValueError, ImportError) as error:
        # Shards that do not exist, a pattern that names none, a protocol without its package.
        raise UsageError(' '.join(str(error).split())) from None
    if args.json:
        print(json.dumps(report, indent=1, default=dict))
        return report
    bad = report['num_samples'] - report['num_good']
    print(f'{report["num_shards"]} shard(s), {report["num_samples"]} samples, '
          f'{report["num_good"]} good, {bad} bad')
    for reason, count in report['reasons'].most_common():
        print(f'  {reason}: {count}')
    if report['converted']:
        print(f'converted to RGB when loaded: {dict(report["converted"])}')
    for message in report['shard_errors']:
        print(f'shard error: {message}')
    for shard, key, reason, detail in report['bad'][:args.show]:
        print(f'{shard}\t{key}\t{reason}\t{detail}')
    return report


if __name__ == '__main__':
    run_cli(main, prog=PROG)
