"""Library side of ``tools/train.py`` and ``tools/test.py``.

The tools follow the OpenMMLab conventions (``CONFIG [--work-dir] [--resume] [--amp]
[--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]``) and run mmengine's Runner, for
any mmpretrain, mmdet or mmseg config. What they add: the config is checked and the Runner,
model, dataloaders and evaluators are built before anything runs, and a mistake found there
(missing file, unknown key, unknown type, bad value) is reported in one line that names it,
with exit status 2, instead of a traceback from inside the Runner (``--debug`` shows it).

Also one line, exit status 1: a checkpoint that cannot be loaded or saved, a run stopped by a
check, a data stream with nothing left to read. In detail:

- Work dir lock: a training run holds ``<work dir>/train.lock`` while it runs; a second run
  into the same work dir is refused with one line naming the holder's host, pid and start
  (:mod:`rils_mm.tools.work_dir_lock`, which also says when a lock left by a dead run is taken
  over). ``tools/test.py`` takes no lock: it writes no checkpoint.
- Strict loading: ``load_from`` (evaluation, fine-tuning) and ``--resume`` load every key of
  the checkpoint into the model and refuse a checkpoint whose keys are missing, unexpected or
  of another shape, listing them (:mod:`rils_mm.tools.checked_loading`). The opt-out for
  checkpoints meant to differ, such as a fine-tuning run whose classifier head is new, is in
  the config (or ``--cfg-options``):

  - ``load_from_ignore_keys = ['head.*']``: fnmatch patterns of keys allowed to be missing,
    unexpected or of another shape (those weights keep the model's initialisation);
  - ``load_from_strict = False``: load what fits and only log the rest (mmengine's default).

  ``--resume`` ignores both: the model and the optimizer's parameter groups (count and sizes)
  must be those of the checkpoint, checked before the first step, and a file of weights only
  (published by ``tools/model_converters/publish_model.py``, or converted) is refused: it has
  no training state to resume. Backbones that load
  pretrained weights through ``init_cfg`` (``Pretrained``/``CheckedPretrained`` with a
  ``prefix``, as in the detection and segmentation configs) are partial by design and checked
  by :func:`rils_mm.models.utils.load_checked` instead.
- Remote copies: ``--remote-dir URL`` (or a ``RemoteCheckpointHook`` in ``custom_hooks``)
  copies checkpoints and logs to an object store, checked before anything is built, and
  ``--resume`` downloads the remote last checkpoint when the work dir has none as new
  (:mod:`rils_mm.tools.remote_checkpoints`).
"""
import argparse
import errno
import glob
import inspect
import math
import os
import os.path as osp
import re
import sys
import traceback
import zipfile
from copy import deepcopy
from datetime import timedelta
from typing import Callable, List, Optional

import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import rils_mm  # noqa: F401  (compatibility fixes and registration before the Runner starts)
from rils_mm.compat import (URL_PREFIXES, CheckpointKeysError, CheckpointLoadError,
                            CheckpointSaveError, DamagedCheckpointError,
                            install_tool_conveniences)
from rils_mm.datasets import DataStreamError
from rils_mm.engine.errors import RunStopped
from rils_mm.engine.hooks.data_resume_hook import stop_dataloader_workers
from rils_mm.models.utils.checkpoint_loading import describe_torch_load_error
from rils_mm.tools.arguments import UsageError, check_config_file, test_parser, train_parser
from rils_mm.tools.checked_loading import LOAD_OPTION_KEYS, install_checked_loading
from rils_mm.tools.remote_checkpoints import fetch_resume_checkpoint, prepare_remote_dir
from rils_mm.tools.work_dir_lock import WorkDirLocked, hold_work_dir

