"""SIGKILL a training run at random moments, ``--resume`` it, and get the uninterrupted run.

Each run is ``tools/train.py`` in its own process, as a user (or a cluster's preemption)
meets it. A probe hook records the sample keys of every iteration; after a kill and a resume,
the last record of each iteration must equal the uninterrupted run's, and the final weights
must be bitwise equal (same machine, same thread count). Checkpoints are written every
iteration with rotation (``max_keep_ckpts=2``), so kills land mid-epoch, at epoch ends and
during saves.
"""
import json
import os
import os.path as osp
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import torch

import rils_mm  # noqa: F401  (the types of Runner checkpoints are allowed by weights-only loading)
from PIL import Image
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
ITERS_PER_EPOCH, EPOCHS = 4, 3
TOTAL_ITERS = ITERS_PER_EPOCH * EPOCHS

PROBE = '''
import json
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class OrderProbeHook(Hook):
    """Append (iteration, sample keys) of every trained batch to a JSON-lines file."""

    def __init__(self, path):
        self.path = path

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        keys = [sample.metainfo.get('key') for sample in data_batch['data_samples']]
        with open(self.path, 'a') as file:
            file.write(json.dumps([runner.iter, keys]) + '\\n')
'''

# demo_cpu.py shrunk to seconds; 16 pairs per batch, 4 batches per epoch, 3 epochs.
TINY_MODEL = '''
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=1, num_heads=2,
                            feedforward_channels=64), img_size=32),
    neck=dict(num_patches=16, embed_dim=32, decoder_embed_dim=32, decoder_num_heads=2),
    text_encoder=dict(width=32, layers=1, heads=2, output_dim=16),
    embed_dims=16)
train_cfg = dict(max_epochs={epochs})
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(by_epoch=False, interval=1, max_keep_ckpts=2))
custom_imports = dict(imports=['rils_mm', 'order_probe'], allow_failed_imports=False)
'''

SHARD_CONFIG = '''
_base_ = '{repo}/configs/rils/demo_cpu.py'
''' + TINY_MODEL + '''
train_dataloader = dict(
    batch_size=16, num_workers=2, persistent_workers=True,
    dataset=dict(data_root='{data}', batch_size=16, samples_per_epoch=64,
                 generate_cfg=dict(num_train=64, num_val=8, num_heldout=8, image_size=32),
                 pipeline=[dict(type='LoadImageRGB', min_size=8),
                           dict(type='RandomResizedCrop', scale=32, crop_ratio_range=(0.5, 1.0),
                                interpolation='bicubic', backend='pillow'),
                           dict(type='CLIPTokenize', context_length=77),
                           dict(type='PackImageText')]))
custom_hooks = [dict(type='DataResumeHook'), dict(type='BadSampleHook', interval=50),
                dict(type='OrderProbeHook', path='{probe}')]
'''

JSONL_CONFIG = '''
_base_ = '{repo}/configs/rils/demo_cpu.py'
''' + TINY_MODEL + '''
train_dataloader = dict(
    _delete_=True, batch_size=16, num_workers=2, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='JsonlImageTextDataset', ann_file='{data}/train.jsonl',
                 data_prefix=dict(img_path='{data}/images'), img_key='filepath',
                 caption_key='caption',
                 pipeline=[dict(type='LoadImageRGB', min_size=8),
                           dict(type='RandomResizedCrop', scale=32, crop_ratio_range=(0.5, 1.0),
                                interpolation='bicubic', backend='pillow'),
                           dict(type='CLIPTokenize', context_length=77),
                           dict(type='PackImageText')]))
custom_hooks = [dict(type='DataResumeHook'), dict(type='OrderProbeHook', path='{probe}')]
'''


def write_jsonl_data(root):
    """64 random 32 px images with captions, as a JSONL caption table."""
    rng = np.random.default_rng(0)
    os.makedirs(osp.join(root, 'images'))
    colours = ['red', 'green', 'blue', 'yellow']
    with open(osp.join(root, 'train.jsonl'), 'w') as file:
        for index in range(64):
            colour = colours[index % 4]
            image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            image[8:24, 8:24] = {'red': (220, 30, 30), 'green': (30, 220, 30),
                                 'blue': (30, 30, 220), 'yellow': (220, 220, 30)}[colour]
            name = f'{index:03d}.png'
            Image.fromarray(image).save(osp.join(root, 'images', name))
            file.write(json.dumps(dict(filepath=name, caption=f'a {colour} square',
                                       key=f'sample{index}')) + '\n')


