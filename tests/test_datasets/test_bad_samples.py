"""Bad samples are skipped and counted per reason, odd images converted, the limit enforced."""
import os
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from mmengine.logging import MessageHub, MMLogger

from rils_mm.datasets import ImageTextShardDataset, ShardWriter, counts_from_batch
from rils_mm.datasets.transforms import LoadImageRGB
from rils_mm.engine.errors import RunStopped
from rils_mm.engine.hooks.bad_sample_hook import BadSampleHook

from shard_helpers import encode, good_jpeg, write_good_shards

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
PIPELINE = [dict(type='LoadImageRGB', max_pixels=80 * 80, min_size=4),
            dict(type='PackImageText')]

# key -> (members, expected skip reason or None, expected original mode for kept samples)
CASES = {
    'truncated': (dict(jpg=good_jpeg(1, (40, 48))[:700], txt='a'), 'truncated_image', None),
    'garbage': (dict(jpg=b'\x00not an image' * 20, txt='a'), 'undecodable_image', None),
    'no_txt': (dict(jpg=good_jpeg(2)), 'missing_caption', None),
    'no_image': (dict(txt='a caption without image'), 'missing_image', None),
    'empty_caption': (dict(jpg=good_jpeg(3), txt=' \n\t '), 'empty_caption', None),
    'not_utf8': (dict(jpg=good_jpeg(4), txt=b'caf\xe9 \xff'), 'caption_not_utf8', None),
    'too_large': (dict(png=encode(np.zeros((100, 100, 3), np.uint8), 'PNG'), txt='a'),
                  'image_too_large', None),
    'too_wide': (dict(png=encode(np.zeros((4, 200, 3), np.uint8), 'PNG'), txt='a'),
                 'extreme_aspect_ratio', None),
    'gray': (dict(jpg=encode(RGB, 'JPEG', 'L'), txt='gray'), None, 'L'),
    'cmyk': (dict(jpg=encode(RGB, 'JPEG', 'CMYK'), txt='cmyk'), None, 'CMYK'),
    'rgba': (dict(png=encode(np.dstack([RGB, np.zeros(RGB.shape[:2], np.uint8)]), 'PNG'),
                  txt='transparent'), None, 'RGBA'),
    'png16': (dict(png=encode(np.full((30, 40), 40000, np.uint16), 'PNG'), txt='16 bit'), None,
              'I;16'),
    'palette': (dict(png=encode(RGB, 'PNG', 'P'), txt='palette'), None, 'P'),
    'webp': (dict(webp=encode(RGB, 'WEBP'), txt='webp'), None, 'RGB'),
}


@pytest.fixture
def bad_shard(tmp_path):
    """Good samples interleaved with every kind of bad one; a good sample comes last."""
    with ShardWriter(str(tmp_path), samples_per_shard=100) as writer:
        for index, (key, (members, _, _)) in enumerate(CASES.items()):
            writer.write(f'good{index:02d}', dict(jpg=good_jpeg(index), txt=f'good {index}'))
            writer.write(key, members)
        writer.write('good_last', dict(jpg=good_jpeg(99), txt='the last one'))
    return str(tmp_path / '00000.tar')


def one_epoch(shards, **kwargs):
    """Packed samples of epoch 0 (file order) and their summed counts."""
    dataset = ImageTextShardDataset(shards, PIPELINE, shuffle=False, **kwargs)
    items = []
    with pytest.warns(UserWarning):
        for item in dataset:
            if item['data_samples'].stream_state[1] > 0:
                break
            items.append(item)
    counts = Counter()
    for item in items:
        counts.update(counts_from_batch(dict(data_samples=[item['data_samples']])))
    return items, counts


def test_bad_samples_are_skipped_and_counted(bad_shard):
    items, counts = one_epoch(bad_shard)
    keys = [item['data_samples'].key for item in items]
    expected_kept = [k for k, (_, reason, _) in CASES.items() if reason is None]
    assert sorted(keys) == sorted([f'good{i:02d}' for i in range(len(CASES))] +
                                  expected_kept + ['good_last'])
    expected_reasons = Counter(reason for _, reason, _ in CASES.values() if reason)
    assert {k: v for k, v in counts.items()
            if k != 'good' and not k.startswith('converted/')} == expected_reasons
    expected_modes = Counter(f'converted/{mode}' for _, reason, mode in CASES.values()
                             if mode not in (None, 'RGB'))
    assert {k: v for k, v in counts.items() if k.startswith('converted/')} == expected_modes
    for item in items:
        image = item['inputs']['images']
        assert image.dtype.is_floating_point is False and image.shape[0] == 3
    by_key = {item['data_samples'].key: item['inputs']['images'] for item in items}
    assert (by_key['rgba'] == 255).all()  # transparent pixels are shown on white
    assert (by_key['png16'] == 40000 >> 8).all()  # 16 bit scaled, not clipped at 255
    gray = by_key['gray']
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()


