"""Zero-shot validation during pretraining (``model.zero_shot`` + mmengine's ValLoop).

Two ``tools/train.py`` processes on the same tiny demo data, one validating every epoch
(``configs/rils/demo_cpu_val.py``) and one not (``demo_cpu.py``), and ``tools/test.py`` with
``demo_cpu_zeroshot.py`` on the validating run's last checkpoint: the validation figures equal
the test tool's, the best checkpoint is kept, and validating leaves the weights bitwise equal.
"""
import os
import os.path as osp
import re
import subprocess
import sys

import torch
from tiny_demo import TINY_MODEL, tiny_run

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
METRIC = r'accuracy/top1: ([\d.]+)\s+accuracy/top5: ([\d.]+)'


def run_tool(*args):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


def data_options(root):
    return [f'train_dataloader.dataset.data_root={root}',
            'train_dataloader.dataset.generate_cfg.num_train=64',
            'train_dataloader.dataset.generate_cfg.num_val=8',
            'train_dataloader.dataset.generate_cfg.num_heldout=48',
            'train_dataloader.dataset.generate_cfg.image_size=32',
            'train_dataloader.dataset.pipeline.1.scale=32']


def eval_options(prefix, root):
    """The held-out split at 32 px for ``val_dataloader`` or ``test_dataloader``."""
    return [f'{prefix}.num_workers=0', f'{prefix}.batch_size=16',
            f'{prefix}.dataset.ann_file={root}/heldout.jsonl',
            f'{prefix}.dataset.data_prefix.img_path={root}/heldout',
            f'{prefix}.dataset.pipeline.1.scale=32', f'{prefix}.dataset.pipeline.2.crop_size=32']


def state(path):
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


def test_validation_equals_test_tool_and_leaves_training_unchanged(tmp_path):
    root = str(tmp_path / 'shapes')
    train = tiny_run(64) + ['train_cfg.max_epochs=2', 'default_hooks.checkpoint.interval=1']
    train += data_options(root)
    val_dir, plain_dir = tmp_path / 'val', tmp_path / 'plain'
    run_tool('tools/train.py', 'configs/rils/demo_cpu_val.py', '--work-dir', str(val_dir),
             '--cfg-options', *train, *eval_options('val_dataloader', root),
             f'model.zero_shot.classnames={root}/classnames.txt',
             f'model.zero_shot.templates={root}/templates.txt')
    log = next(val_dir.glob('*/*.log')).read_text()
    val_lines = [line for line in log.splitlines() if 'Epoch(val)' in line and 'top1' in line]
    assert len(val_lines) == 2, log[-3000:]  # every epoch
    val_figures = re.search(METRIC, val_lines[-1]).groups()

    # The same figures from the test tool, in a new process, on the last checkpoint.
    out = run_tool('tools/test.py', 'configs/rils/demo_cpu_zeroshot.py',
                   str(val_dir / 'epoch_2.pth'), '--work-dir', str(tmp_path / 'test'),
                   '--cfg-options', *['model.' + o for o in TINY_MODEL],
                   *eval_options('test_dataloader', root),
                   f'model.classnames={root}/classnames.txt',
                   f'model.templates={root}/templates.txt')
    test_line = [line for line in out.splitlines() if 'Epoch(test)' in line and 'top1' in line]
    assert test_line, out[-3000:]
    assert re.search(METRIC, test_line[-1]).groups() == val_figures

    # The best zero-shot top-1 checkpoint is kept beside the latest.
    assert list(val_dir.glob('best_accuracy_top1_epoch_*.pth')), sorted(os.listdir(val_dir))

    # Validating every epoch does not change training: bitwise equal weights.
    run_tool('tools/train.py', 'configs/rils/demo_cpu.py', '--work-dir', str(plain_dir),
             '--cfg-options', *train)
    validated, plain = state(val_dir / 'epoch_2.pth'), state(plain_dir / 'epoch_2.pth')
    assert validated.keys() == plain.keys()
    for key in plain:
        assert torch.equal(validated[key], plain[key]), key