# Top-level keys the Runner (and the OpenMMLab tools) read; --cfg-options may set these even
# when the config does not, any other new top-level key is most likely a typo.
RUNNER_KEYS = set(inspect.signature(Runner.__init__).parameters) - {'self'} | {
    'runner_type', 'auto_scale_lr', 'custom_imports', 'default_scope', 'find_unused_parameters',
    'model_wrapper_cfg', 'launcher', 'work_dir', 'resume', 'load_from', 'randomness',
    *LOAD_OPTION_KEYS}

BUILD_ERRORS = (FileNotFoundError, KeyError, TypeError, ValueError, ImportError,
                AttributeError, AssertionError, NotImplementedError)


# Hooks every training run gets unless its config lists them (see their docstrings).
DEFAULT_TRAIN_HOOKS = ('RandomStateHook', 'NonFiniteCheckHook')

# Write failures that mean "no room": a full disk or quota, a file size limit, a read-only
# file system. Not bugs: the user frees space (or points the output elsewhere) and reruns.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def load_config(config: str, cfg_options: Optional[dict]) -> Config:
    """Load a config and merge overrides, rejecting unknown top-level override keys."""
    check_config_file(config)
    try:
        cfg = Config.fromfile(config)
    except SyntaxError as err:  # in a file found otherwise (mmengine may name it)
        raise UsageError(f'syntax error in config {config} or a file it reads: '
                         f'{" ".join(str(err).split())}') from None
    if cfg_options:
        unknown = sorted({key.split('.')[0] for key in cfg_options} - set(cfg) - RUNNER_KEYS)
        if unknown:
            raise UsageError(f'unknown key(s) {", ".join(unknown)} in --cfg-options: not in '
                             f'{config} and not a Runner setting')
        cfg_options = expand_vis_backend_names(cfg_options)
        check_override_types(cfg, cfg_options)
        cfg.merge_from_dict(cfg_options)
    return cfg


def expand_vis_backend_names(cfg_options: dict) -> dict:
    """``visualizer.vis_backends=[LocalVisBackend,TensorboardVisBackend]`` (names: what
    ``DictAction`` can parse) as the list of ``dict(type=NAME)`` the Visualizer builds."""
    names = cfg_options.get('visualizer.vis_backends')
    names = [names] if isinstance(names, str) else names
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return dict(cfg_options, **{'visualizer.vis_backends': [dict(type=n) for n in names]})
    return cfg_options


def _lookup(cfg, dotted: str):
    """The config value at a dotted key (list indices allowed), or KeyError."""
    node = cfg
    for part in dotted.split('.'):
        if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(dotted)
    return node


def check_override_types(cfg: Config, cfg_options: dict) -> None:
    """Refuse ``--cfg-options`` values that cannot stand where they go.

    ``DictAction`` parses numbers, booleans, None, lists and tuples; anything else stays a
    string. A string where the config holds a number (``batch_size=abc``) or a dict
    (``model.backbone={...}``, which would replace the whole section by text) fails deep in
    the Runner with a message that names neither key nor value; here it is one line naming both.
    """
    plain = cfg.to_dict()
    for key, value in cfg_options.items():
        if not isinstance(value, str):
            continue
        try:
            current = _lookup(plain, key)
        except KeyError:
            continue
        if isinstance(current, dict):
            raise UsageError(f'--cfg-options {key}={value!r}: {key} is a section of the config '
                             f'(keys {", ".join(list(current)[:6])}); set its keys one by one, '
                             f'e.g. {key}.{next(iter(current), "type")}=...')
        if isinstance(current, (int, float)) and not isinstance(current, bool):
            raise UsageError(f'--cfg-options {key}={value!r}: expected a number (the config '
                             f'has {current!r})')


