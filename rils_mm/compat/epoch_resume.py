"""Resuming ``EpochBasedTrainLoop`` from a mid-epoch checkpoint continues that epoch.

mmengine 0.10 restores ``iter`` and ``epoch`` from the checkpoint and then runs the whole epoch
again from its first batch: an iteration-interval checkpoint in an epoch-based run gives extra
iterations on resume (56 instead of 48 in one of our runs, with a negative ETA), training twice
on the batches before the checkpoint. Here the epoch goes on with the batch after the last one
trained, so the resumed run sees exactly the batches an uninterrupted run would have:

- a dataset that positions itself (``ImageTextShardDataset`` with ``DataResumeHook``) is asked
  to shorten the pass (``skip_batches``), reading no image twice;
- mmengine's ``DefaultSampler`` under a plain batch sampler skips the indices already used
  (the epoch's order is a function of seed and epoch, so it is the same order);
- anything else draws and discards the batches already trained (exact, but they are loaded).
"""
import itertools

from mmengine.logging import print_log

__all__ = ['install_mid_epoch_resume', 'batches_done_in_epoch']


def batches_done_in_epoch(loop) -> int:
    """Batches of the current epoch already trained: 0 at its start, ``len(dataloader)``
    when an iteration checkpoint was written after its last batch (mmengine advances the
    epoch only after the epoch-end hooks, so such a checkpoint still names that epoch)."""
    per_epoch = len(loop.dataloader)
    done = loop._iter - loop._epoch * per_epoch
    return min(max(done, 0), per_epoch)


def _resume_iterator(loader, done: int):
    """An iterator over ``loader`` that starts at batch ``done`` of the epoch."""
    from mmengine.dataset import DefaultSampler
    from torch.utils.data import BatchSampler
    dataset, sampler = loader.dataset, getattr(loader, 'sampler', None)
    if hasattr(dataset, 'skip_batches'):
        dataset.skip_batches(done)
        how = 'the dataset continues from its saved position'
        iterator = iter(loader)
    elif (isinstance(sampler, DefaultSampler) and type(loader.batch_sampler) is BatchSampler
          and loader.batch_size):
        sampler._resume_skip = done * loader.batch_size
        how = f'the sampler skips the {done * loader.batch_size} samples already used'
        iterator = iter(loader)
    else:
        iterator = iter(loader)
        for _ in range(done):
            next(iterator)
        how = 'the batches already trained were loaded and discarded'
    print_log(f'Resuming in the middle of an epoch: continuing at batch {done + 1} of '
              f'{len(loader)}; {how}', logger='current')
    return iterator


def run_epoch(self) -> None:
    """``EpochBasedTrainLoop.run_epoch`` that continues a resumed epoch where it stopped."""
    self.runner.call_hook('before_train_epoch')
    self.runner.model.train()
    done = batches_done_in_epoch(self)
    if done == len(self.dataloader):
        # Every batch was trained before the checkpoint: only the epoch-end hooks (and the
        # validation after them) are left to run.
        batches = []
    elif done:
        batches = _resume_iterator(self.dataloader, done)
    else:
        batches = self.dataloader
    for idx, data_batch in enumerate(batches, start=done):
        self.run_iter(idx, data_batch)
    if 0 < done < len(self.dataloader) and hasattr(self.dataloader.dataset, 'skip_batches'):
        self.dataloader.dataset.skip_batches(0)  # the next epoch is a whole one
    self.runner.call_hook('after_train_epoch')
    self._epoch += 1


def install_mid_epoch_resume() -> None:
    """Patch ``EpochBasedTrainLoop.run_epoch`` and let ``DefaultSampler`` skip once."""
    from mmengine.dataset import DefaultSampler
    from mmengine.runner.loops import EpochBasedTrainLoop
    if getattr(DefaultSampler.__iter__, '_rils_mm_skip', False):
        return
    sampler_iter = DefaultSampler.__iter__

    def __iter__(self):
        skip, self._resume_skip = getattr(self, '_resume_skip', 0), 0
        return itertools.islice(sampler_iter(self), skip, None)

    __iter__._rils_mm_skip = True
    DefaultSampler.__iter__ = __iter__
    EpochBasedTrainLoop.run_epoch = run_epoch
