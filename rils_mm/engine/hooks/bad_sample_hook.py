"""Count skipped and converted samples, log them, and stop when too much data is bad.

The datasets attach, to every sample they yield, the reasons of the bad samples they skipped
just before it (``skipped_before``) and the image's original PIL mode (``img_mode``), so the
counts reach the trainer inside the batches, from any number of (persistent) dataloader
workers, and only for batches that were really consumed. Each rank adds up its batches; every
``interval`` iterations (and before each checkpoint) the ranks' counts are summed with an
all-gather, logged, and checked against ``max_bad_fraction`` -- identically on all ranks, so
they stop together (with :class:`RunStopped`).
"""
from collections import Counter
from typing import Dict

from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS

from rils_mm.datasets.bad_samples import (BAD_SHARDS_KEY, SHARD_REASONS,
                                          UNREADABLE_SHARD_SAMPLES, counts_from_batch)
from rils_mm.engine.errors import RunStopped
from .data_resume_hook import checkpoint_due, epoch_checkpoint_due

CHECKPOINT_KEY = 'bad_sample_counts'
SHARDS_CHECKPOINT_KEY = 'bad_sample_shards'


def bad_sample_summary(counts: Dict[str, int]) -> dict:
    """Split raw counts into good, bad (per reason), converted (per mode) and shard errors.

    ``bad`` includes the estimated samples of unreadable shards (``unreadable_shard_samples``,
    also given as ``shard_samples``); ``shards`` counts the unreadable shards themselves.
    """
    reasons = {k: v for k, v in counts.items()
               if k != 'good' and not k.startswith('converted/') and k not in SHARD_REASONS}
    bad = sum(reasons.values())
    seen = counts.get('good', 0) + bad
    return dict(seen=seen, bad=bad, fraction=bad / seen if seen else 0.0,
                reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
                converted={k.split('/', 1)[1]: v for k, v in counts.items()
                           if k.startswith('converted/')},
                shards={k: v for k, v in counts.items() if k in SHARD_REASONS},
                shard_samples=counts.get(UNREADABLE_SHARD_SAMPLES, 0))


@HOOKS.register_module()
class BadSampleHook(Hook):
    """Log bad-sample counts and stop training when their fraction passes a limit.

    Unreadable shards count as bad samples, by their estimated size (see
    :class:`ImageTextShardDataset`), and are named in the log.

    Args:
        interval (int): Iterations between synchronised counts, logs and checks.
        max_bad_fraction (float): Stop when bad / (good + bad) exceeds this.
        min_samples (int): Check the fraction only after this many samples (all ranks).
    """

    priority = 'NORMAL'

    def __init__(self, interval: int = 50, max_bad_fraction: float = 0.1,
                 min_samples: int = 1000) -> None:
        self.interval = interval
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.totals: Counter = Counter()  # all ranks, up to the last synchronisation
        self.bad_shards: set = set()  # unreadable shard paths, all ranks
        self._pending: Counter = Counter()  # this rank, since then
        self._pending_shards: set = set()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if data_batch:
            self._pending.update(counts_from_batch(data_batch))
            for sample in data_batch.get('data_samples') or []:
                for shard in sample.metainfo.get(BAD_SHARDS_KEY, ()):
                    runner.logger.warning(f'Skipped unreadable shard (or its tail): {shard}')
                    self._pending_shards.add(shard)
        if (self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner)
                or checkpoint_due(runner)):
            self.synchronize()
            self.log_and_check(runner)

    def after_train_epoch(self, runner) -> None:
        # An epoch-based checkpoint is written next: it must hold every rank's counts.
        if epoch_checkpoint_due(runner):
            self.synchronize()

    def synchronize(self) -> None:
        """Add every rank's pending counts to :attr:`totals` (a collective when distributed)."""
        pending = (dict(self._pending), sorted(self._pending_shards))
        gathered = all_gather_object(pending) if get_dist_info()[1] > 1 else [pending]
        for counts, shards in gathered:
            self.totals.update(counts)
            self.bad_shards.update(shards)
        self._pending, self._pending_shards = Counter(), set()

    def _shards_text(self, summary: dict) -> str:
        """'N (about M samples, estimated ...): a.tar, b.tar, ...', or 'none'."""
        count = sum(summary['shards'].values())
        if not count:
            return 'none'
        names = sorted(self.bad_shards)
        shown = ', '.join(names[:5]) + (f' and {len(names) - 5} more' if len(names) > 5 else '')
        return (f'{count} (about {summary["shard_samples"]} samples, estimated from sizes.json '
                f'or the mean shard size): {shown}')

    def log_and_check(self, runner) -> None:
        """Log the totals; raise :class:`RunStopped` when the bad fraction passes the limit."""
        summary = bad_sample_summary(self.totals)
        runner.message_hub.update_info('bad_samples', summary)
        if summary['bad'] or summary['converted'] or summary['shards']:
            runner.logger.info(
                f'Data: {summary["bad"]} bad of {summary["seen"]} samples seen '
                f'({summary["fraction"]:.3%}), skipped {summary["reasons"]}; converted to RGB '
                f'{summary["converted"]}; unreadable shards: {self._shards_text(summary)}')
        if summary['seen'] >= self.min_samples and summary['fraction'] > self.max_bad_fraction:
            raise RunStopped(
                f'Stopping: {summary["fraction"]:.2%} of the samples seen are bad '
                f'({summary["bad"]} of {summary["seen"]}, of which {summary["shard_samples"]} '
                f'estimated in unreadable shards), above max_bad_fraction='
                f'{self.max_bad_fraction}. Unreadable shards: {self._shards_text(summary)}. '
                'Top reasons: '
                + ', '.join(f'{k}={v}' for k, v in list(summary['reasons'].items())[:3])
                + '. Inspect the data with tools/dataset_converters/inspect_shards.py, or raise '
                'BadSampleHook.max_bad_fraction.')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = dict(self.totals)
        checkpoint[SHARDS_CHECKPOINT_KEY] = sorted(self.bad_shards)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.totals = Counter(checkpoint.get(CHECKPOINT_KEY, {}))
        self.bad_shards = set(checkpoint.get(SHARDS_CHECKPOINT_KEY, ()))
