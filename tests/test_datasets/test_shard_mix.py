"""Shard sets mixed by weight and resampled streams: the realised mixture, exact resume at
several cut points, disjoint shards per role, and bad configurations in one line."""
import os
import os.path as osp
import sys
from collections import Counter

import pytest
import torch

from rils_mm.datasets import ImageTextShardDataset, ShardWriter
from rils_mm.datasets.shard_mix import parse_shard_sets

from shard_helpers import good_jpeg, tiny_pipeline
from test_remote_shards import REPO, TRAIN_ON_URL
from test_stream_shards import items, resume_from
from tool_processes import run_python


@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    """Two shard sets of different shard sizes, with sizes.json: 'a' 20 shards x 3 samples,
    'b' 12 shards x 1 sample (keys a0000.., b0000..)."""
    root = tmp_path_factory.mktemp('mix')
    for name, count, per_shard in (('a', 60, 3), ('b', 12, 1)):
        with ShardWriter(str(root / name), per_shard) as writer:
            for index in range(count):
                writer.write(f'{name}{index:04d}', dict(jpg=good_jpeg(index, size=(8, 8)),
                                                        txt=f'{name} {index}'))
    return dict(a=str(root / 'a' / '{00000..00019}.tar'), b=str(root / 'b' / '{00000..00011}.tar'))


def mixed(sets, **kwargs):
    shards = kwargs.pop('shards', [dict(urls=sets['a'], weight=0.7),
                                   dict(urls=sets['b'], weight=0.3)])
    return ImageTextShardDataset(shards, tiny_pipeline(), **dict(
        dict(seed=5, shuffle_buffer=4), **kwargs))


def share_of_a(dataset, num_roles, total):
    """Share of set 'a' in the first ``total`` raw samples of all roles (no decoding)."""
    counts = Counter()
    for role in range(num_roles):
        taken, epoch = 0, 0
        while taken < total // num_roles:
            for sample in dataset.raw_stream(epoch, role, num_roles):
                counts[osp.basename(sample.key)[0]] += 1
                taken += 1
                if taken == total // num_roles:
                    break
            epoch += 1
    assert sum(counts.values()) == total
    return counts['a'] / total


@pytest.mark.parametrize('resampled', [False, True])
@pytest.mark.parametrize('num_roles', [1, 4])
def test_mixture_over_10000_samples_is_within_2_percent(sets, resampled, num_roles):
    # 'a' holds 3 samples per shard, 'b' 1: drawing shards by weight alone would give 'a'
    # 0.7 x 3 / (0.7 x 3 + 0.3) = 87.5 % of the samples.
    share = share_of_a(mixed(sets, resampled=resampled), num_roles, 10_000)
    assert abs(share - 0.7) < 0.02, share
    share = share_of_a(mixed(sets, resampled=resampled, shards=[
        dict(urls=sets['a'], weight=1), dict(urls=sets['b'], weight=3)]), num_roles, 10_000)
    assert abs(share - 0.25) < 0.02, share


def test_upsampling_factors_weigh_each_shard_as_open_clip(sets):
    # open_clip's ResampledShards2: each shard of a '::' part weighs its factor, so 'a' (20
    # shards x 1) against 'b' (12 shards x 3) gets 20 / 56 of the shard draws.
    dataset = mixed(sets, shards=f"{sets['a']}::{sets['b']}", upsampling_factors='1::3',
                    resampled=True)
    draws = [dataset.shards[shard] for epoch in range(400)
             for shard, _, _ in dataset.role_units(epoch, 0, 1)]
    assert len(draws) >= 10_000
    share = sum('/a/' in path for path in draws) / len(draws)
    assert abs(share - 20 / 56) < 0.02, share


