"""tools/train.py with ``model.accumulation=dict(micro_batches=K)``, as users run it: the
demo RILS shrunk to seconds, one process and two gloo processes (dist_train.sh).

A step on K micro-batches has the loss and gradients of the step on the whole batch, and the
masks are drawn from the same random stream (the CPU generator draws a batch's noise as the
concatenation of its micro-batches' draws), so a K = 2 run logs the losses of the K = 1 run
up to float32 summation order.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
from tiny_demo import tiny_data, tiny_run
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = 'configs/rils/demo_cpu.py'
LOGGED = ('loss', 'loss_contrastive', 'loss_reconstruction', 'i2t_acc', 'recon_kept')


def options(tmp_path, micro_batches, *extra):
    """The tiny demo (64 pairs in batches of 16: 4 steps) with K micro-batches per step."""
    root = tmp_path.parent / f'{tmp_path.name}_shapes'
    return ['--cfg-options', *tiny_run(64), *tiny_data(64),
            f'train_dataloader.dataset.data_root={root}',
            f'model.accumulation.micro_batches={micro_batches}', *extra]


def train(work_dir, *args, distributed=False):
    env = dict(os.environ, PYTHONUNBUFFERED='1', PYTHON=sys.executable,
               PORT=str(29500 + os.getpid() % 1000))
    command = (['bash', 'tools/dist_train.sh', DEMO, '2'] if distributed else
               [sys.executable, 'tools/train.py', DEMO])
    return subprocess.run([*command, '--work-dir', str(work_dir), '--no-validate', *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def logged(work_dir):
    """The logged scalars of each training iteration."""
    (path, ) = work_dir.glob('*/vis_data/scalars.json')
    with open(path) as file:
        return [json.loads(line) for line in file if '"loss"' in line]


def assert_same_losses(run, reference, iterations):
    assert [r['iter'] for r in run] == [r['iter'] for r in reference] == iterations
    for record, expected in zip(run, reference):
        for key in LOGGED:
            assert record[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), (
                record['iter'], key)


@pytest.mark.parametrize('distributed', [False, True], ids=['one_process', 'two_processes'])
def test_k2_run_logs_the_losses_of_the_k1_run(tmp_path, distributed):
    runs = {}
    for micro_batches in (1, 2):
        work_dir = tmp_path / f'k{micro_batches}'
        result = train(work_dir, *options(tmp_path, micro_batches), distributed=distributed)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        assert (work_dir / 'epoch_1.pth').is_file()
        runs[micro_batches] = logged(work_dir)
    # 64 pairs, 16 per device and step: 4 steps on one process, 2 on two.
    assert_same_losses(runs[2], runs[1], [1, 2] if distributed else [1, 2, 3, 4])
    assert all(record['nonfinite_skipped'] == 0 for record in runs[2])  # the hook is on
    assert any(r['recon_kept'] > 0 for r in runs[2])  # reconstruction is in the comparison


def test_a_non_finite_accumulated_step_stops_the_run(tmp_path):
    result = train(tmp_path / 'work', *options(tmp_path, 2, 'optim_wrapper.optimizer.lr=1e30'))
    assert result.returncode == 1, (result.stdout + result.stderr)[-4000:]
    lines = [line for line in result.stderr.splitlines() if 'error:' in line]
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert 'non-finite loss at iteration 2 (epoch 1)' in lines[0]


@pytest.mark.parametrize('extra,expected', [
    (['model.accumulation.micro_batches=3'],
     'train_dataloader.batch_size=16 is the per-device batch of one step (K x B '
     'micro-batches): it must be a multiple of model.accumulation.micro_batches=3'),
    (['optim_wrapper.accumulative_counts=2'],
     'optim_wrapper.accumulative_counts=2 with model.accumulation: the former averages the '
     'losses of separate small batches'),
    (['model.accumulation.micro_batches=0'],
     'RILS: accumulation must be dict(micro_batches=K) with an integer K >= 1, got '
     "{'micro_batches': 0}"),
])
def test_bad_accumulation_settings_are_one_line(tmp_path, extra, expected):
    result = train(tmp_path / 'work', *options(tmp_path, 2, *extra))
    assert result.returncode == 2, (result.stdout + result.stderr)[-4000:]
    lines = [line for line in result.stderr.splitlines()
             if line.startswith('tools/train.py: error:')]
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert expected in lines[0]


def accumulating_config(**top_level):
    from mmengine.config import Config
    cfg = Config(dict(model=dict(type='RILS', accumulation=dict(micro_batches=2)),
                      train_dataloader=dict(batch_size=16),
                      optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW'))))
    cfg.merge_from_dict(top_level)
    return cfg


@pytest.mark.parametrize('settings,expected', [
    (dict(launcher='pytorch', strategy=dict(type='RILSFSDPStrategy')),
     'model.accumulation runs with the Runner and DDP; it is not available with '
     'strategy/runner_type (FSDP)'),
    (dict(launcher='pytorch', model_wrapper_cfg=dict(type='MMDistributedDataParallel')),
     "model_wrapper_cfg.type='MMDistributedDataParallel' with model.accumulation: the "
     'accumulated step needs GradCacheDistributedDataParallel'),
    ({'optim_wrapper.type': 'ApexOptimWrapper'},
     'model.accumulation needs optim_wrapper of type OptimWrapper or AmpOptimWrapper with one '
     'optimizer, got ApexOptimWrapper'),
])
def test_settings_accumulation_cannot_go_with(settings, expected):
    from rils_mm.tools.cli import UsageError, check_train_config
    with pytest.raises(UsageError) as error:
        check_train_config(accumulating_config(**settings))
    assert str(error.value) == expected


def test_a_distributed_run_gets_the_accumulating_wrapper():
    from rils_mm.tools.cli import check_train_config
    cfg = accumulating_config(launcher='pytorch', find_unused_parameters=True)
    check_train_config(cfg)
    assert cfg.model_wrapper_cfg == dict(type='GradCacheDistributedDataParallel',
                                         broadcast_buffers=False, find_unused_parameters=True)
    single = accumulating_config()
    check_train_config(single)  # one process: the model's own train_step, no wrapper
    assert 'model_wrapper_cfg' not in single


# tools/train.py, SIGKILLed by itself when its step has back-propagated the first of its two
# micro-batches: grad_cache sets the saved random state before each micro-batch's second pass
# (and once after the last), 3 calls a step, so call 8 is step 3 between its micro-batches.
KILLED_BETWEEN_MICRO_BATCHES = """
import os, runpy, signal, sys
from rils_mm.models.utils import grad_cache
original, calls = grad_cache._set_rng_state, []
def set_rng_state(*args):
    calls.append(None)
    if len(calls) == 8:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args)
