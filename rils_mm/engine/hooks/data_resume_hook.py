"""Exact and cheap mid-epoch resume of the streaming shard dataset.

mmengine's ``IterBasedTrainLoop`` resumes by drawing ``iter`` batches from a fresh dataloader
and throwing them away: exact for a deterministic stream, but every skipped image is read and
decoded. This hook makes it cheap. During training it reads, from each consumed batch's
``stream_state`` metainfo, where each dataloader-worker role of this rank stands (epoch and
raw position) and which role is due next; checkpoints store that list (one entry per rank).
On resume, in ``before_train`` (after the checkpoint is loaded, before the loop skips), it
passes the state to ``ImageTextShardDataset.set_resume_state``, restarts the dataloader
iterator (so workers, persistent or not, start from the saved positions, replaying tar headers
only) and turns the loop's skipping into no-ops.

Without the hook (or when the saved state is missing) resume is still exact, only slow, for
the endless stream of ``IterBasedTrainLoop``. With ``EpochBasedTrainLoop`` (the dataset's
``samples_per_epoch`` mode) the hook is required: it restores the position the checkpoint was
written at, at an epoch boundary or in the middle of an epoch.

Since ``Runner.save_checkpoint`` runs on rank 0 only, the ranks' states are gathered (a
collective, on every rank) just before a ``CheckpointHook`` saves: in ``after_train_iter`` for
iteration-based checkpoints, in ``after_train_epoch`` for epoch-based ones.
"""
import copy
from typing import Optional

from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.runner.loops import IterBasedTrainLoop, _InfiniteDataloaderIterator
from mmpretrain.registry import HOOKS

from rils_mm.datasets.image_text_shards import STREAM_STATE_KEY

CHECKPOINT_KEY = 'data_stream_states'


def checkpoint_due(runner) -> bool:
    """Whether a ``CheckpointHook`` saves in this iteration's ``after_train_iter``.

    Mirrors ``CheckpointHook.after_train_iter`` so all ranks agree without communicating.
    """
    for hook in runner.hooks:
        if isinstance(hook, CheckpointHook) and not hook.by_epoch:
            if hook.every_n_train_iters(runner, hook.interval, hook.save_begin) or (
                    hook.save_last and hook.is_last_train_iter(runner)):
                return True
    return False


def epoch_checkpoint_due(runner) -> bool:
    """Whether a ``CheckpointHook`` saves in this epoch's ``after_train_epoch``."""
    for hook in runner.hooks:
        if isinstance(hook, CheckpointHook) and hook.by_epoch:
            if hook.every_n_epochs(runner, hook.interval, hook.save_begin) or (
                    hook.save_last and hook.is_last_train_epoch(runner)):
                return True
    return False


class _SkipBatches:
    """Iterator that answers the first ``num_skip`` ``next`` calls with None."""

    def __init__(self, iterator, num_skip: int) -> None:
        self.iterator = iterator
        self.num_skip = num_skip

    def __iter__(self):
        return self

    def __next__(self):
        if self.num_skip > 0:
            self.num_skip -= 1
            return None
        return next(self.iterator)


def restart_dataloader_iterator(loop, num_skip: int) -> None:
    """Replace ``loop.dataloader_iterator`` by a fresh one that skips ``num_skip`` batches
    for free; shuts the old iterator's workers down first."""
    old = getattr(loop.dataloader_iterator, '_iterator', None)
    if hasattr(old, '_shutdown_workers'):
        old._shutdown_workers()
    loader = loop.dataloader
    if getattr(loader, '_iterator', None) is not None:
        loader._iterator = None  # persistent workers hold the old dataset state
    # An endless stream outgrows its nominal len(); keep torch from warning on every batch.
    loader._IterableDataset_len_called = None
    loop.dataloader_iterator = _SkipBatches(_InfiniteDataloaderIterator(loader), num_skip)


