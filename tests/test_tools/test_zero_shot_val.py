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

from rils_mm.tools.plot_curves import curve, find_scalars_file, plot_curves, read_scalars
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
METRIC = r'accuracy/top1: ([\d.]+)\s+accuracy/top5: ([\d.]+)'


def run_tool(*args):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    result = run_python([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
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


def class_options(prefix, root):
    """The demo data's class names and templates for a zero-shot section at ``prefix``."""
    return [f'{prefix}.classnames={root}/classnames.txt', f'{prefix}.templates={root}/templates.txt']


def val_options(root):
    """Validation on the held-out split at 32 px, with the demo data's classes."""
    return [*eval_options('val_dataloader', root), *class_options('model.zero_shot', root)]


def figures_of_test_tool(checkpoint, work_dir, root):
    """(top-1, top-5) that ``tools/test.py`` with the demo's zero-shot config gives on
    ``checkpoint`` (the tiny model, the held-out split), in a new process."""
    out = run_tool('tools/test.py', 'configs/rils/demo_cpu_zeroshot.py', str(checkpoint),
                   '--work-dir', str(work_dir), '--cfg-options',
                   *['model.' + o for o in TINY_MODEL], *eval_options('test_dataloader', root),
                   *class_options('model', root))
    lines = [line for line in out.splitlines() if 'Epoch(test)' in line and 'top1' in line]
    assert lines, out[-3000:]
    return re.search(METRIC, lines[-1]).groups()


def state(path):
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


def test_validation_equals_test_tool_and_leaves_training_unchanged(tmp_path):
    root = str(tmp_path / 'shapes')
    train = tiny_run(64) + ['train_cfg.max_epochs=2', 'default_hooks.checkpoint.interval=1']
    train += data_options(root)
    val_dir, plain_dir = tmp_path / 'val', tmp_path / 'plain'
    run_tool('tools/train.py', 'configs/rils/demo_cpu_val.py', '--work-dir', str(val_dir),
             '--cfg-options', *train, *val_options(root))
    log = next(val_dir.glob('*/*.log')).read_text()
    val_lines = [line for line in log.splitlines() if 'Epoch(val)' in line and 'top1' in line]
    assert len(val_lines) == 2, log[-3000:]  # every epoch
    val_figures = re.search(METRIC, val_lines[-1]).groups()

    # plot_curves draws the zero-shot curve from the run folder: one point per validation,
    # at the last iteration of its epoch (4 iterations of 16 pairs per epoch).
    run = next(val_dir.glob('2*'))
    iterations, top1 = curve(read_scalars(find_scalars_file(str(val_dir))), 'accuracy/top1')
    assert iterations == [4, 8]
    assert [f'{value:.4f}' for value in top1] == [re.search(METRIC, line).group(1)
                                                  for line in val_lines]
    picture = plot_curves([str(run)], ['loss', 'accuracy/top1'], out=str(tmp_path / 'c.png'))
    assert osp.getsize(picture) > 10_000

    # The same figures from the test tool, in a new process, on the last checkpoint.
    assert figures_of_test_tool(val_dir / 'epoch_2.pth', tmp_path / 'test', root) == val_figures

    # The best zero-shot top-1 checkpoint is kept beside the latest, and a resumed run
    # (one more epoch) keeps the best-so-far record: one best file, of the best epoch.
    assert list(val_dir.glob('best_accuracy_top1_epoch_*.pth')), sorted(os.listdir(val_dir))
    run_tool('tools/train.py', 'configs/rils/demo_cpu_val.py', '--work-dir', str(val_dir),
             '--resume', str(val_dir / 'epoch_2.pth'), '--cfg-options', *train,
             'train_cfg.max_epochs=3', *val_options(root))
    top1 = [float(re.search(METRIC, line).group(1))
            for path in sorted(val_dir.glob('*/*.log')) for line in path.read_text().splitlines()
            if 'Epoch(val)' in line and 'top1' in line]
    assert len(top1) == 3, top1
    best_epoch = top1.index(max(top1)) + 1
    assert [p.name for p in val_dir.glob('best_*.pth')] == [
        f'best_accuracy_top1_epoch_{best_epoch}.pth'], (top1, sorted(os.listdir(val_dir)))
    record = torch.load(val_dir / 'epoch_3.pth', map_location='cpu', weights_only=False)
    # (epoch_3.pth predates epoch 3's validation; the log rounds to 4 decimals)
    assert abs(record['message_hub']['runtime_info']['best_score'] - max(top1[:2])) < 1e-3

    # Validating every epoch does not change training: bitwise equal weights.
    run_tool('tools/train.py', 'configs/rils/demo_cpu.py', '--work-dir', str(plain_dir),
             '--cfg-options', *train)
    validated, plain = state(val_dir / 'epoch_2.pth'), state(plain_dir / 'epoch_2.pth')
    assert validated.keys() == plain.keys()
    for key in plain:
        assert torch.equal(validated[key], plain[key]), key


def test_resume_takes_the_best_record_from_the_best_checkpoint(tmp_path):
    """epoch_N.pth is saved before epoch N's validation: its best_score lags; the best file's
    record (here epoch 2's 50.0 against the resumed 20.0) is the one resuming keeps."""
    from mmengine.hooks import CheckpointHook
    from mmengine.logging import MessageHub, MMLogger

    import rils_mm.compat  # noqa: F401  (installs the patches)
    best = tmp_path / 'best_accuracy_top1_epoch_2.pth'
    torch.save(dict(message_hub=dict(runtime_info=dict(best_score=50.0))), best)
    hub = MessageHub.get_instance('test_best_record')
    hub.update_info('best_score', 20.0)
    hub.update_info('best_ckpt', str(tmp_path / 'best_accuracy_top1_epoch_1.pth'))

    class Runner:
        _resume = True
        work_dir = str(tmp_path)
        message_hub = hub
        logger = MMLogger.get_current_instance()

    hook = CheckpointHook(interval=1, save_best='accuracy/top1', rule='greater')
    hook.after_load_checkpoint(Runner(), {})
    assert hub.get_info('best_score') == 50.0
    assert hub.get_info('best_ckpt') == str(best)
    hook.before_train(Runner())  # mmengine's hook reads the record here
    assert hook.best_ckpt_path == str(best)
    # A worse best file (or a load_from, not a resume) leaves the record alone.
    hub.update_info('best_score', 60.0)
    hook.after_load_checkpoint(Runner(), {})
    assert hub.get_info('best_score') == 60.0


def test_two_process_validation_equals_the_test_tool(tmp_path):
    """Under DDP each rank scores a share of the 45 held-out images (the default sampler pads
    the last share); the gathered figures are those of one test.py process."""
    root, work = str(tmp_path / 'shapes'), tmp_path / 'ddp'
    options = tiny_run(64) + data_options(root) + val_options(root)
    options = [o.replace('num_heldout=48', 'num_heldout=45') for o in options]
    env = dict(os.environ, PORT=str(29600 + os.getpid() % 1000), PYTHON=sys.executable)
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', 'configs/rils/demo_cpu_val.py', '2', '--work-dir',
         str(work), '--cfg-options', *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    log = next(work.glob('*/*.log')).read_text()
    val = [line for line in log.splitlines() if 'Epoch(val)' in line and 'top1' in line]
    assert len(val) == 1, log[-3000:]
    assert figures_of_test_tool(work / 'epoch_1.pth', tmp_path / 'test', root) == re.search(
        METRIC, val[-1]).groups()


def test_missing_validation_data_is_one_line_before_training(tmp_path):
    root = str(tmp_path / 'shapes')
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    result = run_python(
        [sys.executable, 'tools/train.py', 'configs/rils/demo_cpu_val.py', '--work-dir',
         str(tmp_path / 'work'), '--cfg-options', *tiny_run(64), *data_options(root),
         *val_options(str(tmp_path / 'no_such_folder'))],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if 'error:' in line]
    assert len(errors) == 1 and 'no_such_folder/heldout.jsonl does not exist' in errors[0]
    assert 'Traceback' not in result.stderr
    assert 'Epoch(train)' not in result.stdout + result.stderr  # at start, not after an epoch
