"""tools/cache_image_features.py as users run it, each run a new process, on tiny data."""
import io
import itertools
import json
import os
import os.path as osp
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = 'tools/cache_image_features.py'

TINY_LIT = dict(
    type='LiT',
    backbone=dict(type='RILSPretrainViT', arch=dict(embed_dims=32, num_layers=2, num_heads=4,
                                                    feedforward_channels=64),
                  img_size=32, patch_size=8, out_type='raw'),
    text_encoder=dict(type='CLIPTextEncoder', vocab_size=49408, width=32, heads=4, layers=2),
    embed_dims=16,
    lock_cfg=dict(backbone=True))
CACHE_PIPELINE = [
    dict(type='LoadImageRGB', min_size=8),
    dict(type='ResizeEdge', scale=32, edge='short', interpolation='bicubic', backend='pillow'),
    dict(type='CenterCrop', crop_size=32),
    dict(type='PackImageText'),
]
SAMPLES_PER_SHARD_IN = 20
CORRUPT_INDEX, NO_IMAGE_INDEX = 5, 27  # one bad sample in each input shard
NUM_GOOD = 2 * SAMPLES_PER_SHARD_IN - 2
# A transform that only waits, so that a run can be killed between two output shards.
SLOW_TRANSFORM = '''
import time
from mmcv.transforms import BaseTransform
from mmpretrain.registry import TRANSFORMS


@TRANSFORMS.register_module()
class WaitPerSample(BaseTransform):
    def __init__(self, seconds):
        self.seconds = seconds

    def transform(self, results):
        time.sleep(self.seconds)
        return results
'''


def start_tool(*args, extra_path=None, **popen_args):
    path = REPO if extra_path is None else f'{REPO}{os.pathsep}{extra_path}'
    env = dict(os.environ, PYTHONPATH=path)
    return subprocess.Popen([sys.executable, TOOL, *args], cwd=REPO, env=env, **popen_args)


def run_tools(*commands, extra_path=None, timeout=300):
    """Run independent commands of the tool at once (each spends most of its time importing);
    their ``CompletedProcess`` results, in order."""
    processes = [start_tool(*args, extra_path=extra_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for args in commands]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout,
                                                   stderr))
    return results


def run_tool(*args, extra_path=None, timeout=300):
    return run_tools(args, extra_path=extra_path, timeout=timeout)[0]


def jpeg_bytes(rng, height, width):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        buffer, format='JPEG')
    return buffer.getvalue()


def write_input_shards(folder):
    """Two shards of 20 pairs, sizes 32x32 and 48x40; one corrupt JPEG, one pair without
    image."""
    from rils_mm.datasets import ShardWriter
    rng = np.random.default_rng(0)
    with ShardWriter(str(folder), samples_per_shard=SAMPLES_PER_SHARD_IN) as writer:
        for index in range(2 * SAMPLES_PER_SHARD_IN):
            size = (32, 32) if index % 2 else (48, 40)
            members = dict(jpg=jpeg_bytes(rng, *size), txt=f'a photo number {index}')
            if index == CORRUPT_INDEX:
                members['jpg'] = b'not a jpeg at all'
            if index == NO_IMAGE_INDEX:
                members.pop('jpg')
            writer.write(f'{index:09d}', members)
    return writer.paths


def write_config(path, model, dataset, pipeline, extra=''):
    path.write_text(f'model = {model!r}\n'
                    f'train_dataloader = dict(batch_size=4, dataset={dataset!r})\n'
                    f'cache_pipeline = {pipeline!r}\n{extra}')
    return str(path)


def shard_dataset(shards, pipeline, **kwargs):
    from rils_mm.datasets import ImageTextShardDataset
    return ImageTextShardDataset(shards=shards, pipeline=pipeline, shuffle=False, rank=0,
                                 world_size=1, **kwargs)


def one_pass(dataset, count):
    """The first ``count`` samples of an endless stream, checking they are one epoch."""
    samples = list(itertools.islice(iter(dataset), count + 1))
    epochs = [sample['data_samples'].metainfo['stream_state'][1] for sample in samples]
    assert epochs == [0] * count + [1]
    return samples[:count]


