"""Run a chain of training stages, each starting from the previous stage's checkpoint.

A chain config names its stages in order::

    stages = [
        dict(name='mim', config='../mae/demo_cpu.py'),
        dict(name='clip', config='./clip_from_mim_demo.py',
             init_key='model.backbone.init_cfg.checkpoint'),
    ]
    work_dir = 'work_dirs/mim_to_clip_demo'

Stage ``i`` trains ``config`` (relative to the chain file) into ``<work_dir>/<name>``; for
every stage after the first, ``init_key`` of its config is set to the previous stage's last
checkpoint (the key should belong to a ``CheckedPretrained`` init, so a missing file or an
unmatched encoder key fails, naming them).

A stage records what its training depends on: a digest of its config as mmengine resolves it
(``_base_`` files included), its overrides and the previous stage's checkpoint (path, size,
modification time), in ``chain_stage_started.json`` when it starts (with the checkpoints an
earlier run left in its folder) and in ``chain_stage.json``, with its checkpoint, when it
ends. A rerun skips a finished stage only if all of these are unchanged, no earlier stage was
retrained and no later attempt replaced its checkpoint; it resumes an interrupted stage, from
the newest valid checkpoint that attempt saved, only if they are unchanged. Otherwise it says
what changed and trains the stage from the start; the earlier run's checkpoints are replaced
as the new run saves. ``overwrite`` retrains every stage from scratch. Under a distributed
launcher every process runs the chain; rank 0 writes the records, finds each stage's
checkpoint and hands its path to the others.
"""
import hashlib
import json
import os
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence

from mmengine.config import Config
from mmengine.dist import barrier, broadcast_object_list, get_rank
from mmengine.runner import find_latest_checkpoint

from ..compat import DamagedCheckpointError, atomic_write_bytes
from .cli import UsageError, check_checkpoint_file, run_checkpoints, train_main

STAGE_RECORD = 'chain_stage.json'  # a finished stage
STARTED_RECORD = 'chain_stage_started.json'  # the attempt in progress


def load_chain(path: str) -> Config:
    """Read and check a chain config; stage configs are resolved relative to it."""
    if not osp.isfile(path):
        raise UsageError(f'{path}: no such chain config')
    chain = Config.fromfile(path)
    stages = chain.get('stages')
    if not stages or not isinstance(stages, (list, tuple)):
        raise UsageError(f'{path}: a chain config needs a non-empty list `stages`')
    names = set()
    for i, stage in enumerate(stages):
        for key in ('name', 'config') + (('init_key', ) if i else ()):
            if not stage.get(key):
                raise UsageError(f'{path}: stages[{i}] needs `{key}`')
        if stage['name'] in names:
            raise UsageError(f'{path}: stage name "{stage["name"]}" appears twice')
        names.add(stage['name'])
        stage['config'] = osp.normpath(osp.join(osp.dirname(osp.abspath(path)),
                                                stage['config']))
        if not osp.isfile(stage['config']):
            raise UsageError(f'{path}: stages[{i}].config {stage["config"]} does not exist')
    return chain


def run_chain(path: str,
              work_dir: Optional[str] = None,
              cfg_options: Sequence[str] = (),
              stage_options: Optional[Dict[str, Sequence[str]]] = None,
              train_args: Sequence[str] = (),
              overwrite: bool = False) -> List[str]:
    """Train every stage of a chain in order.

    Args:
        path (str): The chain config.
        work_dir (str, optional): Overrides the chain's ``work_dir``.
        cfg_options (Sequence[str]): ``key=value`` overrides for every stage.
        stage_options (dict, optional): Stage name -> ``key=value`` overrides for that stage.
        train_args (Sequence[str]): Further ``tools/train.py`` arguments (e.g. ``--launcher``).
        overwrite (bool): Retrain stages that a previous run finished.

    Returns:
        list[str]: The last checkpoint of every stage.
    """
    chain = load_chain(path)
    work_dir = work_dir or chain.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(path))[0])
    stage_options = dict(stage_options or {})
    unknown = set(stage_options) - {s['name'] for s in chain.stages}
    if unknown:
        raise UsageError(f'{path}: stage options for unknown stages {sorted(unknown)}')
    checkpoints: List[str] = []
    retrained = False
    for index, stage in enumerate(chain.stages):
        stage_dir = osp.join(work_dir, stage['name'])
        record_path = osp.join(stage_dir, STAGE_RECORD)
        started_path = osp.join(stage_dir, STARTED_RECORD)
        options = list(cfg_options) + list(stage_options.get(stage['name'], ()))
        if checkpoints:
            options.append(f'{stage["init_key"]}={checkpoints[-1]}')
        record = dict(config_sha256=config_digest(stage['config']), options=options,
                      previous=_file_identity(checkpoints[-1]) if checkpoints else None)
        done, started = read_json(record_path), read_json(started_path)
        if done is not None and done.get('config_sha256') is None:
            print(f'chain: stage "{stage["name"]}": its record predates config tracking, so '
                  f'a change of {stage["config"]} cannot be noticed (--overwrite retrains)')
            done = dict(done, config_sha256=record['config_sha256'])
        if not overwrite and not retrained and _reusable(done, started, record):
            print(f'chain: stage "{stage["name"]}" already done: {done["checkpoint"]}')
            checkpoints.append(done['checkpoint'])
            continue
        argv = [stage['config'], '--work-dir', stage_dir, *train_args]
        resume = None if overwrite else _resume_point(stage_dir, done, started, record)
        if resume is not None:
            argv += ['--resume'] + ([resume] if resume else [])
        else:
            if not overwrite:
                _say_why_it_starts_over(stage['name'], stage_dir, started or done, record,
                                        stage['config'],
                                        chain.stages[index - 1]['name'] if index else '')
            argv.append('--overwrite')
        if options:
            argv += ['--cfg-options', *options]
        print(f'chain: stage "{stage["name"]}": {" ".join(argv)}')
        barrier()  # every process has read the records before rank 0 writes them
        if get_rank() == 0 and (resume is None or started is None):
            # Checkpoints already here when a stage starts from scratch are an earlier run's:
            # never resumed from, and not touched if it is that run that is reused later.
            earlier = [_file_identity(path) for path in run_checkpoints(stage_dir)] \
                if resume is None and osp.isdir(stage_dir) else []
            write_json(started_path, dict(record, earlier_checkpoints=earlier))
        train_main(argv)
        retrained = True
        barrier()  # rank 0 saves the checkpoints
        found = [None]
        if get_rank() == 0:
            checkpoint = find_latest_checkpoint(stage_dir)
            if checkpoint and osp.isfile(checkpoint):
                write_json(record_path, dict(record, checkpoint=checkpoint))
                os.remove(started_path)
                found = [checkpoint]
        broadcast_object_list(found, src=0)
        if found[0] is None:
            raise UsageError(f'chain: stage "{stage["name"]}" finished without a checkpoint '
                             f'in {stage_dir}')
        checkpoints.append(found[0])
    return checkpoints