@pytest.mark.parametrize('num_roles', [6, 12, 40])
@pytest.mark.parametrize('resampled', [False, True])
def test_no_two_roles_read_the_same_shard(sets, num_roles, resampled):
    dataset = mixed(sets, resampled=resampled)
    read = [{(shard, part) for epoch in range(8)
             for shard, part, _ in dataset.role_units(epoch, role, num_roles)}
            for role in range(num_roles)]
    for role, units in enumerate(read):
        assert units, role  # every role has something to read
        for other in read[role + 1:]:
            assert not units & other
    if num_roles <= 12:  # as many shards as roles in each set: whole shards, never shared
        shards = [{shard for shard, _ in units} for units in read]
        assert all(not a & b for i, a in enumerate(shards) for b in shards[i + 1:])
    if not resampled:  # without replacement every shard (part) is read in 8 epochs
        assert set().union(*read) == {(shard, part) for shard in range(32) for part in
                                      range(max(1, -(-num_roles // 12)) if shard >= 20 else
                                            max(1, -(-num_roles // 20)))}


@pytest.mark.parametrize('resampled, access', [(False, 'stream'), (True, 'stream'),
                                               (True, 'random')])
def test_mixed_and_resampled_streams_resume_exactly(sets, resampled, access):
    make = lambda: mixed(sets, resampled=resampled, rank=1, world_size=3,  # noqa: E731
                         access=access)
    reference = items(make(), 70)
    assert len({state[1] for _, state, _ in reference}) >= 3  # crosses epochs
    assert {key[0] for key, _, _ in reference} == {'a', 'b'}
    for cut in (1, 5, 17, 23, 31, 48, 60):
        resumed = make()
        if access == 'stream':
            resume_from(resumed, reference[cut - 1][1])
        else:  # no cursor: the role replays its epoch's tar headers up to its position
            role, epoch, position, num_workers, _ = reference[cut - 1][1]
            resumed.set_resume_state(dict(num_workers=num_workers, next_role=0,
                                          roles={role: (epoch, position)}))
        resumed = items(resumed, 10)
        want = reference[cut:cut + 10]
        assert [i[:2] for i in resumed] == [i[:2] for i in want], cut
        assert all(torch.equal(a[2], b[2]) for a, b in zip(resumed, want))


def test_plain_shards_keep_their_order(sets):
    # One set, not resampled: the order of the plain stream (no mixing code involved).
    assert mixed(sets, shards=sets['a']).shard_sets is None
    assert parse_shard_sets(sets['a'])[1] == [(0, 20, 'weight', 1.0)]


@pytest.mark.parametrize('shards, factors, message', [
    ([dict(urls='A', weight=0.7), dict(urls='B', weight=-0.3)], None,
     'shards[1].weight=-0.3: expected a number > 0'),
    ([dict(urls='A', weight=0), dict(urls='B')], None,
     'shards[0].weight=0: expected a number > 0'),
    ([dict(urls='A', weight='high'), dict(urls='B')], None,
     "shards[0].weight='high': expected a number > 0"),
    ([dict(urls='A'), dict(urls=[], weight=1)], None,
     'shards[1].urls=[] names no shard: expected a path pattern, URL or list of them'),
    ([dict(urls='A'), dict(urls=5)], None,
     'shards[1].urls=5 names no shard: expected a path pattern, URL or list of them'),
    ([dict(urls='A'), dict(weight=1)], None,
     'shards[1].urls=None names no shard: expected a path pattern, URL or list of them'),
    ([dict(urls='A', wieght=2)], None,
     "shards[0] has unknown key(s) ['wieght']: expected urls and weight"),
    ([dict(urls='A'), 'B'], None,
     "shards[1]='B': expected dict(urls=..., weight=...) like the other entries"),
    ('A::B::C', '1::2', "upsampling_factors='1::2' has 2 factor(s) but shards='A::B::C' has "
     "3 '::'-separated part(s)"),
    ('A::B', '1::-2', 'upsampling_factors[1]=-2.0: expected a number > 0'),
    ('A::B', '1::x', "upsampling_factors[1]='x': expected a number > 0"),
])
def test_bad_mixing_configs_fail_in_one_line(sets, shards, factors, message):
    names = dict(A=sets['a'], B=sets['b'], C=sets['a'])
    if isinstance(shards, str):
        shards_arg = '::'.join(names[part] for part in shards.split('::'))
        message = message.replace(f'shards={shards!r}', f'shards={shards_arg!r}')
    else:
        shards_arg = [names[spec] if isinstance(spec, str) else dict(
            spec, **({'urls': names[spec['urls']]} if isinstance(spec.get('urls'), str) else {}))
            for spec in shards]
        message = message.replace("'B'", repr(sets['b']))
    with pytest.raises(ValueError) as error:
        mixed(sets, shards=shards_arg, upsampling_factors=factors)
    assert str(error.value) == message


def test_train_tool_on_mixed_sets_and_on_a_bad_weight(tmp_path, sets):
    """tools/train.py trains on two weighted sets, resampled, with 2 dataloader workers; a
    negative weight stops it before training, in one line."""
    def train(shards, name):
        config = tmp_path / f'{name}.py'
        config.write_text(TRAIN_ON_URL.format(
            demo=osp.join(REPO, 'configs', 'rils', 'demo_cpu.py'), workers=2, persistent=True,
            shards=shards, access='stream').replace(
                "access='stream'", "access='stream', resampled=True"))
        return run_python([sys.executable, 'tools/train.py', str(config), '--work-dir',
                           str(tmp_path / name)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONUNBUFFERED='1'))

    good = train([dict(urls=sets['a'], weight=0.7), dict(urls=sets['b'], weight=0.3)], 'good')
    assert good.returncode == 0, good.stderr[-3000:]
    assert osp.isfile(tmp_path / 'good' / 'epoch_3.pth')
    bad = train([dict(urls=sets['a'], weight=0.7), dict(urls=sets['b'], weight=-0.3)], 'bad')
    lines = [line for line in bad.stderr.splitlines() if 'error' in line.lower()]
    assert bad.returncode != 0 and 'Traceback' not in bad.stderr, bad.stderr[-3000:]
    assert len(lines) == 1 and 'shards[1].weight=-0.3: expected a number > 0' in lines[0], lines


@pytest.mark.parametrize('resampled', [False, True])
def test_dataloader_workers_read_disjoint_shards_and_resume_through_the_hook(sets, resampled):
    """A DataLoader with 2 workers on a mix: no shard is read by two workers, and
    the state DataResumeHook saves after 7 batches gives the rest of the run's batches."""
    from mmengine.dataset import pseudo_collate
    from torch.utils.data import DataLoader

    from shard_helpers import keys_of, state_after

    def batches(dataset, count):
        loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=pseudo_collate)
        got = []
        for batch in loader:
            got.append(batch)
            if len(got) == count:
                return got

    reference = batches(mixed(sets, resampled=resampled), 18)
    readers = {}
    for batch in reference:
        for sample in batch['data_samples']:
            readers.setdefault(sample.shard, set()).add(sample.stream_state[0])
    assert len(readers) > 10 and all(len(roles) == 1 for roles in readers.values()), readers
    state, _ = state_after(reference[:7])
    resumed = mixed(sets, resampled=resampled)
    resumed.set_resume_state(state)
    assert keys_of(batches(resumed, 11)) == keys_of(reference[7:])