def test_unreadable_and_cut_shards_are_named_and_skipped(bad_shard, tmp_path):
    broken = tmp_path / 'broken.tar'
    broken.write_bytes(b'this is not a tar file' * 40)
    cut = tmp_path / 'cut.tar'
    data = open(bad_shard, 'rb').read()
    cut.write_bytes(data[:len(data) // 2])
    dataset = ImageTextShardDataset([str(broken), str(cut)], PIPELINE, shuffle=False)
    with pytest.warns(UserWarning, match='broken.tar') as record:
        items = []
        for item in dataset:
            if item['data_samples'].stream_state[1] > 0:
                break
            items.append(item)
    assert any('cut.tar' in str(warning.message) for warning in record)
    assert 0 < len(items) < 16  # the samples before the damage are kept
    counts = Counter()
    for item in items:
        counts.update(counts_from_batch(dict(data_samples=[item['data_samples']])))
    assert counts['unreadable_shard'] == 2
    # Neither is in sizes.json and no readable shard was seen to estimate from: 1 each.
    assert counts['unreadable_shard_samples'] == 2
    assert sorted(s for i in items for s in i['data_samples'].get('bad_shards', [])) == \
        sorted([str(broken), str(cut)])


def fake_runner(name, max_iters=100):
    return SimpleNamespace(logger=MMLogger.get_instance(name), iter=0, max_iters=max_iters,
                           message_hub=MessageHub.get_instance(name), hooks=[])


def test_limit_stops_training_with_a_clear_message(bad_shard):
    items, counts = one_epoch(bad_shard)
    batches = [dict(data_samples=[item['data_samples'] for item in items[i:i + 4]])
               for i in range(0, len(items), 4)]
    hook = BadSampleHook(interval=1, max_bad_fraction=0.1, min_samples=10)
    runner = fake_runner('bad_sample_limit')
    with pytest.raises(RunStopped) as error:
        for runner.iter, batch in enumerate(batches):
            hook.after_train_iter(runner, runner.iter, batch)
    message = str(error.value)
    consumed = Counter()
    for batch in batches[:runner.iter + 1]:
        consumed.update(counts_from_batch(batch))
    seen = consumed.pop('good')
    bad = sum(v for k, v in consumed.items() if '/' not in k)
    assert runner.iter == 1  # stopped as soon as min_samples was reached
    assert 'max_bad_fraction=0.1' in message and 'truncated_image' in message
    assert f'{bad} of {seen + bad}' in message and f'{bad / (seen + bad):.2%}' in message


def test_counts_are_logged_below_the_limit(bad_shard):
    items, counts = one_epoch(bad_shard)
    hook = BadSampleHook(interval=2, max_bad_fraction=0.5, min_samples=10)
    runner = fake_runner('bad_sample_log', max_iters=len(items))
    for runner.iter, item in enumerate(items):
        hook.after_train_iter(runner, runner.iter, dict(data_samples=[item['data_samples']]))
    summary = runner.message_hub.get_info('bad_samples')
    assert summary['seen'] == len(items) + summary['bad']
    assert summary['reasons']['extreme_aspect_ratio'] == 1
    assert summary['converted'] == {'L': 1, 'CMYK': 1, 'RGBA': 1, 'I;16': 1, 'P': 1}
    checkpoint = {}
    hook.before_save_checkpoint(runner, checkpoint)
    restored = BadSampleHook()
    restored.after_load_checkpoint(runner, checkpoint)
    assert restored.totals == hook.totals


def test_load_image_rgb_reads_paths_and_reports_missing_files(tmp_path):
    path = tmp_path / 'x.png'
    path.write_bytes(encode(RGB, 'PNG'))
    results = LoadImageRGB()(dict(img_path=str(path)))
    assert results['img'].shape == (30, 40, 3) and (results['img'] == RGB).all()
    from rils_mm.datasets import BadSampleError
    with pytest.raises(BadSampleError, match='missing.png'):
        LoadImageRGB()(dict(img_path=str(tmp_path / 'missing.png')))


@pytest.mark.parametrize('sizes_json', [True, False])
def test_unreadable_shards_count_toward_the_limit(tmp_path, sizes_json):
    paths = write_good_shards(tmp_path, num_samples=80, per_shard=8)
    broken = [paths[i] for i in (1, 2, 4, 5, 7, 9)]  # 6 of 10; the first one is readable
    for path in broken:
        with open(path, 'wb') as file:
            file.write(b'not a tar' * 100)
    if not sizes_json:  # then each is estimated as the mean size of the readable ones: 8
        os.remove(tmp_path / 'sizes.json')
    items, counts = one_epoch([str(p) for p in paths])
    assert len(items) == 32
    assert counts['unreadable_shard'] == 6 and counts['unreadable_shard_samples'] == 48

    batches = [dict(data_samples=[item['data_samples'] for item in items[i:i + 8]])
               for i in range(0, len(items), 8)]
    hook = BadSampleHook(interval=1000, max_bad_fraction=0.5, min_samples=10)
    runner = fake_runner(f'unreadable_shards_{sizes_json}', max_iters=len(batches))
    with pytest.raises(RunStopped) as error:
        for runner.iter, batch in enumerate(batches):
            hook.after_train_iter(runner, runner.iter, batch)
    summary = runner.message_hub.get_info('bad_samples')
    assert (summary['bad'], summary['seen'], summary['shard_samples']) == (48, 80, 48)
    message = str(error.value)
    assert '60.00% of the samples seen are bad (48 of 80, of which 48 estimated in unreadable ' \
        'shards)' in message
    assert 'Unreadable shards: 6 (about 48 samples' in message
    assert f'{paths[1]}, {paths[2]}' in message
