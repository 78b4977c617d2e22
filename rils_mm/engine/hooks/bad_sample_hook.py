"""Count skipped and converted samples, log them, and stop when too much data is bad.

The datasets attach, to every sample they yield, the reasons of the bad samples they skipped
just before it (``skipped_before``) and the image's original PIL mode (``img_mode``), so the
counts reach the trainer inside the batches, from any number of (persistent) dataloader
workers, and only for batches that were really consumed. Each rank adds up its batches; every
``interval`` iterations (and before each checkpoint) the ranks' counts are summed with an
all-gather, logged, and checked against ``max_bad_fraction`` -- identically on all ranks, so
they stop together.
"""
from collections import Counter
from typing import Dict

from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS

from rils_mm.datasets.bad_samples import SHARD_REASONS, counts_from_batch
from .data_resume_hook import checkpoint_due

CHECKPOINT_KEY = 'bad_sample_counts'


def bad_sample_summary(counts: Dict[str, int]) -> dict:
    """Split raw counts into good, bad (per reason), converted (per mode) and shard errors."""
    reasons = {k: v for k, v in counts.items()
               if k != 'good' and not k.startswith('converted/') and k not in SHARD_REASONS}
    bad = sum(reasons.values())
    seen = counts.get('good', 0) + bad
    return dict(seen=seen, bad=bad, fraction=bad / seen if seen else 0.0,
                reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
                converted={k.split('/', 1)[1]: v for k, v in counts.items()
                           if k.startswith('converted/')},
                shards={k: v for k, v in counts.items() if k in SHARD_REASONS})


@HOOKS.register_module()
class BadSampleHook(Hook):
    """Log bad-sample counts and stop training when their fraction passes a limit.

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
        self._pending: Counter = Counter()  # this rank, since then

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if data_batch:
            self._pending.update(counts_from_batch(data_batch))
            for sample in data_batch.get('data_samples') or []:
                for shard in sample.metainfo.get('bad_shards', ()):
                    runner.logger.warning(f'Skipped unreadable shard (or its tail): {shard}')
        if (self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner)
                or checkpoint_due(runner)):
            self.synchronize()
            self.log_and_check(runner)

    def synchronize(self) -> None:
        """Add every rank's pending counts to :attr:`totals` (a collective when distributed)."""
        if get_dist_info()[1] > 1:
            for counts in all_gather_object(dict(self._pending)):
                self.totals.update(counts)
        else:
            self.totals.update(self._pending)
        self._pending = Counter()

    def log_and_check(self, runner) -> None:
        """Log the totals; raise RuntimeError when the bad fraction passes the limit."""
        summary = bad_sample_summary(self.totals)
        runner.message_hub.update_info('bad_samples', summary)
        if summary['bad'] or summary['converted'] or summary['shards']:
            runner.logger.info(
                f'Data: {summary["bad"]} bad of {summary["seen"]} samples seen '
                f'({summary["fraction"]:.3%}), skipped {summary["reasons"]}; converted to RGB '
                f'{summary["converted"]}; shard errors {summary["shards"]}')
        if summary['seen'] >= self.min_samples and summary['fraction'] > self.max_bad_fraction:
            raise RuntimeError(
                f'Stopping: {summary["fraction"]:.2%} of the samples seen are bad '
                f'({summary["bad"]} of {summary["seen"]}), above max_bad_fraction='
                f'{self.max_bad_fraction}. Top reasons: '
                + ', '.join(f'{k}={v}' for k, v in list(summary['reasons'].items())[:3])
                + '. Inspect the data with tools/dataset_converters/inspect_shards.py, or raise '
                'BadSampleHook.max_bad_fraction.')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = dict(self.totals)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.totals = Counter(checkpoint.get(CHECKPOINT_KEY, {}))
