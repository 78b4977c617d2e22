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

A finished stage leaves ``chain_stage.json`` beside its checkpoints, recording its checkpoint,
its overrides and the previous stage's checkpoint (path, size, modification time). A rerun
skips the stage only if all of these are unchanged and no earlier stage was retrained; a stage
that was interrupted (checkpoints but no record) resumes from its newest valid checkpoint.
``overwrite`` retrains every stage from scratch. Under a distributed launcher every process
runs the chain; rank 0 finds and records each stage's checkpoint and hands its path to the
others.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

from mmengine.config import Config
from mmengine.dist import barrier, broadcast_object_list, get_rank
from mmengine.runner import find_latest_checkpoint

from ..compat import atomic_write_bytes
from .cli import UsageError, run_checkpoints, train_main

STAGE_RECORD = 'chain_stage.json'


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
    for stage in chain.stages:
        stage_dir = osp.join(work_dir, stage['name'])
        record_path = osp.join(stage_dir, STAGE_RECORD)
        options = list(cfg_options) + list(stage_options.get(stage['name'], ()))
        if checkpoints:
            options.append(f'{stage["init_key"]}={checkpoints[-1]}')
        record = dict(options=options,
                      previous=_file_identity(checkpoints[-1]) if checkpoints else None)
        done = read_json(record_path)
        if (not overwrite and not retrained and done is not None
                and osp.isfile(done.get('checkpoint', ''))
                and {k: done.get(k) for k in record} == record):
            print(f'chain: stage "{stage["name"]}" already done: {done["checkpoint"]}')
            checkpoints.append(done['checkpoint'])
            continue
        argv = [stage['config'], '--work-dir', stage_dir, *train_args]
        if not overwrite and done is None and osp.isdir(stage_dir) and \
                run_checkpoints(stage_dir):
            argv.append('--resume')  # interrupted: continue exactly where it stopped
        else:
            argv.append('--overwrite')
        if options:
            argv += ['--cfg-options', *options]
        print(f'chain: stage "{stage["name"]}": {" ".join(argv)}')
        train_main(argv)
        retrained = True
        barrier()  # rank 0 saves the checkpoints
        found = [None]
        if get_rank() == 0:
            checkpoint = find_latest_checkpoint(stage_dir)
            if checkpoint and osp.isfile(checkpoint):
                write_json(record_path, dict(record, checkpoint=checkpoint))
                found = [checkpoint]
        broadcast_object_list(found, src=0)
        if found[0] is None:
            raise UsageError(f'chain: stage "{stage["name"]}" finished without a checkpoint '
                             f'in {stage_dir}')
        checkpoints.append(found[0])
    return checkpoints


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
