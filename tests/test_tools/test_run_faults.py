"""Faults a user meets with tools/train.py and tools/test.py, each in its own process.

A non-finite loss stops the run (or, on request, is skipped and counted) before anything
poisoned is saved; bad settings and damaged checkpoints are one line naming what is wrong;
a finished run's checkpoints are never silently replaced; ``--resume`` passes over a damaged
newest checkpoint to the last good one.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch

import rils_mm  # noqa: F401  (the types of Runner checkpoints are allowed by weights-only loading)
from tiny_demo import TINY_MODEL
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = 'configs/rils/demo_cpu.py'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """--cfg-options for a 4-iteration demo run (checkpoint every iteration) on 32 px data."""
    root = tmp_path_factory.mktemp('shapes') / 'data'
    return TINY_MODEL + [
        'train_cfg.max_epochs=1', 'train_dataloader.batch_size=16',
        'train_dataloader.dataset.batch_size=16', 'train_dataloader.dataset.samples_per_epoch=64',
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'default_hooks.logger.interval=1', 'default_hooks.checkpoint.by_epoch=False',
        'default_hooks.checkpoint.interval=1', f'train_dataloader.dataset.data_root={root}',
        'train_dataloader.dataset.generate_cfg.num_train=64',
        'train_dataloader.dataset.generate_cfg.num_val=8',
        'train_dataloader.dataset.generate_cfg.num_heldout=8',
        'train_dataloader.dataset.generate_cfg.image_size=32',
        'train_dataloader.dataset.pipeline.1.scale=32'
    ]


def run(tool, *args, timeout=300):
    return run_python([sys.executable, tool, *args], cwd=REPO, capture_output=True,
                      text=True, env=dict(os.environ, PYTHONUNBUFFERED='1'),
                      timeout=timeout)


def one_error_line(result, tool='tools/train.py'):
    """The single ``<tool>: error: ...`` line; no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.startswith(f'{tool}: error:')]
    assert len(lines) == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    return lines[0]


