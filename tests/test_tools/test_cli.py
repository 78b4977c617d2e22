"""tools/train.py, test.py and dist_train.sh as a user runs them."""
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
from tiny_demo import tiny_run
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, 'configs', 'rils', 'demo_cpu.py')
# A demo run shrunk to seconds: a tiny model, 256 generated pairs of 32 px, one epoch.
TINY = tiny_run(64)


def tiny_data(tmp_path):
    root = str(tmp_path / 'shapes')
    return [f'train_dataloader.dataset.data_root={root}',
            'train_dataloader.dataset.generate_cfg.num_train=64',
            'train_dataloader.dataset.generate_cfg.num_val=8',
            'train_dataloader.dataset.generate_cfg.num_heldout=8',
            'train_dataloader.dataset.generate_cfg.image_size=32',
            'train_dataloader.dataset.pipeline.1.scale=32']


def run_tool(*args, cwd=REPO, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    return run_python([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                      text=True, timeout=timeout)


@pytest.mark.parametrize('args,expected', [
    (['configs/rils/no_such_config.py'], 'config file not found: configs/rils/no_such_config.py'),
    ([DEMO, '--cfg-options', 'trian_cfg.max_epochs=1'], 'unknown key(s) trian_cfg'),
    ([DEMO, '--cfg-options', 'model.backbone.type=NoSuchViT'], 'NoSuchViT is not in the'),
    ([DEMO, '--cfg-options', 'model.backbone.mask_ratio=1.5'], 'mask_ratio must be in (0, 1)'),
    ([DEMO, '--cfg-options', 'model.neck.frobnicate=3'],
     "unexpected keyword argument 'frobnicate'"),
    ([DEMO, '--resume', 'missing.pth'], '--resume: checkpoint not found: missing.pth'),
    ([DEMO, '--cfg-options', 'train_dataloader.batch_size=1'],
     'train_dataloader.batch_size=1 with model.head.loss.filter_correct=True'),
])
def test_bad_command_lines_give_one_line_errors(args, expected, tmp_path):
    # A work dir of its own: the default one (work_dirs/demo_cpu) may hold a user's demo run,
    # which the tool would (rightly) refuse to train over first.
    result = run_tool('tools/train.py', *args, '--work-dir', str(tmp_path / 'work'))
    assert result.returncode == 2, result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines()
                   if line.startswith('tools/train.py: error:')]
    assert len(error_lines) == 1, result.stderr[-2000:]
    assert expected in error_lines[0]
    assert 'Traceback' not in result.stderr


def test_test_tool_reports_missing_checkpoint():
    result = run_tool('tools/test.py', 'configs/rils/demo_cpu_zeroshot.py', 'nope.pth')
    assert result.returncode == 2
    assert 'tools/test.py: error: checkpoint not found: nope.pth' in result.stderr


def test_dist_train_runs_two_gloo_processes(tmp_path):
    work_dir = tmp_path / 'work'
    env = dict(os.environ, PORT=str(29500 + os.getpid() % 1000), PYTHON=sys.executable)
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', DEMO, '2', '--work-dir', str(work_dir),
         '--cfg-options', *TINY, *tiny_data(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    logs = list(work_dir.glob('*/*.log'))
    assert logs, 'no log written'
    log = logs[0].read_text()
    assert re.search(r'Distributed training: True', log)
    assert re.search(r'GPU number: 2|world_size: 2|world size: 2', log, re.I), log[:3000]
    # 64 pairs per epoch, 16 per rank per step: 2 steps on each of the 2 ranks.
    assert 'Epoch(train) [1][2/2]' in log
    assert (work_dir / 'epoch_1.pth').is_file()
