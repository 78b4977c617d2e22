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
from rils_mm.engine.errors import RunStopped

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


def stop_dataloader_workers(loop) -> None:
    """Shut down the worker processes of ``loop.dataloader``: those of the loader's own
    iterator (persistent workers) and of ``IterBasedTrainLoop``'s iterator over it (also when
    :class:`_SkipBatches` wraps that), and drop both iterators."""
    loader = getattr(loop, 'dataloader', None)
    wrapper = getattr(loop, 'dataloader_iterator', None)
    wrapper = getattr(wrapper, 'iterator', wrapper)
    for owner in (loader, wrapper):
        iterator = getattr(owner, '_iterator', None)
        if iterator is not None and hasattr(iterator, '_shutdown_workers'):
            iterator._shutdown_workers()
            owner._iterator = None


def restart_dataloader_iterator(loop, num_skip: int) -> None:
    """Replace ``loop.dataloader_iterator`` by a fresh one that skips ``num_skip`` batches
    for free; shuts the old iterators' workers down first (persistent workers hold the old
    dataset state)."""
    stop_dataloader_workers(loop)
    loader = loop.dataloader
    # An endless stream outgrows its nominal len(); keep torch from warning on every batch.
    loader._IterableDataset_len_called = None
    loop.dataloader_iterator = _SkipBatches(_InfiniteDataloaderIterator(loader), num_skip)


def data_changes(saved: dict, current: dict) -> str:
    """The fields of two ``stream_signature()`` dicts that differ, as ``name: old -> new``
    ('' when none does). Fields only one of them has (a version that added one) are not
    compared."""
    def shards(signature):
        return (f'{signature.get("num_shards")} shards {signature.get("first_shard")} .. '
                f'{signature.get("last_shard")} (sha256 {signature.get("shards_sha256")})')
    changes = []
    if any(saved.get(k) != current.get(k) for k in ('num_shards', 'shards_sha256',
                                                     'first_shard', 'last_shard')):
        changes.append(f'shards: {shards(saved)} -> {shards(current)}')
    for key in sorted(set(saved) & set(current)):
        if key not in ('num_shards', 'shards_sha256', 'first_shard', 'last_shard') and \
                saved.get(key) != current.get(key):
            changes.append(f'{key}: {saved.get(key)!r} -> {current.get(key)!r}')
    return '; '.join(changes)


@HOOKS.register_module()
class DataResumeHook(Hook):
    """Record the shard stream's position in checkpoints and resume from it.

    Also calls ``dataset.set_epoch(epoch)`` before each epoch for datasets that have it
    (per-visit caption sampling of the map-style datasets).

    The saved position carries the dataset's ``stream_signature()`` (shard list, mixture
    weights, seed, shuffling). A resume whose data settings differ would continue a position
    in another stream (samples skipped or seen twice without notice), so it stops with one
    line naming what changed, unless ``on_data_change`` says otherwise.

    Args:
        on_data_change (str): When the resumed data differs from the checkpoint's: ``'error'``
            (default) stops; ``'keep'`` uses the saved positions anyway (the same shard files
            moved to another place or store); ``'restart'`` starts the new data's stream from
            its first samples (the model and optimizer state are resumed as usual).
    """

    priority = 'NORMAL'  # before CheckpointHook (VERY_LOW) in after_train_iter/epoch
    DATA_CHANGE_ACTIONS = ('error', 'keep', 'restart')

    def __init__(self, on_data_change: str = 'error') -> None:
        if on_data_change not in self.DATA_CHANGE_ACTIONS:
            raise ValueError(f'DataResumeHook on_data_change={on_data_change!r}: expected one '
                             f'of {self.DATA_CHANGE_ACTIONS}')
        self.on_data_change = on_data_change
        self.state: Optional[dict] = None
        self._signature: Optional[dict] = None
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
                if self._signature is not None:
                    self.state['data'] = self._signature
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
        if hasattr(dataset, 'stream_signature'):
            self._signature = dataset.stream_signature()
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
            raise RunStopped(f'DataResumeHook: the checkpoint holds the data position of '
                             f'{len(self._loaded)} rank(s) but this run has {world_size}; '
                             f'resume with the same number of processes')
        self.state = copy.deepcopy(self._loaded[rank])
        saved = self.state.get('data')  # None in checkpoints older than the signature
        changes = ''
        if saved is not None and self._signature is not None:
            changes = data_changes(saved, self._signature)
        if world_size > 1:
            # The ranks decide together: a rank that stopped alone would leave the others
            # waiting in their first collective.
            changes = next((c for c in all_gather_object(changes) if c), '')
        if changes:
            if self.on_data_change == 'error':
                raise RunStopped(
                    f'DataResumeHook: the checkpoint\'s data stream position belongs to other '
                    f'data ({changes}); resume with the data settings it was written with, or '
                    f"set DataResumeHook(on_data_change='keep') if only the shards' place "
                    f"changed, or 'restart' to read the new data from its start")
            if 'samples_per_epoch: ' in changes and not endless:
                raise RunStopped(
                    f'DataResumeHook: samples_per_epoch changed since the checkpoint '
                    f'({changes}); the epoch loop counts the epochs done, and the schedule, in '
                    f'batches of the old epoch length, so an epoch-based run resumes only with '
                    f'the samples_per_epoch it was written with')
            print_log(f'DataResumeHook: the data changed since the checkpoint ({changes}); '
                      + ('its stream positions are kept' if self.on_data_change == 'keep' else
                         'the new stream starts from its first samples'),
                      logger='current', level=30)
        elif saved is None and self._signature is not None:
            print_log('DataResumeHook: the checkpoint predates data signatures, so a change '
                      'of the data cannot be checked on this resume (later checkpoints carry '
                      'it)' + ("; as on_data_change='restart' asks, the stream starts from its "
                               'first samples' if self.on_data_change == 'restart' else ''),
                      logger='current', level=30)
        if self._signature is not None:
            self.state['data'] = self._signature
        if self.on_data_change == 'restart' and (changes or saved is None):
            # Every role at the start of the new stream; the consumed batches are still
            # skipped for free, so the schedule goes on where it stopped.
            self.state.update(num_workers=max(1, loop.dataloader.num_workers), next_role=0,
                              roles={})
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