def train(work_dir, tiny, *extra, cfg=()):
    return run('tools/train.py', DEMO, '--work-dir', str(work_dir), *extra, '--cfg-options',
               *tiny, *cfg)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, tiny):
    """A finished 4-iteration run: iter_2..iter_4.pth kept (max_keep_ckpts=3)."""
    work_dir = tmp_path_factory.mktemp('finished')
    result = train(work_dir, tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    return work_dir


def all_finite(path):
    state = torch.load(path, weights_only=True)['state_dict']
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_non_finite_loss_stops_the_run_and_keeps_the_good_checkpoint(tmp_path, tiny):
    result = train(tmp_path, tiny, cfg=['optim_wrapper.optimizer.lr=1e30'])
    assert result.returncode == 1
    line = one_error_line(result)
    assert 'non-finite loss at iteration 2 (epoch 1)' in line
    assert 'loss_contrastive=nan' in line and 'loss_reconstruction=' in line
    assert f'the last checkpoint, {tmp_path}/iter_1.pth, was written before it' in line
    saved = sorted(p.name for p in tmp_path.glob('*.pth'))
    assert saved == ['iter_1.pth']
    assert all_finite(tmp_path / 'iter_1.pth')
    assert (tmp_path / 'last_checkpoint').read_text().strip().endswith('iter_1.pth')


def test_skip_nonfinite_skips_and_counts_the_bad_steps(tmp_path, tiny):
    result = train(tmp_path, tiny, '--skip-nonfinite', cfg=['optim_wrapper.optimizer.lr=1e30'])
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'Skipped the step of iteration 2 (epoch 1): non-finite loss' in log
    assert '3 step(s) skipped so far' in log
    for name in ('iter_2.pth', 'iter_3.pth', 'iter_4.pth'):
        assert all_finite(tmp_path / name), name
    assert torch.load(tmp_path / 'iter_4.pth', weights_only=True)['nonfinite_skipped'] == 3


@pytest.mark.parametrize('args,expected', [
    (['--cfg-options', 'optim_wrapper.optimizer.lr=inf'],
     'optim_wrapper.optimizer.lr=inf is not a finite, non-negative number'),
    (['--cfg-options', 'optim_wrapper.optimizer.lr=-0.1'],
     'optim_wrapper.optimizer.lr=-0.1 is not a finite, non-negative number'),
    (['--cfg-options', 'train_dataloader.batch_size=abc'],
     "train_dataloader.batch_size='abc': expected a number (the config has 64)"),
    (['--cfg-options', 'model.backbone={type:X}'],
     'model.backbone is a section of the config'),
    (['--cfg-options', 'load_from=/no/such/checkpoint.pth'],
     'load_from: checkpoint not found: /no/such/checkpoint.pth'),
    (['--amp'], '--amp needs a CUDA GPU'),
    (['--work-dir', '/proc/rils_mm_work_dir'], 'work dir /proc/rils_mm_work_dir is not writable'),
])
def test_bad_settings_are_one_line(tmp_path, args, expected):
    if '--work-dir' not in args:
        args = ['--work-dir', str(tmp_path)] + args
    result = run('tools/train.py', DEMO, *args)
    assert result.returncode == 2
    assert expected in one_error_line(result)


def test_a_finished_run_is_not_overwritten(finished_run, tiny):
    before = {p.name: p.stat().st_mtime_ns for p in finished_run.glob('*.pth')}
    result = train(finished_run, tiny)
    assert result.returncode == 2
    line = one_error_line(result)
    assert f'work dir {finished_run} holds the checkpoints of an earlier run' in line
    assert 'iter_4.pth' in line and '--resume' in line and '--overwrite' in line
    assert {p.name: p.stat().st_mtime_ns for p in finished_run.glob('*.pth')} == before


def test_resume_with_nothing_to_resume_says_so(tmp_path, tiny):
    result = train(tmp_path, tiny, '--resume', cfg=['train_cfg.max_epochs=1'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'no checkpoint to resume in {tmp_path}; starting a new run' in (result.stdout +
                                                                          result.stderr)
    assert (tmp_path / 'iter_4.pth').is_file()


def test_resume_skips_a_damaged_newest_checkpoint(finished_run, tiny, tmp_path):
    work_dir = tmp_path / 'copy'
    work_dir.mkdir()
    for path in finished_run.glob('iter_*.pth'):
        (work_dir / path.name).write_bytes(path.read_bytes())
    data = (work_dir / 'iter_4.pth').read_bytes()
    (work_dir / 'iter_4.pth').write_bytes(data[:len(data) // 3])  # a copy cut short
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_4.pth'))
    result = train(work_dir, tiny, '--resume', cfg=['train_cfg.max_epochs=2'])
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f'skipping checkpoint {work_dir}/iter_4.pth is damaged' in log
    assert f'Load checkpoint from {work_dir}/iter_3.pth' in log
    assert 'resumed epoch: 0, iter: 3' in log
    assert torch.load(work_dir / 'iter_8.pth', weights_only=True)['meta']['iter'] == 8


@pytest.mark.parametrize('damage', ['truncated', 'empty'])
def test_test_tool_names_a_damaged_checkpoint(finished_run, tmp_path, damage):
    path = tmp_path / f'{damage}.pth'
    data = (finished_run / 'iter_4.pth').read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == 'truncated' else b'')
    result = run('tools/test.py', 'configs/rils/demo_cpu_zeroshot.py', str(path))
    assert result.returncode == 1
    line = one_error_line(result, 'tools/test.py')
    assert f'checkpoint {path} is' in line and ('damaged' in line or 'empty' in line)


def test_resume_names_a_damaged_checkpoint_given_explicitly(finished_run, tmp_path, tiny):
    path = tmp_path / 'cut.pth'
    data = (finished_run / 'iter_4.pth').read_bytes()
    path.write_bytes(data[:1000])
    result = train(tmp_path / 'work', tiny, '--resume', str(path))
    assert result.returncode == 1
    assert f'checkpoint {path} is damaged' in one_error_line(result)


@pytest.mark.parametrize('change,expected', [
    (['model.embed_dims=8', 'model.text_encoder.output_dim=8'],
     ['2 weights differ in shape (', 'image_head.projection.weight: [16, 32] in the checkpoint, '
      '[8, 32] in the model']),
    (['model.backbone.arch.num_layers=2'],
     ['13 weights of the model are missing from the checkpoint (backbone.layers.1.',
      'the optimizer has 57 parameter groups (57 parameters) in the checkpoint, 70 (70 '
      'parameters) with this config']),
])
def test_resume_refuses_a_checkpoint_of_another_configuration(finished_run, tiny, tmp_path,
                                                             change, expected):
    # Before: another embed_dims trained on with random projections; another depth failed
    # with an optimizer traceback.
    work_dir = tmp_path / 'copy'
    work_dir.mkdir()
    for path in finished_run.glob('iter_*.pth'):
        shutil.copy2(path, work_dir / path.name)  # with its time: iter_4 is the newest
    before = {p.name: p.stat().st_mtime_ns for p in work_dir.glob('*.pth')}
    result = train(work_dir, tiny, '--resume', cfg=['train_cfg.max_epochs=2', *change])
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]
    line = one_error_line(result)
    assert line.startswith(f'tools/train.py: error: --resume: checkpoint {work_dir}/iter_4.pth '
                           f'was saved by another configuration than {DEMO}: ')
    for text in expected:
        assert text in line
    assert 'or start a new run in another --work-dir' in line
    assert {p.name: p.stat().st_mtime_ns for p in work_dir.glob('*.pth')} == before


@pytest.fixture
def small_disk(tmp_path, finished_run):
    """A tmpfs with room for one checkpoint of the tiny run and not two (root only)."""
    mount_point = tmp_path / 'disk'
    mount_point.mkdir()
    size = (finished_run / 'iter_4.pth').stat().st_size * 3 // 2
    if os.geteuid() != 0 or subprocess.run(
            ['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(mount_point)],
            capture_output=True).returncode != 0:
        pytest.skip('mounting a small tmpfs needs root')
    try:
        yield mount_point
    finally:
        subprocess.run(['umount', str(mount_point)], check=True)


def test_a_full_disk_stops_the_run_in_one_line_and_the_run_resumes(small_disk, tiny):
    work_dir = small_disk / 'work'
    result = train(work_dir, tiny)
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]
    assert one_error_line(result) == (
        f'tools/train.py: error: cannot save checkpoint {work_dir}/iter_2.pth: No space left on '
        f'device (ENOSPC); nothing was replaced and no partial file was left; the previous '
        f'checkpoint {work_dir}/iter_1.pth is intact: free space (or fix the cause) and '
        f'continue the run with --resume')
    assert [p.name for p in work_dir.glob('*.pth*')] == ['iter_1.pth']
    assert (work_dir / 'last_checkpoint').read_text().strip() == f'{work_dir}/iter_1.pth'
    assert not (work_dir / 'train.lock').exists()

    # Room again: the run continues from iter_1.
    subprocess.run(['mount', '-o', 'remount,size=200m', str(small_disk)], check=True)
    resumed = train(work_dir, tiny, '--resume')
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert 'resumed epoch: 0, iter: 1' in log
    assert torch.load(work_dir / 'iter_4.pth', weights_only=True)['meta']['iter'] == 4


def test_a_config_with_a_syntax_error_is_one_line(tmp_path):
    base = tmp_path / 'base.py'
    base.write_text("model = dict(type='RILS',\n    embed_dims=16\nwork_dir = 'x'\n")
    config = tmp_path / 'config.py'
    config.write_text(f"_base_ = [{str(base)!r}]\n")
    result = run('tools/train.py', str(config), '--work-dir', str(tmp_path / 'work'))
    assert result.returncode == 2
    assert one_error_line(result) == (
        f"tools/train.py: error: syntax error in config {base}, line 1: '(' was never closed: "
        f"model = dict(type='RILS',")