def check_train_config(cfg: Config) -> None:
    """Settings that are valid one by one but not together, checked before anything is built."""
    model = cfg.get('model') or {}
    head = model.get('head') or {}
    reconstruction = head.get('loss') or {}
    batch_size = (cfg.get('train_dataloader') or {}).get('batch_size')
    if (head.get('type') == 'LanguageReconstructionHead'
            and reconstruction.get('filter_correct', True)
            and batch_size is not None and batch_size < 2):
        raise UsageError('train_dataloader.batch_size=1 with '
                         'model.head.loss.filter_correct=True: the correct-retrieval '
                         'filter needs at least 2 pairs per device')
    strategy = str((cfg.get('strategy') or {}).get('type', ''))
    if 'FSDP' in strategy and cfg.get('launcher', 'none') == 'none':
        raise UsageError(f'strategy {strategy} shards the model over processes: start it with '
                         f'tools/dist_train.sh CONFIG GPUS (GPUS may be 1)')
    check_accumulation(cfg)


ACCUMULATION_WRAPPER = 'GradCacheDistributedDataParallel'


def check_accumulation(cfg: Config) -> None:
    """``model.accumulation=dict(micro_batches=K)`` (one step on K micro-batches with the whole
    batch's loss): the settings it cannot go with, and the model wrapper of a distributed run.

    ``train_dataloader.batch_size`` is the per-device batch of the whole step, K x B.
    """
    accumulation = (cfg.get('model') or {}).get('accumulation')
    micro_batches = accumulation.get('micro_batches') if isinstance(accumulation, dict) else None
    if not isinstance(micro_batches, int) or isinstance(micro_batches, bool) or micro_batches < 2:
        return  # K = 1, or a malformed value the model itself reports
    batch_size = (cfg.get('train_dataloader') or {}).get('batch_size')
    if isinstance(batch_size, int) and batch_size % micro_batches:
        raise UsageError(f'train_dataloader.batch_size={batch_size} is the per-device batch of '
                         f'one step (K x B micro-batches): it must be a multiple of '
                         f'model.accumulation.micro_batches={micro_batches}')
    optim_wrapper = cfg.get('optim_wrapper') or {}
    counts = optim_wrapper.get('accumulative_counts', 1)
    if counts != 1:
        raise UsageError(f'optim_wrapper.accumulative_counts={counts} with model.accumulation: '
                         f'the former averages the losses of separate small batches (another '
                         f'objective for a contrastive loss); use one of them')
    wrapper_type = str(optim_wrapper.get('type', 'OptimWrapper'))
    if 'optimizer' not in optim_wrapper or wrapper_type.split('.')[-1] not in (
            'OptimWrapper', 'AmpOptimWrapper'):
        raise UsageError(f'model.accumulation needs optim_wrapper of type OptimWrapper or '
                         f'AmpOptimWrapper with one optimizer, got {wrapper_type}')
    if cfg.get('strategy') or cfg.get('runner_type', 'Runner') != 'Runner':
        raise UsageError('model.accumulation runs with the Runner and DDP; it is not available '
                         'with strategy/runner_type (FSDP)')
    if cfg.get('launcher', 'none') == 'none':
        return
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(type=ACCUMULATION_WRAPPER, broadcast_buffers=False,
                                     find_unused_parameters=cfg.get('find_unused_parameters',
                                                                    False))
    elif str(wrapper.get('type', '')).split('.')[-1] != ACCUMULATION_WRAPPER:
        raise UsageError(f'model_wrapper_cfg.type={wrapper.get("type")!r} with '
                         f'model.accumulation: the accumulated step needs '
                         f'{ACCUMULATION_WRAPPER}')


def check_learning_rates(cfg: Config) -> None:
    """Refuse a non-numeric, non-finite or negative ``lr`` before anything is built."""
    optim_wrapper = cfg.get('optim_wrapper') or {}
    wrappers = ({'optim_wrapper': optim_wrapper} if 'optimizer' in optim_wrapper else
                {f'optim_wrapper.{k}': v for k, v in optim_wrapper.items()
                 if isinstance(v, dict) and 'optimizer' in v})
    for name, wrapper in wrappers.items():
        lr = (wrapper.get('optimizer') or {}).get('lr')
        if lr is None:
            continue
        try:
            ok = math.isfinite(float(lr)) and float(lr) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UsageError(f'{name}.optimizer.lr={lr!r} is not a finite, non-negative number')