@HOOKS.register_module()
class DataResumeHook(Hook):
    """Record the shard stream's position in checkpoints and resume from it.

    Also calls ``dataset.set_epoch(epoch)`` before each epoch for datasets that have it
    (per-visit caption sampling of the map-style datasets).
    """

    priority = 'NORMAL'  # before CheckpointHook (VERY_LOW) in after_train_iter/epoch

    def __init__(self) -> None:
        self.state: Optional[dict] = None
        self._gathered: Optional[list] = None
        self._loaded: Optional[list] = None

    def before_train_epoch(self, runner) -> None:
        dataset = runner.train_loop.dataloader.dataset
        if hasattr(dataset, 'set_epoch'):
            dataset.set_epoch(runner.epoch)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        samples = (data_batch or {}).get('data_samples') or []
        stream_state = samples[-1].metainfo.get(STREAM_STATE_KEY) if samples else None
        if stream_state is not None:
            role, epoch, position, num_workers = stream_state[:4]
            # Streamed shards: where the shard streams and the shuffle buffer stand.
            cursor = stream_state[4] if len(stream_state) > 4 else None
            if self.state is None or self.state['num_workers'] != num_workers:
                self.state = dict(num_workers=num_workers, next_role=0, roles={})
            # A batch comes from one worker and holds its samples in stream order.
            self.state['roles'][int(role)] = (int(epoch), int(position)) + (
                (tuple(int(v) for v in cursor), ) if cursor is not None else ())
            self.state['next_role'] = (int(role) + 1) % num_workers
        if get_dist_info()[1] > 1 and checkpoint_due(runner):
            self._gathered = all_gather_object(self.state)

    def after_train_epoch(self, runner) -> None:
        if get_dist_info()[1] > 1 and epoch_checkpoint_due(runner):
            self._gathered = all_gather_object(self.state)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        states = self._gathered if get_dist_info()[1] > 1 else [self.state]
        if states and all(state is not None for state in states):
            checkpoint[CHECKPOINT_KEY] = copy.deepcopy(states)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded = checkpoint.get(CHECKPOINT_KEY)

    def before_train(self, runner) -> None:
        loop = runner.train_loop
        dataset = loop.dataloader.dataset
        if not hasattr(dataset, 'set_resume_state'):
            return
        endless = getattr(dataset, 'samples_per_epoch', None) is None
        if endless and not isinstance(loop, IterBasedTrainLoop):
            raise ValueError(f'{type(dataset).__name__} is an endless stream, so an epoch of '
                             f'{type(loop).__name__} would never end: set its '
                             f'samples_per_epoch and batch_size, or use IterBasedTrainLoop')
        if not endless and dataset.batch_size != loop.dataloader.batch_size:
            raise ValueError(f'{type(dataset).__name__}.batch_size={dataset.batch_size} must '
                             f'equal the dataloader batch_size={loop.dataloader.batch_size}')
        if loop.iter == 0:
            return
        if not self._loaded:
            # A checkpoint without a stream position (written without this hook, or by an
            # older version): the iteration loop still skips its consumed batches by reading
            # them (exact, slow); an epoch loop would read its stream again from the start.
            if not endless:
                print_log('DataResumeHook: the resumed checkpoint holds no data stream '
                          'position; the stream starts again from its first samples '
                          '(batches already trained on will be seen again)',
                          logger='current', level=30)
            return
        rank, world_size = get_dist_info()
        if len(self._loaded) != world_size:
            raise ValueError(f'DataResumeHook: the checkpoint holds the data position of '
                             f'{len(self._loaded)} rank(s) but this run has {world_size}; '
                             f'resume with the same number of processes')
        self.state = copy.deepcopy(self._loaded[rank])
        dataset.set_resume_state(copy.deepcopy(self.state))
        if isinstance(loop, IterBasedTrainLoop):
            restart_dataloader_iterator(loop, loop.iter)
            skipped = f'the {loop.iter} consumed batches are skipped without decoding'
        else:
            # The epoch loop iterates the dataloader afresh, from the state just set; in the
            # middle of an epoch it asks the dataset for the rest of that epoch only
            # (rils_mm.compat.epoch_resume, ImageTextShardDataset.skip_batches).
            skipped = 'continuing the nominal epoch where it stopped'
        where = {role: tuple(saved[:2]) for role, saved in self.state['roles'].items()}
        print_log(f'DataResumeHook: data stream resumes at {where} '
                  f'(role: (epoch, position)); {skipped}', logger='current')
