"""Save and restore every random generator with the checkpoint, so that resume is exact.

mmengine's Runner seeds the generators once at start and does not store their states: a resumed
run draws its masks, drop-path and dropout from the seed again, not from where the interrupted
run stood. This hook stores, for every rank, the states of ``torch`` (CPU and each CUDA
device), ``numpy`` and ``random`` in the checkpoint and puts them back when the checkpoint is
resumed.

Two more sources of drift are removed. A DataLoader draws its workers' base seed from the
global torch generator each time an iterator is created, and a resumed run creates one where
the interrupted run did not: the train and validation dataloaders get generators of their own,
so iterator creation never touches the global stream (workers are seeded by mmengine's
``worker_init_fn`` anyway, and our datasets seed augmentation per sample). And validation,
which runs after the checkpoint of an epoch is written, gets the training's states back when
it ends, so whether it ran or not does not change the training's random stream.
"""
import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmpretrain.registry import HOOKS

from .data_resume_hook import checkpoint_due, epoch_checkpoint_due

CHECKPOINT_KEY = 'random_states'


def get_random_states() -> dict:
    """The current states of this process's torch, CUDA, numpy and Python generators."""
    states = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(),
                  python=random.getstate())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict) -> None:
    """Restore states returned by :func:`get_random_states` (possibly after a save/load)."""
    torch.set_rng_state(states['torch'])
    np.random.set_state(tuple(states['numpy']))
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Store every rank's random generator states in checkpoints; restore them on resume.

    ``tools/train.py`` adds this hook to every run (unless the config lists it already).
    Resuming with a different number of processes keeps the weights but cannot be exact: the
    hook then says so and leaves the generators as seeded.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._before_val: Optional[dict] = None
        self._gathered: Optional[list] = None

    def before_train(self, runner) -> None:
        for loop in (runner.train_loop, getattr(runner, '_val_loop', None)):
            loader = getattr(loop, 'dataloader', None)
            if isinstance(loader, torch.utils.data.DataLoader) and loader.generator is None:
                loader.generator = torch.Generator()

    def before_val(self, runner) -> None:
        self._before_val = get_random_states()

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            set_random_states(self._before_val)
            self._before_val = None

    # Runner.save_checkpoint runs on rank 0 only, so the ranks' states are gathered (a
    # collective, on every rank) just before a CheckpointHook saves.
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if get_dist_info()[1] > 1 and checkpoint_due(runner):
            self._gathered = all_gather_object(get_random_states())

    def after_train_epoch(self, runner) -> None:
        if get_dist_info()[1] > 1 and epoch_checkpoint_due(runner):
            self._gathered = all_gather_object(get_random_states())

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if get_dist_info()[1] == 1:
            checkpoint[CHECKPOINT_KEY] = [get_random_states()]
        elif self._gathered is not None:
            checkpoint[CHECKPOINT_KEY] = self._gathered
            self._gathered = None
        # else: a save outside the CheckpointHook schedule (e.g. a best checkpoint after
        # validation); without every rank's state it stores none.

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY)
        if not saved or not getattr(runner, '_resume', False):
            return  # a checkpoint from before this hook, or load_from (weights, not a resume)
        rank, world_size = get_dist_info()
        if len(saved) != world_size:
            print_log(f'RandomStateHook: the checkpoint holds the random states of {len(saved)} '
                      f'process(es), this run has {world_size}: the resumed run continues '
                      f'from the seed, not exactly where the checkpoint stopped',
                      logger='current', level=30)
            return
        set_random_states(saved[rank])