def set_work_dir(cfg: Config, config: str, work_dir: Optional[str]) -> None:
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])


def check_writable(folder: str) -> None:
    """Create ``folder`` if needed and make sure files can be written there."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = osp.join(folder, f'.write-test-{os.getpid()}')
        with open(probe, 'w'):
            pass
        os.remove(probe)
    except OSError as err:
        raise UsageError(f'work dir {folder} is not writable: {err.strerror or err}') from None


def run_checkpoints(work_dir: str) -> List[str]:
    """The checkpoints a Runner's ``CheckpointHook`` wrote into ``work_dir``, newest first.

    ``epoch_N.pth``/``iter_N.pth`` and the file ``last_checkpoint`` names, by modification
    time: a run killed after writing a checkpoint but before updating ``last_checkpoint``
    still resumes from the newest one. Files left by an interrupted atomic save
    (``*.partial-<pid>``) are not checkpoints.
    """
    found = {osp.abspath(p) for p in glob.glob(osp.join(work_dir, '*.pth'))
             if re.fullmatch(r'(epoch|iter)_\d+\.pth', osp.basename(p))}
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as file:
            last = file.read().strip()
        if osp.isfile(last):
            found.add(osp.abspath(last))
    return sorted(found, key=osp.getmtime, reverse=True)


def check_checkpoint_file(path: str) -> None:
    """Raise :class:`DamagedCheckpointError` if ``path`` is not a complete checkpoint.

    PyTorch checkpoints are zip archives with a CRC per record: reading them back finds a
    truncated or corrupted file without unpickling anything. (Files in torch's legacy
    non-zip format are left to the loader.)
    """
    if osp.getsize(path) == 0:
        raise DamagedCheckpointError(f'checkpoint {path} is empty (0 bytes)')
    with open(path, 'rb') as file:
        if file.read(4) != b'PK\x03\x04':
            return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise DamagedCheckpointError(f'checkpoint {path} is damaged: record {bad} fails '
                                         f'its checksum')
    except zipfile.BadZipFile as err:
        raise DamagedCheckpointError(f'checkpoint {path} is damaged or not a PyTorch '
                                     f'checkpoint (truncated?): {err}') from None


def choose_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The newest undamaged checkpoint in ``work_dir`` (warning about damaged newer ones)."""
    from mmengine.logging import print_log
    for path in run_checkpoints(work_dir):
        try:
            check_checkpoint_file(path)
            return path
        except DamagedCheckpointError as err:
            print_log(f'--resume: skipping {err}; trying the previous checkpoint',
                      logger='current', level=30)
    return None


def configure_resume(cfg: Config, resume: Optional[str], overwrite: bool) -> None:
    """Set ``cfg.resume``/``cfg.load_from`` from ``--resume``, refusing to clobber a run.

    Args:
        resume: None (new run), ``'auto'`` (the newest good checkpoint of the work dir, or a
            new run with a warning when there is none) or a checkpoint path.
        overwrite: Allow a new run into a work dir that holds another run's checkpoints.
    """
    from mmengine.logging import print_log
    if resume is None:
        existing = run_checkpoints(cfg.work_dir)
        if existing and not overwrite:
            names = ', '.join(osp.basename(p) for p in existing[:3])
            raise UsageError(f'work dir {cfg.work_dir} holds the checkpoints of an earlier run '
                             f'({names}{", ..." if len(existing) > 3 else ""}): give --resume '
                             f'to continue it, another --work-dir, or --overwrite to replace '
                             f'them')
        return
    if resume == 'auto':
        chosen = choose_resume_checkpoint(cfg.work_dir)
        chosen = fetch_resume_checkpoint(cfg, chosen, check_checkpoint_file) or chosen
        if chosen is None:
            print_log(f'--resume: no checkpoint to resume in {cfg.work_dir}; starting a new '
                      f'run', logger='current', level=30)
            return
        cfg.resume, cfg.load_from = True, chosen
        return
    if not osp.isfile(resume):
        raise UsageError(f'--resume: checkpoint not found: {resume}')
    check_checkpoint_file(resume)
    cfg.resume, cfg.load_from = True, resume


