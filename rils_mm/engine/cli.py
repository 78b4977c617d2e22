"""Library side of ``tools/train.py`` and ``tools/test.py``.

The tools follow the OpenMMLab conventions (``CONFIG [--work-dir] [--resume] [--amp]
[--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]``) and run mmengine's Runner, for
any mmpretrain, mmdet or mmseg config. What they add: the config is checked and the Runner,
model, dataloaders and evaluators are built before anything runs, and a mistake found there
(missing file, unknown key, unknown type, bad value) is reported in one line that names it,
with exit status 2, instead of a traceback from inside the Runner (``--debug`` shows it).
"""
import argparse
import inspect
import os
import os.path as osp
import sys
from copy import deepcopy
from typing import Callable, List, Optional

import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import rils_mm  # noqa: F401  (compatibility fixes and registration before the Runner starts)

# Top-level keys the Runner (and the OpenMMLab tools) read; --cfg-options may set these even
# when the config does not, any other new top-level key is most likely a typo.
RUNNER_KEYS = set(inspect.signature(Runner.__init__).parameters) - {'self'} | {
    'runner_type', 'auto_scale_lr', 'custom_imports', 'default_scope', 'find_unused_parameters',
    'model_wrapper_cfg', 'launcher', 'work_dir', 'resume', 'load_from', 'randomness'}

BUILD_ERRORS = (FileNotFoundError, KeyError, TypeError, ValueError, ImportError,
                AttributeError, AssertionError, NotImplementedError)


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


def load_config(config: str, cfg_options: Optional[dict]) -> Config:
    """Load a config and merge overrides, rejecting unknown top-level override keys."""
    if not osp.isfile(config):
        raise UsageError(f'config file not found: {config}')
    cfg = Config.fromfile(config)
    if cfg_options:
        unknown = sorted({key.split('.')[0] for key in cfg_options} - set(cfg) - RUNNER_KEYS)
        if unknown:
            raise UsageError(f'unknown key(s) {", ".join(unknown)} in --cfg-options: not in '
                             f'{config} and not a Runner setting')
        cfg.merge_from_dict(cfg_options)
    return cfg


def check_train_config(cfg: Config) -> None:
    """Settings that are valid one by one but not together, checked before anything is built."""
    model = cfg.get('model') or {}
    reconstruction = model.get('loss_reconstruction') or {}
    batch_size = (cfg.get('train_dataloader') or {}).get('batch_size')
    if (reconstruction.get('filter_correct', True) and 'loss_reconstruction' in model
            and batch_size is not None and batch_size < 2):
        raise UsageError('train_dataloader.batch_size=1 with '
                         'model.loss_reconstruction.filter_correct=True: the correct-retrieval '
                         'filter needs at least 2 pairs per device')


def set_work_dir(cfg: Config, config: str, work_dir: Optional[str]) -> None:
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])


def build_runner(cfg: Config) -> Runner:
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def run_cli(main: Callable[[List[str]], None], argv: Optional[List[str]] = None,
            prog: str = 'rils_mm') -> None:
    """Run ``main(argv)``, turning configuration mistakes into a one-line error."""
    argv = sys.argv[1:] if argv is None else argv
    debug = '--debug' in argv or os.environ.get('RILS_MM_DEBUG') == '1'
    try:
        main(argv)
    except UsageError as err:
        if debug:
            raise
        print(f'{prog}: error: {err}', file=sys.stderr)
        sys.exit(2)


def as_usage_error(err: BaseException, stage: str) -> UsageError:
    """Wrap an exception raised while building from the config into a one-line error."""
    message = ' '.join(str(err).split()) or type(err).__name__
    if isinstance(err, KeyError) and message.startswith(("'", '"')):
        message = message[1:-1] if message[-1] == message[0] else message
    return UsageError(f'{stage}: {type(err).__name__}: {message}')


def prepare_dataloader_defaults(cfg: Config) -> None:
    """Dataloader defaults: pin memory with a GPU, persistent workers, and for mmpretrain
    configs its tools' ``default_collate`` (mmdet and mmseg rely on mmengine's
    ``pseudo_collate``)."""
    for field in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(field) is None:
            continue
        merged = ConfigDict(pin_memory=torch.cuda.is_available(), persistent_workers=True)
        if cfg.get('default_scope') == 'mmpretrain':
            merged.collate_fn = dict(type='default_collate')
        merged.update(deepcopy(cfg[field]))
        if merged.get('num_workers', 0) == 0:
            merged.persistent_workers = False
        cfg[field] = merged


def train_main(argv: List[str]) -> Runner:
    parser = argparse.ArgumentParser(prog='tools/train.py', description='Train a model')
    parser.add_argument('config', help='config file')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from CHECKPOINT, or with no value from the latest '
                        'checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the actual total batch size')
    parser.add_argument('--no-validate', action='store_true', help='skip validation')
    add_common_args(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))

    try:
        cfg = load_config(args.config, args.cfg_options)
        cfg.launcher = args.launcher
        set_work_dir(cfg, args.config, args.work_dir)
        if args.no_validate:
            cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
        if args.amp:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        if args.resume == 'auto':
            cfg.resume, cfg.load_from = True, None
        elif args.resume is not None:
            if not osp.isfile(args.resume):
                raise UsageError(f'--resume: checkpoint not found: {args.resume}')
            cfg.resume, cfg.load_from = True, args.resume
        if args.auto_scale_lr:
            cfg.setdefault('auto_scale_lr', ConfigDict(base_batch_size=256))
            cfg.auto_scale_lr.enable = True
        check_train_config(cfg)
        prepare_dataloader_defaults(cfg)
        runner = build_runner(cfg)
        # Build the lazily built parts now, so that config mistakes surface here.
        runner.train_loop  # noqa: B018
        if cfg.get('val_cfg'):
            runner.val_loop  # noqa: B018
    except UsageError:
        raise
    except BUILD_ERRORS as err:
        raise as_usage_error(err, args.config) from err
    runner.train()
    return runner


def test_main(argv: List[str]) -> dict:
    parser = argparse.ArgumentParser(prog='tools/test.py', description='Test a model')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='checkpoint to evaluate (default: the config\'s load_from)')
    parser.add_argument('--checkpoint', dest='checkpoint_option', default=None,
                        help='the same as the positional CHECKPOINT')
    parser.add_argument('--out', help='dump the metrics to this JSON/pickle file')
    add_common_args(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.checkpoint and args.checkpoint_option:
        raise UsageError('give the checkpoint once (positional or --checkpoint)')
    args.checkpoint = args.checkpoint or args.checkpoint_option

    try:
        cfg = load_config(args.config, args.cfg_options)
        cfg.launcher = args.launcher
        set_work_dir(cfg, args.config, args.work_dir)
        if args.checkpoint is not None:
            if not osp.isfile(args.checkpoint):
                raise UsageError(f'checkpoint not found: {args.checkpoint}')
            cfg.load_from = args.checkpoint
        prepare_dataloader_defaults(cfg)
        runner = build_runner(cfg)
        runner.test_loop  # noqa: B018
    except UsageError:
        raise
    except BUILD_ERRORS as err:
        raise as_usage_error(err, args.config) from err
    metrics = runner.test()
    if args.out:
        from mmengine.fileio import dump
        dump(metrics, args.out)
    return metrics
