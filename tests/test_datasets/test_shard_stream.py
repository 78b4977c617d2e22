"""The shard stream: exactly-once splitting across ranks and workers, order, exact resume."""
from types import SimpleNamespace

import pytest
import torch
from mmengine.dataset import default_collate
from torch.utils.data import DataLoader

import rils_mm.datasets.image_text_shards as shard_module
from rils_mm.datasets import ImageTextShardDataset, expand_shard_urls
from rils_mm.datasets.shard_tools import ShardWriter
from rils_mm.engine.hooks.data_resume_hook import CHECKPOINT_KEY, DataResumeHook

from shard_helpers import good_jpeg, keys_of, state_after, tiny_pipeline, write_good_shards

ALL_KEYS = [f'{i:06d}' for i in range(46)]


def epoch_keys(dataset, epoch=0):
    """Keys one role yields in ``epoch`` (the stream is endless; stop at the next epoch)."""
    keys = []
    for item in dataset:
        item_epoch = item['data_samples'].stream_state[1]
        if item_epoch > epoch:
            return keys
        if item_epoch == epoch:
            keys.append(item['data_samples'].key)
    raise AssertionError('the stream ended')


def simulated_roles(monkeypatch, shards, world_size, num_workers, epoch=0, **kwargs):
    """Keys per (rank, worker), faking the dataloader worker identity in this process."""
    per_role = {}
    for rank in range(world_size):
        for worker in range(num_workers):
            monkeypatch.setattr(shard_module, 'get_worker_info',
                                lambda w=worker: SimpleNamespace(id=w, num_workers=num_workers))
            dataset = ImageTextShardDataset(shards, pipeline=tiny_pipeline(), rank=rank,
                                            world_size=world_size, shuffle_buffer=4, **kwargs)
            per_role[rank, worker] = epoch_keys(dataset, epoch)
    return per_role


@pytest.mark.parametrize('epoch', [0, 1])
def test_two_ranks_two_workers_see_every_sample_once(monkeypatch, good_shards, epoch):
    per_role = simulated_roles(monkeypatch, good_shards, world_size=2, num_workers=2,
                               epoch=epoch)
    seen = [key for keys in per_role.values() for key in keys]
    assert sorted(seen) == ALL_KEYS  # nothing twice, nothing missing
    assert all(per_role.values()), 'every role gets data'


def test_fewer_shards_than_roles_splits_shards(monkeypatch, tmp_path):
    write_good_shards(tmp_path, num_samples=10, per_shard=10)  # a single shard, 4 roles
    per_role = simulated_roles(monkeypatch, str(tmp_path / '00000.tar'), 2, 2)
    assert sorted(k for keys in per_role.values() for k in keys) == ALL_KEYS[:10]
    assert all(len(keys) in (2, 3) for keys in per_role.values())


def test_order_is_seeded_and_changes_with_epoch(good_shards):
    first = epoch_keys(ImageTextShardDataset(good_shards, tiny_pipeline(), seed=3))
    again = epoch_keys(ImageTextShardDataset(good_shards, tiny_pipeline(), seed=3))
    next_epoch = epoch_keys(ImageTextShardDataset(good_shards, tiny_pipeline(), seed=3), 1)
    other_seed = epoch_keys(ImageTextShardDataset(good_shards, tiny_pipeline(), seed=4))
    assert first == again
    assert sorted(first) == sorted(next_epoch) == sorted(other_seed) == ALL_KEYS
    assert first != next_epoch and first != other_seed


def make_loader(shards, state=None, num_workers=2, batch_size=3):
    dataset = ImageTextShardDataset(shards, tiny_pipeline(tokenize=True), seed=1,
                                    shuffle_buffer=5)
    dataset.set_resume_state(state)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                      persistent_workers=num_workers > 0, collate_fn=default_collate)


def take(loader, count):
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def test_real_dataloader_workers_cover_epoch_once(good_shards):
    batches = take(make_loader(good_shards), 30)
    roles = [batch['data_samples'][0].stream_state[0] for batch in batches]
    assert roles[:6] == [0, 1, 0, 1, 0, 1]  # in-order round robin: what resume relies on
    epoch0 = [s.key for b in batches for s in b['data_samples'] if s.stream_state[1] == 0]
    assert sorted(epoch0) == ALL_KEYS
    assert batches[0]['inputs']['images'].shape == (3, 3, 16, 16)
    assert batches[0]['inputs']['texts'].shape == (3, 77)


