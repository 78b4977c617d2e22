"""Two real (gloo, forked) processes: rank split, gathered resume state (for iteration- and
epoch-based checkpoints), summed bad counts."""
import multiprocessing as mp
import traceback
from types import SimpleNamespace

import torch
import torch.distributed as dist
from mmengine.dataset import default_collate
from mmengine.hooks import CheckpointHook
from mmengine.logging import MessageHub, MMLogger

from rils_mm.datasets import ImageTextShardDataset
from rils_mm.datasets.shard_tools import ShardWriter
from rils_mm.engine.hooks.bad_sample_hook import BadSampleHook
from rils_mm.engine.hooks.data_resume_hook import CHECKPOINT_KEY, DataResumeHook

from shard_helpers import good_jpeg, tiny_pipeline

WORLD_SIZE = 2


def run_rank(rank, store_file, shards, results):
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    try:
        dist.init_process_group('gloo', init_method=f'file://{store_file}', rank=rank,
                                world_size=WORLD_SIZE)
        dataset = ImageTextShardDataset(shards, tiny_pipeline(), shuffle_buffer=3)
        assert (dataset.rank, dataset.world_size) == (rank, WORLD_SIZE)  # from mmengine.dist
        runner = SimpleNamespace(iter=0, max_iters=4, logger=MMLogger.get_instance(f'r{rank}'),
                                 message_hub=MessageHub.get_instance(f'r{rank}'),
                                 hooks=[CheckpointHook(interval=2, by_epoch=False)])
        resume_hook = DataResumeHook()
        # The same stream under an epoch-based CheckpointHook: it saves after the epoch.
        epoch_runner = SimpleNamespace(epoch=0, max_epochs=2,
                                       hooks=[CheckpointHook(interval=1, by_epoch=True)])
        epoch_hook = DataResumeHook()
        bad_hook = BadSampleHook(interval=100, min_samples=1, max_bad_fraction=0.9)
        iterator = iter(dataset)
        keys = []
        for runner.iter in range(4):
            batch = default_collate([next(iterator) for _ in range(2)])
            keys += [sample.key for sample in batch['data_samples']]
            resume_hook.after_train_iter(runner, runner.iter, batch)
            epoch_hook.after_train_iter(epoch_runner, runner.iter, batch)
            bad_hook.after_train_iter(runner, runner.iter, batch)
        checkpoint, epoch_checkpoint = {}, {}
        resume_hook.before_save_checkpoint(runner, checkpoint)
        epoch_hook.after_train_epoch(epoch_runner)
        epoch_hook.before_save_checkpoint(epoch_runner, epoch_checkpoint)
        states = checkpoint.get(CHECKPOINT_KEY)
        assert epoch_checkpoint.get(CHECKPOINT_KEY) == states, 'epoch-based save lost a rank'
        results.put((rank, keys, states, dict(bad_hook.totals)))
    except Exception:  # noqa: BLE001  report to the parent instead of hanging it
        results.put((rank, traceback.format_exc(), None, None))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_processes(tmp_path):
    with ShardWriter(str(tmp_path / 'shards'), 6) as writer:
        for index in range(24):
            jpg = b'junk' if index % 5 == 2 else good_jpeg(index)
            writer.write(f'{index:06d}', dict(jpg=jpg, txt=f'caption {index}'))
    shards = str(tmp_path / 'shards' / '{00000..00003}.tar')
    context = mp.get_context('fork')
    results = context.Queue()
    processes = [context.Process(target=run_rank,
                                 args=(rank, tmp_path / 'store', shards, results))
                 for rank in range(WORLD_SIZE)]
    for process in processes:
        process.start()
    outcome = {}
    for _ in range(WORLD_SIZE):
        rank, keys, states, totals = results.get(timeout=60)
        assert states is not None or totals is not None, keys  # a traceback otherwise
        outcome[rank] = keys, states, totals
    for process in processes:
        process.join(timeout=30)

    assert not set(outcome[0][0]) & set(outcome[1][0])  # ranks read different samples
    # Every rank gathered the state of both ranks at the checkpoint iteration.
    states = outcome[0][1]
    assert len(states) == 2 and states[1]['roles'] and states[0] != states[1]
    # Bad counts were summed over ranks: both hold the same totals of all 16 samples.
    assert outcome[0][2] == outcome[1][2]
    assert outcome[0][2]['good'] == 16 and outcome[0][2]['undecodable_image'] >= 1