class Scenario:
    """One dataset flavour: a config writer and runs of tools/train.py against it."""

    def __init__(self, root, template, make_data=None):
        self.root = str(root)
        self.data = osp.join(self.root, 'data')
        os.makedirs(osp.join(self.root, 'modules'))
        with open(osp.join(self.root, 'modules', 'order_probe.py'), 'w') as file:
            file.write(PROBE)
        if make_data:
            make_data(self.data)
        self.template = template

    def config(self, name):
        probe = osp.join(self.root, f'{name}.order.jsonl')
        path = osp.join(self.root, f'{name}.py')
        with open(path, 'w') as file:
            file.write(self.template.format(repo=REPO, data=self.data, probe=probe,
                                            epochs=EPOCHS))
        return path, probe, osp.join(self.root, f'work_{name}')

    def command(self, config, work_dir, *extra):
        return [sys.executable, 'tools/train.py', config, '--work-dir', work_dir, *extra]

    def env(self):
        # One thread per process on every run: results are bitwise comparable.
        # This checkout's rils_mm first (not an installed copy), then the probe module.
        return dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, osp.join(self.root, 'modules')]),
                    OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')

    def run(self, config, work_dir, *extra):
        result = run_python(self.command(config, work_dir, *extra), cwd=REPO,
                            env=self.env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        return result


def final_weights(work_dir):
    checkpoint = torch.load(osp.join(work_dir, f'iter_{TOTAL_ITERS}.pth'), weights_only=True)
    return checkpoint['state_dict']


def order(probe):
    """Keys of each iteration, the last record winning (a resumed run redoes iterations)."""
    records = {}
    with open(probe) as file:
        for line in file:
            iteration, keys = json.loads(line)
            records[iteration] = keys
    return [records.get(i) for i in range(TOTAL_ITERS)]


def kill_at(scenario, config, work_dir, after_iter, delay, during_save=False):
    """Start a run and SIGKILL it ``delay`` s after checkpoint ``after_iter`` appears, or
    (``during_save``) while the save after that one is being written. Returns False if the
    run ended before the kill."""
    process = subprocess.Popen(scenario.command(config, work_dir), cwd=REPO, env=scenario.env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = osp.join(work_dir, f'iter_{after_iter}.pth')
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if osp.exists(target):
                if not during_save:
                    time.sleep(delay)
                    break
                if any('.partial-' in name for name in os.listdir(work_dir)):
                    break
            time.sleep(0.001 if during_save else 0.02)
        if process.poll() is not None:
            return False
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True
    finally:
        if process.poll() is None:
            process.kill()


def check_kills(scenario, kills, seed):
    config, probe, work_dir = scenario.config('reference')
    scenario.run(config, work_dir)
    reference_weights, reference_order = final_weights(work_dir), order(probe)
    assert all(keys for keys in reference_order)

    rng = random.Random(seed)
    for trial in range(kills):
        config, probe, work_dir = scenario.config(f'killed{trial}')
        after_iter = rng.randrange(1, TOTAL_ITERS - 1)
        killed = kill_at(scenario, config, work_dir, after_iter, rng.uniform(0, 0.4),
                         during_save=(trial == 0))
        assert killed, f'trial {trial}: the run finished before the kill'
        result = scenario.run(config, work_dir, '--resume')
        log = result.stdout + result.stderr
        assert 'Traceback' not in log
        resumed = re.search(r'resumed epoch: (\d+), iter: (\d+)', log)
        assert resumed and int(resumed.group(2)) >= after_iter, (
            f'trial {trial}: the run did not resume from iteration >= {after_iter}: '
            f'{log[-3000:]}')
        assert osp.isfile(osp.join(work_dir, f'iter_{TOTAL_ITERS}.pth')), (
            f'trial {trial} (kill after {after_iter}): no final checkpoint; files '
            f'{sorted(os.listdir(work_dir))}; log: {log[-3000:]}')
        assert order(probe) == reference_order, f'trial {trial} (kill after {after_iter})'
        weights = final_weights(work_dir)
        for key, value in reference_weights.items():
            assert torch.equal(weights[key], value), (
                f'trial {trial} (kill after iteration {after_iter}): {key} differs by '
                f'{(weights[key] - value).abs().max().item():.3g}')


def test_kill_and_resume_is_exact_for_the_shard_stream(tmp_path):
    """Three kills of an epoch-based run on the demo shards (2 workers): one while a
    checkpoint is being written, two at random points."""
    check_kills(Scenario(tmp_path, SHARD_CONFIG), kills=3, seed=1)


def test_kill_and_resume_is_exact_for_a_caption_file(tmp_path):
    """A kill of a run on a JSONL caption table with DefaultSampler (2 workers), while a
    checkpoint is being written."""
    check_kills(Scenario(tmp_path, JSONL_CONFIG, write_jsonl_data), kills=1, seed=2)



def test_kill_and_resume_is_exact_with_accumulated_steps(tmp_path):
    """The shard stream with model.accumulation (2 micro-batches of 8 per step): a step is one
    optimizer step however it is computed, so a kill (here while a checkpoint is being
    written) and a resume give the uninterrupted run's weights bitwise."""
    template = SHARD_CONFIG.replace('embed_dims=16)',
                                    'embed_dims=16, accumulation=dict(micro_batches=2))')
    assert template != SHARD_CONFIG
    check_kills(Scenario(tmp_path, template), kills=1, seed=3)


def checkpoints(work_dir):
    """The checkpoint files of a work dir and what ``last_checkpoint`` names."""
    with open(osp.join(work_dir, 'last_checkpoint')) as file:
        last = osp.basename(file.read().strip())
    return sorted(name for name in os.listdir(work_dir) if name.endswith('.pth')), last


def test_resume_with_other_data_stops_unless_told_what_to_do(tmp_path):
    """A checkpoint's stream position belongs to its data: resuming with another seed or
    another shard place stops in one line naming the change (nothing trained, nothing
    written), and an epoch-based run with another ``samples_per_epoch`` stops even with
    ``'keep'``; ``on_data_change='keep'`` continues the saved positions on the moved shards
    with the uninterrupted run's samples; a checkpoint without a signature (older versions)
    resumes exactly and the later ones carry it; ``'restart'`` reads the new stream from its
    start."""
    scenario = Scenario(tmp_path, SHARD_CONFIG)
    config, probe, work_dir = scenario.config('reference')
    scenario.run(config, work_dir)
    reference_order = order(probe)
    config, probe, work_dir = scenario.config('stopped')
    scenario.run(config, work_dir, '--cfg-options', 'train_cfg.max_epochs=2')
    assert order(probe)[:8] == reference_order[:8]
    moved = osp.join(scenario.root, 'moved')
    shutil.copytree(scenario.data, moved)
    saved_work = work_dir + '_saved'
    shutil.copytree(work_dir, saved_work)
    for options, change in [(['train_dataloader.dataset.seed=1'], 'seed: 0 -> 1'),
                            ([f'train_dataloader.dataset.data_root={moved}'],
                             f'shards {moved}/train/'),
                            (['train_dataloader.dataset.samples_per_epoch=32',
                              'custom_hooks.0.on_data_change=keep'],
                             'epoch-based run resumes only with the samples_per_epoch')]:
        result = run_python(scenario.command(config, work_dir, '--resume', '--cfg-options',
                                             *options),
                            cwd=REPO, env=scenario.env(), capture_output=True, text=True,
                            timeout=600)
        errors = [line for line in result.stderr.splitlines() if 'error' in line.lower()]
        assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr
        assert len(errors) == 1 and change in errors[0], errors
        if not options[-1].endswith('on_data_change=keep'):
            assert 'on_data_change' in errors[0], errors
        assert checkpoints(work_dir) == checkpoints(saved_work)

    result = scenario.run(config, work_dir, '--resume', '--cfg-options',
                          f'train_dataloader.dataset.data_root={moved}',
                          'custom_hooks.0.on_data_change=keep')
    assert 'its stream positions are kept' in result.stdout + result.stderr
    assert order(probe) == reference_order

    # A checkpoint written before the signature resumes as before, and the checkpoints after
    # it carry the signature.
    shutil.rmtree(work_dir)
    shutil.copytree(saved_work, work_dir)
    path = osp.join(work_dir, 'iter_8.pth')
    checkpoint = torch.load(path, weights_only=False)
    for state in checkpoint['data_stream_states']:
        del state['data']
    torch.save(checkpoint, path)
    result = scenario.run(config, work_dir, '--resume')
    assert 'predates data signatures' in result.stdout + result.stderr
    assert order(probe) == reference_order
    final = torch.load(osp.join(work_dir, f'iter_{TOTAL_ITERS}.pth'), weights_only=True)
    assert final['data_stream_states'][0]['data']['seed'] == 0

    shutil.rmtree(work_dir)
    shutil.copytree(saved_work, work_dir)
    result = scenario.run(config, work_dir, '--resume', '--cfg-options',
                          'train_dataloader.dataset.seed=1',
                          'custom_hooks.0.on_data_change=restart')
    assert 'the new stream starts from its first samples' in result.stdout + result.stderr
    resumed = order(probe)
    assert resumed[:8] == reference_order[:8] and all(resumed[8:])
    assert resumed[8:] != reference_order[8:]
    assert osp.isfile(osp.join(work_dir, f'iter_{TOTAL_ITERS}.pth'))