@pytest.fixture
def mixed_shards(tmp_path):
    """Good samples with bad ones in between (undecodable image, empty caption)."""
    with ShardWriter(str(tmp_path), 9) as writer:
        for index in range(40):
            members = dict(jpg=good_jpeg(index), txt=f'caption {index}')
            if index % 7 == 3:
                members['jpg'] = b'garbage'
            if index % 11 == 5:
                members['txt'] = ''
            writer.write(f'{index:06d}', members)
    return str(tmp_path / '{00000..00004}.tar')


@pytest.mark.parametrize('shards_fixture', ['good_shards', 'mixed_shards'])
@pytest.mark.parametrize('consumed', [4, 7])
def test_resume_continues_with_the_same_samples(request, shards_fixture, consumed):
    shards = request.getfixturevalue(shards_fixture)
    reference = take(make_loader(shards), consumed + 8)

    # The interrupted run's checkpoint holds the state of the batches it consumed.
    state, checkpoint = state_after(take(make_loader(shards), consumed))
    resumed = take(make_loader(shards, state), 8)

    assert keys_of(resumed) == keys_of(reference[consumed:])
    for got, want in zip(resumed, reference[consumed:]):  # crops too, not only identities
        assert torch.equal(got['inputs']['images'], want['inputs']['images'])
        assert [s.skipped_before for s in got['data_samples']] == \
            [s.skipped_before for s in want['data_samples']]
    assert checkpoint[CHECKPOINT_KEY][0]['num_workers'] == 2


def test_resume_does_not_decode_skipped_samples(good_shards, monkeypatch):
    reference = take(make_loader(good_shards, num_workers=0), 10)
    hook = DataResumeHook()
    for batch in reference[:6]:
        hook.after_train_iter(None, 0, batch)
    calls = []
    original = ImageTextShardDataset.load_sample
    monkeypatch.setattr(ImageTextShardDataset, 'load_sample',
                        lambda self, ref, *a, **k: calls.append(ref.key) or original(
                            self, ref, *a, **k))
    resumed = take(make_loader(good_shards, hook.state, num_workers=0), 4)
    assert keys_of(resumed) == keys_of(reference[6:])
    assert calls == keys_of(resumed)  # nothing before the resume point was decoded


def test_resume_with_other_worker_count_is_refused(good_shards):
    state = dict(num_workers=4, next_role=0, roles={0: (0, 3)})
    with pytest.raises(ValueError, match='num_workers=4'):
        take(make_loader(good_shards, state, num_workers=0), 1)


def test_missing_shard_is_named(tmp_path):
    write_good_shards(tmp_path, num_samples=4, per_shard=2)
    with pytest.raises(FileNotFoundError, match='00002.tar'):
        expand_shard_urls(str(tmp_path / '{00000..00002}.tar'))
    assert len(expand_shard_urls(str(tmp_path))) == 2  # a folder means all its shards


def role_sequences(batches):
    """(epoch, position, key) per role, in the order the role produced them."""
    sequences = {}
    for batch in batches:
        for sample in batch['data_samples']:
            role, epoch, position = sample.stream_state[:3]
            sequences.setdefault(role, []).append((epoch, position, sample.key))
    return sequences


def test_nominal_epochs_continue_the_stream(good_shards):
    dataset = ImageTextShardDataset(good_shards, tiny_pipeline(), seed=1, shuffle_buffer=5,
                                    samples_per_epoch=20, batch_size=3)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=default_collate)
    assert len(loader) == 7  # ceil(20 / 3) batches per rank
    passes = [list(loader) for _ in range(3)]  # non-persistent workers: fresh processes
    assert [len(batches) for batches in passes] == [7, 7, 7]
    endless = take(make_loader(good_shards), 30)
    got = role_sequences(batch for batches in passes for batch in batches)
    want = role_sequences(endless)
    for role, sequence in got.items():
        assert sequence == want[role][:len(sequence)]
    assert {role: len(sequence) for role, sequence in got.items()} == {0: 36, 1: 27}