def shard_files(folder):
    return {name: open(osp.join(folder, name), 'rb').read()
            for name in sorted(os.listdir(folder))
            if name.endswith('.tar') or name == 'sizes.json'}


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Input shards, a config and a checkpoint of the tiny LiT, and a reference cache."""
    import rils_mm  # noqa: F401
    from mmpretrain.registry import MODELS
    root = tmp_path_factory.mktemp('cache')
    shards = write_input_shards(root / 'input')
    dataset = dict(type='ImageTextShardDataset', shards=shards, pipeline=[], seed=0,
                   shuffle_buffer=16, samples_per_epoch=8, batch_size=4)
    config = write_config(root / 'lit_tiny.py', TINY_LIT, dataset, CACHE_PIPELINE)
    torch.manual_seed(1)
    model = MODELS.build(TINY_LIT)
    model.init_weights()
    checkpoint = str(root / 'lit_tiny.pth')
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    reference = str(root / 'reference')
    # Batch 3 never divides a shard of 8: batches must still stop at shard ends.
    result = run_tool(config, '--out', reference, '--checkpoint', checkpoint,
                      '--samples-per-shard', '8', '--batch-size', '3')
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(root=root, shards=shards, config=config, checkpoint=checkpoint, model=model,
                reference=reference, stdout=result.stdout)


def test_cached_features_match_the_locked_tower(setup):
    reference = setup['reference']
    with open(osp.join(reference, 'cache_info.json')) as file:
        info = json.load(file)
    assert info['bad_reasons'] == dict(undecodable_image=1, missing_image=1)
    assert info['bad_samples'] == 2 and info['num_samples'] == NUM_GOOD
    assert info['feature_dims'] == 32 and info['dtype'] == 'float32'
    assert info['num_shards'] == 5 and info['checkpoint'] == setup['checkpoint']
    with open(osp.join(reference, 'sizes.json')) as file:
        assert json.load(file) == {'00000.tar': 8, '00001.tar': 8, '00002.tar': 8,
                                   '00003.tar': 8, '00004.tar': 6}
    stdout = setup['stdout'].splitlines()
    assert '00000.tar: 8 samples cached, 1 bad so far' in stdout
    assert stdout[-1].startswith(f'cached {NUM_GOOD} samples in 5 shard(s)')
    assert 'bad samples: 2 (missing_image=1, undecodable_image=1)' in stdout[-1]

    # Read back as training reads them.
    from rils_mm.datasets.transforms import LoadImageFeatures, PackImageText
    cached = one_pass(shard_dataset(reference, [LoadImageFeatures(dims=32), PackImageText()],
                                    image_exts=('npy', )), NUM_GOOD)
    # The locked tower run directly on the same deterministic pipeline's images.
    images = one_pass(shard_dataset(setup['shards'], CACHE_PIPELINE), NUM_GOOD)
    model = setup['model'].eval()
    with torch.no_grad():
        batch = torch.stack([sample['inputs']['images'] for sample in images])
        normalised = model.data_preprocessor(dict(inputs=dict(images=batch)),
                                             False)['inputs']['images']
        expected = model.image_features(normalised)
    features = torch.stack([sample['inputs']['image_features'] for sample in cached])
    assert features.dtype == torch.float32 and features.shape == (NUM_GOOD, 32)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-6)
    for got, source in zip(cached, images):
        assert got['data_samples'].metainfo['key'] == source['data_samples'].metainfo['key']
        assert got['data_samples'].metainfo['caption'] == source['data_samples'].metainfo[
            'caption']
    # KEY.json names the source sample.
    with tarfile.open(osp.join(reference, '00000.tar')) as tar:
        names = tar.getnames()[:3]
        meta = json.load(tar.extractfile(names[2]))
    assert names == ['000000000.npy', '000000000.txt', '000000000.json']
    assert meta == dict(key='000000000', source=setup['shards'][0])


def test_killed_run_resumes_to_identical_shards(setup):
    root = setup['root']
    (root / 'wait_transform.py').write_text(SLOW_TRANSFORM)
    slow_pipeline = CACHE_PIPELINE[:1] + [dict(type='WaitPerSample', seconds=0.05)] + \
        CACHE_PIPELINE[1:]
    config = str(root / 'lit_tiny_slow.py')
    with open(config, 'w') as file:
        file.write("_base_ = ['./lit_tiny.py']\n"
                   "custom_imports = dict(imports=['wait_transform'], "
                   "allow_failed_imports=False)\n"
                   f'cache_pipeline = {slow_pipeline!r}\n')
    out = str(root / 'killed')
    command = [config, '--out', out, '--checkpoint', setup['checkpoint'],
               '--samples-per-shard', '8', '--batch-size', '3']
    process = start_tool(*command, extra_path=str(root), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    progress = osp.join(out, 'progress.json')
    deadline = time.monotonic() + 120
    while not osp.exists(progress) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
    with open(progress) as file:
        state = json.load(file)
    assert not state['complete'] and 1 <= state['next_shard'] < 5
    assert not osp.exists(osp.join(out, 'sizes.json'))

    resumed = run_tool(*command, extra_path=str(root))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resuming' in resumed.stdout
    assert not [name for name in os.listdir(out) if '.partial' in name]
    expected = shard_files(setup['reference'])
    assert len(expected) == 6 and shard_files(out) == expected

    # Neither rerun writes anything, so they can run together.
    again, other_dtype = run_tools(command, command + ['--dtype', 'float16'],
                                   extra_path=str(root))
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'already complete' in again.stdout
    assert shard_files(out) == expected
    assert other_dtype.returncode == 1
    last_line = other_dtype.stderr.strip().splitlines()[-1]
    assert "dtype was 'float32', now 'float16'" in last_line and '--overwrite' in last_line



def test_full_disk_bad_key_and_replaced_weights_are_one_line(setup, tmp_path):
    """Each in its own process (independent ones at once): a file size limit below a shard (a
    full disk, as the tool sees it) stops the run in one line and the same command then
    finishes the cache as an uninterrupted run writes it; an unknown model key is one line
    naming it; weights retrained into the same checkpoint path are noticed, not mixed in."""
    import resource

    def limit_file_size():  # writes past it fail with EFBIG, as a full disk fails them
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))

    checkpoint = str(tmp_path / 'retrained.pth')
    shutil.copyfile(setup['checkpoint'], checkpoint)
    full, own = str(tmp_path / 'full'), str(tmp_path / 'own')
    command = [setup['config'], '--out', full, '--checkpoint', setup['checkpoint'],
               '--samples-per-shard', '8', '--batch-size', '3']
    processes = [
        start_tool(*command, preexec_fn=limit_file_size, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, text=True),
        start_tool(setup['config'], '--out', str(tmp_path / 'bad'), '--cfg-options',
                   'model.backbone.bogus_key=1', stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, text=True),
        start_tool(setup['config'], '--out', own, '--checkpoint', checkpoint,
                   '--samples-per-shard', '8', stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   text=True)]
    (_, full_err), (_, bad_err), (_, own_err) = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [1, 1, 0], full_err + bad_err + own_err
    assert full_err.strip().splitlines() == [
        f'cache_image_features.py: error: writing in {full}: File too large; the shards '
        f'written before are kept: free some space and run the same command to resume']
    assert not [name for name in os.listdir(full) if '.partial' in name]
    assert bad_err.strip().splitlines()[-1] == (
        f"cache_image_features.py: error: {setup['config']}: TypeError: RILSViT.__init__() got "
        f"an unexpected keyword argument 'bogus_key'")

    model = torch.load(checkpoint, weights_only=True)
    model['state_dict'] = {k: v + 1 for k, v in model['state_dict'].items()}
    torch.save(model, checkpoint)  # retrained, same path
    resumed, replaced = run_tools(command, [setup['config'], '--out', own, '--checkpoint',
                                            checkpoint, '--samples-per-shard', '8'])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert shard_files(full) == shard_files(setup['reference'])
    assert replaced.returncode == 1
    assert replaced.stderr.strip().splitlines() == [
        f'cache_image_features.py: error: {own} holds a feature cache made with other '
        f'settings (the weight file {checkpoint} changed (size or modification time)); rerun '
        f'with the same arguments to resume it, or pass --overwrite to start over']


def test_csv_captions_are_a_source_too(setup, tmp_path):
    rng = np.random.default_rng(1)
    images = tmp_path / 'images'
    images.mkdir()
    lines = ['filepath,title']
    for index in range(6):
        if index != 2:  # row 2 names an image that does not exist
            (images / f'{index}.jpg').write_bytes(jpeg_bytes(rng, 40, 32))
        lines.append(f'{index}.jpg,caption {index}')
    (tmp_path / 'pairs.csv').write_text('\n'.join(lines) + '\n')
    dataset = dict(type='CsvImageTextDataset', ann_file=str(tmp_path / 'pairs.csv'),
                   data_prefix=dict(img_path=str(images)), sep=',', img_key='filepath',
                   caption_key='title', pipeline=[])
    config = write_config(tmp_path / 'lit_csv.py', TINY_LIT, dataset, CACHE_PIPELINE)
    out = str(tmp_path / 'csv_features')
    result = run_tool(config, '--out', out, '--checkpoint', setup['checkpoint'],
                      '--samples-per-shard', '4', '--dtype', 'float16')
    assert result.returncode == 0, result.stderr[-3000:]
    with open(osp.join(out, 'cache_info.json')) as file:
        info = json.load(file)
    assert info['num_samples'] == 5 and info['bad_reasons'] == dict(missing_image=1)
    assert info['source']['type'] == 'CsvImageTextDataset' and info['dtype'] == 'float16'

    from rils_mm.datasets.transforms import LoadImageFeatures, PackImageText
    cached = one_pass(shard_dataset(out, [LoadImageFeatures(dims=32), PackImageText()],
                                    image_exts=('npy', )), 5)
    assert [s['data_samples'].metainfo['caption'] for s in cached] == [
        f'caption {index}' for index in (0, 1, 3, 4, 5)]
    assert all(s['inputs']['image_features'].dtype == torch.float32 for s in cached)
    with tarfile.open(osp.join(out, '00000.tar')) as tar:
        stored = np.load(io.BytesIO(tar.extractfile('0.npy').read()), allow_pickle=False)
        meta = json.load(tar.extractfile('0.json'))
    assert stored.dtype == np.float16 and stored.shape == (32, )
    assert meta == dict(key='0', source=str(images / '0.jpg'))


def test_bad_arguments_are_refused_in_one_line(setup, tmp_path):
    missing = str(tmp_path / 'nowhere.pth')
    result, unlocked = run_tools(
        [setup['config'], '--out', str(tmp_path / 'a'), '--checkpoint', missing],
        [setup['config'], '--out', str(tmp_path / 'b'), '--cfg-options',
         'model.lock_cfg.backbone=False'])
    assert result.returncode != 0
    assert missing in result.stderr.strip().splitlines()[-1]
    assert not osp.exists(tmp_path / 'a')

    assert unlocked.returncode == 1
    last_line = unlocked.stderr.strip().splitlines()[-1]
    assert 'image tower' in last_line and 'must be locked' in last_line
    assert not osp.exists(tmp_path / 'b')


def test_load_image_features_skips_unusable_members():
    from rils_mm.datasets import BadSampleError
    from rils_mm.datasets.transforms import LoadImageFeatures

    def npy(array, allow_pickle=False):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=allow_pickle)
        return buffer.getvalue()

    load = LoadImageFeatures(dims=4)
    good = load(dict(key='k', img_bytes=npy(np.arange(4, dtype=np.float16))))
    assert good['image_features'].dtype == np.float32 and 'img_bytes' not in good
    assert good['image_features'].tolist() == [0, 1, 2, 3]
    unusable = [b'not an array', npy(np.array([{'code': 1}], dtype=object), allow_pickle=True),
                npy(np.ones((2, 2), np.float32)), npy(np.ones(4, np.int64)),
                npy(np.ones(3, np.float32)), npy(np.full(4, np.nan, np.float32))]
    for data in unusable:
        with pytest.raises(BadSampleError) as error:
            load(dict(key='k', img_bytes=data))
        assert error.value.reason == 'undecodable_features' and 'k' in str(error.value)


def test_training_reads_the_cache_in_its_own_process(setup):
    """tools/train.py on the cache the fixture's process wrote: the cached-features dataset of
    configs/_base_/datasets/laion_wds_cached_features.py, the tiny LiT with its checkpoint; the
    shards hold no image, so none can be decoded."""
    from mmengine.config import Config
    root = setup['root']
    with tarfile.open(osp.join(setup['reference'], '00000.tar')) as tar:
        assert {name.rsplit('.', 1)[1] for name in tar.getnames()} == {'npy', 'txt', 'json'}
    base = Config.fromfile(osp.join(REPO, 'configs/_base_/datasets/'
                                    'laion_wds_cached_features.py'))
    dataset = dict(base.train_dataloader.dataset, samples_per_epoch=8, batch_size=4,
                   shuffle_buffer=8, shards=setup['reference'] + '/{00000..00004}.tar')
    model = dict(TINY_LIT, init_cfg=dict(type='Pretrained', checkpoint=setup['checkpoint']))
    config = root / 'lit_tiny_cached.py'
    config.write_text(
        'default_scope = "mmpretrain"\n'
        f'model = {model!r}\n'
        f'train_dataloader = dict(batch_size=4, num_workers=0, sampler=None, '
        f'collate_fn=dict(type="default_collate"), dataset={dataset!r})\n'
        'train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=1)\n'
        'optim_wrapper = dict(optimizer=dict(type="AdamW", lr=1e-3))\n'
        'default_hooks = dict(logger=dict(type="LoggerHook", interval=1))\n'
        'custom_hooks = [dict(type="DataResumeHook"), dict(type="BadSampleHook", interval=1)]\n')
    env = dict(os.environ, PYTHONPATH=REPO)
    result = run_python([sys.executable, 'tools/train.py', str(config), '--work-dir',
                             str(root / 'train_cached')], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    losses = [float(v) for v in re.findall(r'loss_contrastive: ([0-9.]+)', log)]
    assert len(losses) == 2 and all(np.isfinite(losses)), log[-2000:]
