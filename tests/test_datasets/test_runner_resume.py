"""End to end with mmengine's Runner: kill-and-resume sees the same data; bad samples logged."""
import os.path as osp

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner

import rils_mm  # noqa: F401  (compat fixes: torch.load of Runner checkpoints)
import rils_mm.engine.hooks.bad_sample_hook  # noqa: F401  (registers the hooks)
import rils_mm.engine.hooks.data_resume_hook  # noqa: F401
from rils_mm.datasets.shard_tools import ShardWriter

from shard_helpers import good_jpeg, tiny_pipeline


class KeyRecorder(BaseModel):
    """Records the sample keys of every training batch; a single, untrained weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, inputs, data_samples=None, mode='loss'):
        assert inputs['images'].dtype == torch.uint8 and inputs['texts'].shape[1] == 77
        self.seen.append([sample.key for sample in data_samples])
        return dict(loss=self.weight.sum() * inputs['images'].float().mean())


def build_runner(work_dir, shards, max_iters, resume_from=None, by_epoch=False):
    if by_epoch:  # nominal epochs of 4 batches; max_iters counts epochs here
        dataset_extra = dict(samples_per_epoch=12, batch_size=3)
        train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_iters)
    else:
        dataset_extra = {}
        train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
    return Runner(
        model=KeyRecorder(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=dict(type='ImageTextShardDataset', shards=shards,
                         pipeline=tiny_pipeline(tokenize=True), shuffle_buffer=4,
                         **dataset_extra),
            sampler=None, batch_size=3, num_workers=2, persistent_workers=True,
            collate_fn=dict(type='default_collate')),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.0)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1 if by_epoch else 3,
                                           by_epoch=by_epoch),
                           logger=dict(type='LoggerHook', interval=100)),
        custom_hooks=[dict(type='DataResumeHook'),
                      dict(type='BadSampleHook', interval=2, min_samples=1000)],
        default_scope='mmpretrain',
        randomness=dict(seed=0),
        load_from=resume_from,
        resume=resume_from is not None,
        experiment_name=osp.basename(str(work_dir)),  # distinct loggers within one second
        log_level='INFO')


def stop_workers(runner) -> None:
    """Shut persistent workers down now (left to garbage collection it takes seconds)."""
    iterator = runner.train_loop.dataloader_iterator
    iterator = getattr(iterator, 'iterator', iterator)  # DataResumeHook's wrapper
    iterator._iterator._shutdown_workers()


@pytest.fixture
def shards_with_bad(tmp_path):
    with ShardWriter(str(tmp_path / 'shards'), 8) as writer:
        for index in range(30):
            jpg = b'broken' if index % 9 == 4 else good_jpeg(index)
            writer.write(f'{index:06d}', dict(jpg=jpg, txt=f'caption {index}'))
    return str(tmp_path / 'shards' / '{00000..00003}.tar')


def test_runner_resume_sees_the_uninterrupted_samples(tmp_path, shards_with_bad):
    full = build_runner(tmp_path / 'full', shards_with_bad, max_iters=8)
    full.train()
    stop_workers(full)
    assert osp.isfile(tmp_path / 'full' / 'iter_3.pth')

    # As if the run had been killed after iteration 3: resume from that checkpoint.
    resumed = build_runner(tmp_path / 'resumed', shards_with_bad, max_iters=8,
                           resume_from=str(tmp_path / 'full' / 'iter_3.pth'))
    resumed.train()
    stop_workers(resumed)
    assert resumed.model.seen == full.model.seen[3:]
    assert len(resumed.model.seen) == 5

    # Bad-sample counts continue from the checkpoint and reach the log.
    summary = resumed.message_hub.get_info('bad_samples')
    assert summary == full.message_hub.get_info('bad_samples')
    assert summary['reasons'] == {'undecodable_image': summary['bad']} and summary['bad'] >= 1
    with open(resumed.logger.log_file) as log:
        assert 'undecodable_image' in log.read()


def test_epoch_based_resume_continues_the_stream(tmp_path, shards_with_bad):
    full = build_runner(tmp_path / 'full', shards_with_bad, max_iters=3, by_epoch=True)
    full.train()
    stop_workers_of_epoch_loop(full)
    assert len(full.model.seen) == 12  # 3 nominal epochs of 4 batches
    resumed = build_runner(tmp_path / 'resumed', shards_with_bad, max_iters=3, by_epoch=True,
                           resume_from=str(tmp_path / 'full' / 'epoch_1.pth'))
    resumed.train()
    stop_workers_of_epoch_loop(resumed)
    assert resumed.model.seen == full.model.seen[4:]


def stop_workers_of_epoch_loop(runner) -> None:
    iterator = getattr(runner.train_loop.dataloader, '_iterator', None)
    if iterator is not None:
        iterator._shutdown_workers()