grad_cache._set_rng_state = set_rng_state
sys.argv = ['tools/train.py', *sys.argv[1:]]
sys.path.insert(0, 'tools')  # as `python tools/train.py` has it
runpy.run_path('tools/train.py', run_name='__main__')
"""


def test_a_kill_between_micro_batches_redoes_the_step_whole(tmp_path):
    import torch
    every_step = ['default_hooks.checkpoint.by_epoch=False', 'default_hooks.checkpoint.interval=1',
                  'default_hooks.checkpoint.max_keep_ckpts=4']
    reference = train(tmp_path / 'reference', *options(tmp_path, 2, *every_step))
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed_dir = tmp_path / 'killed'
    killed = run_python(
        [sys.executable, '-c', KILLED_BETWEEN_MICRO_BATCHES, DEMO, '--work-dir', str(killed_dir),
         '--no-validate', *options(tmp_path, 2, *every_step)],
        cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED='1'), capture_output=True, text=True,
        timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(p.name for p in killed_dir.glob('iter_*.pth')) == ['iter_1.pth', 'iter_2.pth']

    resumed = train(killed_dir, '--resume', *options(tmp_path, 2, *every_step))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The resumed run logs step 3 and 4 again: the half-done step 3 is redone from the start.
    assert [r['iter'] for r in logged_runs(killed_dir)[-1]] == [3, 4]
    final = torch.load(killed_dir / 'iter_4.pth', map_location='cpu', weights_only=False)
    expected = torch.load(tmp_path / 'reference' / 'iter_4.pth', map_location='cpu',
                          weights_only=False)
    assert final['state_dict'].keys() == expected['state_dict'].keys()
    for key, value in expected['state_dict'].items():
        assert torch.equal(final['state_dict'][key], value), key


def logged_runs(work_dir):
    """The logged training iterations of each run (timestamp folder) in ``work_dir``."""
    runs = []
    for path in sorted(work_dir.glob('*/vis_data/scalars.json')):
        with open(path) as file:
            runs.append([json.loads(line) for line in file if '"loss"' in line])
    return runs