def _plain(value) -> object:
    """A JSON form of a config value JSON has none for: a set sorted (its iteration order
    changes with PYTHONHASHSEED between processes), anything else as its repr."""
    if isinstance(value, (set, frozenset)):
        return sorted(map(repr, value))
    return repr(value)


def config_digest(path: str) -> str:
    """SHA-256 of a config as mmengine resolves it (``_base_`` files and variables included;
    comments and layout do not count)."""
    text = json.dumps(Config.fromfile(path).to_dict(), sort_keys=True, default=_plain)
    # Objects without a plain form print their address, which differs between processes.
    text = re.sub(r' at 0x[0-9a-fA-F]+', '', text)
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


def _same_settings(recorded: Optional[dict], record: dict) -> bool:
    return recorded is not None and all(recorded.get(k) == v for k, v in record.items())


def _reusable(done: Optional[dict], started: Optional[dict], record: dict) -> bool:
    """Whether a finished run of the stage stands: same settings, its checkpoint still there
    and, if another attempt started since, not replaced by it."""
    if not _same_settings(done, record) or not osp.isfile(done.get('checkpoint') or ''):
        return False
    return started is None or _file_identity(done['checkpoint']) in started[
        'earlier_checkpoints']


def _resume_point(stage_dir: str, done: Optional[dict], started: Optional[dict],
                  record: dict) -> Optional[str]:
    """How to continue an interrupted stage: ``''`` (``--resume``: the newest valid
    checkpoint), a checkpoint path, or None (train from the start)."""
    if not osp.isdir(stage_dir) or not run_checkpoints(stage_dir):
        return None
    if started is None:
        # No attempt recorded: checkpoints without any record are an interrupted run of a
        # chain that wrote records only at the end; beside a finished record, another run's.
        return '' if done is None else None
    if not _same_settings(started, record):
        return None
    for path in run_checkpoints(stage_dir):  # newest first
        if _file_identity(path) in started['earlier_checkpoints']:
            return None  # this attempt saved nothing valid; the rest is an earlier run's
        try:
            check_checkpoint_file(path)
            return path
        except DamagedCheckpointError as error:
            print(f'chain: skipping {error}')
    return None


# What a changed entry of a stage record means, for the rerun's message.
_CHANGE_REASONS = dict(config_sha256='{config} changed', options='other --cfg-options',
                       previous='stage "{previous}" was trained again')


def _say_why_it_starts_over(name: str, stage_dir: str, recorded: Optional[dict], record: dict,
                            config: str, previous: str) -> None:
    """One line when a stage with checkpoints of other settings trains from the start."""
    if recorded is None or not osp.isdir(stage_dir) or not run_checkpoints(stage_dir):
        return
    reasons = [_CHANGE_REASONS[key].format(config=config, previous=previous)
               for key in record if recorded.get(key) != record[key]]
    if reasons:
        state = 'trained' if 'checkpoint' in recorded else 'interrupted'
        print(f'chain: stage "{name}" was {state} under other settings ({"; ".join(reasons)}): '
              f'training it from the start')


def _file_identity(path: str) -> dict:
    """Path, size and modification time: a retrained stage writes a new file."""
    stat = os.stat(path)
    return dict(path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def read_json(path: str) -> Optional[dict]:
    """A JSON record, or None if it is missing or damaged (so not known to be finished)."""
    if not osp.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path: str, record: dict) -> None:
    """Write a JSON record atomically: a kill leaves the old record or the new one."""
    atomic_write_bytes(json.dumps(record, indent=1).encode(), path)