def add_default_train_hooks(cfg: Config, skip_nonfinite: bool) -> None:
    """Add :data:`DEFAULT_TRAIN_HOOKS` to ``custom_hooks`` unless the config has them."""
    hooks = list(cfg.get('custom_hooks') or [])
    present = {hook.get('type') for hook in hooks if isinstance(hook, dict)}
    for name in DEFAULT_TRAIN_HOOKS:
        if name not in present and f'mmpretrain.{name}' not in present:
            # Scoped: the hooks live in mmpretrain's registry, and mmdet/mmseg configs build
            # hooks from their own.
            hook = dict(type=f'mmpretrain.{name}')
            if name == 'NonFiniteCheckHook' and skip_nonfinite:
                hook['action'] = 'skip'
            hooks.append(hook)
    cfg.custom_hooks = hooks


def check_load_from(cfg: Config) -> None:
    load_from = cfg.get('load_from')
    if load_from and not str(load_from).startswith(URL_PREFIXES) and not osp.isfile(load_from):
        raise UsageError(f'load_from: checkpoint not found: {load_from}')


def _checkpoint_files(node) -> List[str]:
    """The ``pretrained``/``checkpoint`` file names in a model config."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ('pretrained', 'checkpoint') and isinstance(value, str):
                found.append(value)
            else:
                found += _checkpoint_files(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            found += _checkpoint_files(value)
    return found


def build_runner(cfg: Config, config: str = 'the config') -> Runner:
    """Build the Runner (and with it the model) of ``cfg``, loading ``load_from`` and
    ``--resume`` checkpoints strictly (:mod:`rils_mm.tools.checked_loading`).

    A model that loads weights itself while it is built (``OpenCLIPModel``'s ``pretrained``,
    which open_clip loads strictly) and finds them not fitting raises torch's multi-line load
    error; it becomes a one-line :class:`CheckpointKeysError` naming the file.
    """
    try:
        runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    except RuntimeError as err:
        summary = describe_torch_load_error(err)
        if summary is None:
            raise
        files = _checkpoint_files(cfg.get('model'))
        source = files[0] if len(files) == 1 else 'a checkpoint named in the model config'
        raise CheckpointKeysError(f'{source} does not fit the model of {config}: '
                                  f'{summary}') from None
    install_checked_loading(runner, config, bool(cfg.get('load_from_strict', True)),
                            cfg.get('load_from_ignore_keys') or ())
    return runner


def one_line_message(err: BaseException) -> str:
    """``str(err)`` on one line; for an error a DataLoader worker raised, the worker's own
    message without the traceback torch adds."""
    text = str(err)
    if 'Original Traceback' in text:
        marker = f'{type(err).__name__}: '
        text = text.rsplit(marker, 1)[-1] if marker in text else text.splitlines()[-1]
    return ' '.join(text.split())


def storage_full_message(error: BaseException, where: Optional[str] = None) -> Optional[str]:
    """``writing FILE: No space left on device`` for a write that found no room (see
    :data:`STORAGE_ERRNOS`); None for any other error.

    Args:
        error: The exception.
        where (str, optional): What to name when the error names no file (a folder).
    """
    if not isinstance(error, OSError) or error.errno not in STORAGE_ERRNOS:
        return None
    reason = error.strerror or os.strerror(error.errno)
    target = error.filename or (f'in {where}' if where else None)
    # Without a file the error may come from anywhere (a full /dev/shm, say): its traceback
    # says more than a line would.
    return f'writing {target}: {reason}' if target else None


def run_cli(main: Callable[[List[str]], None], argv: Optional[List[str]] = None,
            prog: str = 'rils_mm', rerun_hint: str = 'free some space and run it again') -> None:
    """Run ``main(argv)``, turning configuration mistakes into a one-line error.

    Exit status: 0 done, 2 a mistake in the command line or config, 1 a run stopped by a check,
    a refused checkpoint or a full disk (one line each), or an unexpected error (its
    traceback). A write that finds the disk full names the file and ends with ``rerun_hint``
    (how this tool continues): checkpoints and records are written atomically, so what was
    written before is intact. A distributed run leaves through :func:`leave_distributed_run`.

    The tool's console and config formatting get rils_mm's conveniences first (one line for the
    per-parameter reports; :func:`rils_mm.compat.install_tool_conveniences`).
    """
    install_tool_conveniences()
    argv = sys.argv[1:] if argv is None else argv
    debug = '--debug' in argv or os.environ.get('RILS_MM_DEBUG') == '1'
    try:
        status = _run_reporting_errors(main, argv, prog, debug, rerun_hint)
    except BaseException as err:
        if not _process_group_open():
            raise
        if isinstance(err, SystemExit):
            status = err.code if isinstance(err.code, int) else int(err.code is not None)
            if isinstance(err.code, str):  # what the interpreter would have printed
                print(err.code, file=sys.stderr)
        else:
            traceback.print_exc()
            status = 1
        leave_distributed_run(status)
    if _process_group_open():
        leave_distributed_run(status)
    if status:
        sys.exit(status)


def _run_reporting_errors(main: Callable[[List[str]], None], argv: List[str], prog: str,
                          debug: bool, rerun_hint: str) -> int:
    """``main(argv)``; the exit status, with expected errors printed as one line."""
    try:
        main(argv)
        return 0
    except UsageError as err:
        if debug:
            raise
        print(f'{prog}: error: {err}', file=sys.stderr)
        return 2
    except (RunStopped, CheckpointLoadError, DataStreamError) as err:
        # A check stopped the run, a checkpoint was refused, the data ran dry: the message
        # says it all, and the files already written are untouched.
        if debug:
            raise
        print(f'{prog}: error: {one_line_message(err)}', file=sys.stderr)
        return 1
    except CheckpointSaveError as err:  # the message says what is intact, the tool how to go on
        if debug:
            raise
        print(f'{prog}: error: {one_line_message(err)}: {rerun_hint}', file=sys.stderr)
        return 1
    except OSError as err:
        message = storage_full_message(err)
        if debug or message is None:
            raise
        print(f'{prog}: error: {message}; the files written before it are intact: '
              f'{rerun_hint}', file=sys.stderr)
        return 1


def _process_group_open() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def leave_distributed_run(status: int) -> None:
    """End a process of a distributed run with ``status``, without interpreter finalization.

    Why: gloo's worker threads release the tensors of finished collectives after the caller
    has been told they are done; a release that comes while Python finalizes needs the GIL,
    and a thread taking the GIL then is ended by ``pthread_exit``, whose unwinding through a
    ``noexcept`` destructor calls ``std::terminate`` (SIGABRT, "terminate called without an
    active exception"; pytorch/pytorch#190489). One 2-process run in four or five ended so
    after writing its last checkpoint, and torchrun then killed the other rank and reported
    the job failed. ``destroy_process_group`` alone does not stop those threads: the DDP
    wrapper keeps the group alive until finalization.

    So: a successful rank waits at a barrier (at most 5 minutes) for the others (rank 0 may
    still be writing the last checkpoint; after an error no barrier, another rank may never
    reach it), the group
    is destroyed, the ``atexit`` handlers run (logging, temporary files, experiment
    trackers), the standard streams are flushed, and the process exits with ``os._exit``.
    """
    import atexit

    import torch.distributed as dist
    if status == 0:
        try:
            # Bounded: NCCL would wait for its watchdog (10-30 min) if another rank left.
            dist.barrier(async_op=True).wait(timeout=timedelta(minutes=5))
        except RuntimeError:  # another rank left with an error: nothing left to wait for
            pass
    dist.destroy_process_group()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


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
    args = train_parser().parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))

    try:
        cfg = load_config(args.config, args.cfg_options)
        cfg.launcher = args.launcher
        set_work_dir(cfg, args.config, args.work_dir)
        check_writable(cfg.work_dir)
        prepare_remote_dir(cfg, args.remote_dir, args.resume, args.overwrite)
    except UsageError:
        raise
    except BUILD_ERRORS as err:
        raise as_usage_error(err, args.config) from err
    try:
        # Held from before the work dir's checkpoints are looked at until the run ends.
        with hold_work_dir(cfg.work_dir):
            runner = build_train_runner(cfg, args)
            try:
                runner.train()
            finally:
                release_dataloader_workers(runner)
    except WorkDirLocked as err:
        raise UsageError(str(err)) from None
    return runner


def release_dataloader_workers(runner: Runner) -> None:
    """Stop the worker processes of the runner's dataloaders once its loops are done.

    With ``persistent_workers`` a DataLoader keeps its workers (each holding a copy of the
    dataset, about 0.5 GB for the demo) until the loader is garbage-collected, and the runner
    keeps the loader. Callers that train several runs in one process (chains, ``compare.py``)
    would otherwise hold the workers of every earlier run.
    """
    for loop in (runner._train_loop, runner._val_loop, runner._test_loop):
        stop_dataloader_workers(loop)


def build_train_runner(cfg: Config, args: argparse.Namespace) -> Runner:
    """The training Runner of ``cfg`` and the parsed ``tools/train.py`` arguments, with its
    loops built, so that config mistakes surface before anything runs."""
    try:
        if args.no_validate:
            cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
        if args.amp:
            if not torch.cuda.is_available():
                raise UsageError('--amp needs a CUDA GPU: mmengine\'s AmpOptimWrapper does not '
                                 'train in mixed precision on the CPU')
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        configure_resume(cfg, args.resume, args.overwrite)
        check_load_from(cfg)
        check_learning_rates(cfg)
        add_default_train_hooks(cfg, args.skip_nonfinite)
        if args.auto_scale_lr:
            cfg.setdefault('auto_scale_lr', ConfigDict(base_batch_size=256))
            cfg.auto_scale_lr.enable = True
        check_train_config(cfg)
        prepare_dataloader_defaults(cfg)
        runner = build_runner(cfg, args.config)
        # Build the lazily built parts now, so that config mistakes surface here.
        runner.train_loop  # noqa: B018
        if cfg.get('val_cfg'):
            build_val_loop(runner, args.config)
    except UsageError:
        raise
    except BUILD_ERRORS as err:
        raise as_usage_error(err, args.config) from err
    return runner


def build_val_loop(runner: Runner, config: str) -> None:
    """Build the validation loop now, so that missing validation data (an ImageNet val folder
    not at the configured place) stops the run before its first iteration, saying what to set
    and that ``--no-validate`` trains without it."""
    try:
        runner.val_loop  # noqa: B018
    except FileNotFoundError as err:
        detail = ' '.join(str(err).split())
        raise UsageError(
            f'{config}: validation data not found ({detail}): point val_dataloader.dataset '
            f'at it (e.g. --cfg-options val_dataloader.dataset.data_root=PATH), or train '
            f'without validation with --no-validate') from None


def test_main(argv: List[str]) -> dict:
    args = test_parser().parse_args(argv)
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
            check_checkpoint_file(args.checkpoint)
            cfg.load_from = args.checkpoint
        check_load_from(cfg)
        prepare_dataloader_defaults(cfg)
        runner = build_runner(cfg, args.config)
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
