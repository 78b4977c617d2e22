"""The command lines of ``tools/train.py`` and ``tools/test.py``, and the checks that need
no more than the command line and the config's text.

Importing torch and the OpenMMLab stack takes seconds; a ``--help``, a mistyped option or a
config with a syntax error should not wait for them. This module imports only argparse, ast and
mmengine's config module (no torch), so the tools can load it on its own, by file path
(``tools/_early.py``), run :func:`check_early` and only then import :mod:`rils_mm.tools.cli`,
which uses the same parsers. Keep it that way: no import of ``rils_mm`` here.
"""
import argparse
import ast
import os.path as osp
import sys
from typing import List, Optional

from mmengine.config import DictAction

__all__ = ['UsageError', 'add_common_args', 'check_config_file', 'check_config_syntax',
           'train_parser', 'test_parser', 'check_early']


class UsageError(Exception):
    """A mistake in the command line or config, reported in one line."""


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override config entries: key=value (nested keys with dots)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    parser.add_argument('--debug', action='store_true',
                        help='show full tracebacks for configuration errors')


def check_config_syntax(config: str, _seen: Optional[set] = None) -> None:
    """Refuse a Python config that does not parse, or inherits (``_base_``) from one that does
    not, naming the file, line and problem."""
    seen = set() if _seen is None else _seen
    if not config.endswith('.py') or config in seen or not osp.isfile(config):
        return
    seen.add(config)
    with open(config, encoding='utf-8') as file:
        source = file.read()
    try:
        tree = ast.parse(source, filename=config)
    except SyntaxError as err:
        where = f'{config}, line {err.lineno}' if err.lineno else config
        code = f': {err.text.strip()}' if err.text and err.text.strip() else ''
        raise UsageError(f'syntax error in config {where}: {err.msg}{code}') from None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], 'id', None) == '_base_'):
            try:
                bases = ast.literal_eval(node.value)
            except ValueError:  # not a literal: left to mmengine
                return
            if not isinstance(bases, (str, list, tuple)):
                return
            for base in [bases] if isinstance(bases, str) else bases:
                if isinstance(base, str) and '::' not in base:
                    check_config_syntax(osp.normpath(osp.join(osp.dirname(config), base)), seen)


def train_parser() -> argparse.ArgumentParser:
    """``tools/train.py``'s command line."""
    parser = argparse.ArgumentParser(prog='tools/train.py', description='Train a model')
    parser.add_argument('config', help='config file')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from CHECKPOINT, or with no value from the latest '
                        'checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the actual total batch size')
    parser.add_argument('--no-validate', action='store_true', help='skip validation')
    parser.add_argument('--overwrite', action='store_true',
                        help='start a new run in a work dir that holds an earlier run\'s '
                        'checkpoints (they are replaced as the new run saves)')
    parser.add_argument('--skip-nonfinite', action='store_true',
                        help='skip (and count) optimizer steps with a non-finite loss or '
                        'gradient instead of stopping the run')
    parser.add_argument('--remote-dir', help='also copy checkpoints and logs to this fsspec '
                        'URL (s3://bucket/run); --resume reads them back on a new node')
    add_common_args(parser)
    return parser


def test_parser() -> argparse.ArgumentParser:
    """``tools/test.py``'s command line."""
    parser = argparse.ArgumentParser(prog='tools/test.py', description='Test a model')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='checkpoint to evaluate (default: the config\'s load_from)')
    parser.add_argument('--checkpoint', dest='checkpoint_option', default=None,
                        help='the same as the positional CHECKPOINT')
    parser.add_argument('--out', help='dump the metrics to this JSON/pickle file')
    add_common_args(parser)
    return parser


def check_config_file(config: str) -> None:
    """Raise :class:`UsageError` if ``config`` does not exist or does not parse (with its
    ``_base_`` files)."""
    if not osp.isfile(config):
        raise UsageError(f'config file not found: {config}')
    check_config_syntax(config)


PARSERS = {'train': train_parser, 'test': test_parser}


def check_early(prog: str, tool: str, argv: List[str]) -> None:
    """Parse ``argv`` with ``tool``'s parser (``--help`` and option mistakes end here, exit
    status 0 or 2) and check that the config exists and parses, with its ``_base_`` files;
    a mistake is one line on stderr, exit status 2 (as :func:`rils_mm.tools.cli.run_cli`)."""
    args = PARSERS[tool]().parse_args(argv)
    try:
        check_config_file(args.config)
    except UsageError as err:
        print(f'{prog}: error: {err}', file=sys.stderr)
        sys.exit(2)
