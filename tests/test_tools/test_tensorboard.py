"""TensorBoard through mmengine's vis backends: the one-line switch of tools/train.py writes
event files whose scalars are the ones in scalars.json."""
import glob
import json
import os
import os.path as osp
import sys

import pytest
from tiny_demo import tiny_data, tiny_run
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, 'configs', 'rils', 'demo_cpu.py')
# The demo RILS shrunk to seconds (as tests/test_tools/test_cli.py): 2 iterations of 16 pairs.
TINY = tiny_run(32) + tiny_data(64)
SWITCH = 'visualizer.vis_backends=[LocalVisBackend,TensorboardVisBackend]'


def test_switch_names_become_backend_dicts():
    from rils_mm.tools.cli import expand_vis_backend_names
    assert expand_vis_backend_names({'visualizer.vis_backends': ['LocalVisBackend',
                                                                 'TensorboardVisBackend'],
                                     'a': 1}) == {
        'visualizer.vis_backends': [dict(type='LocalVisBackend'),
                                    dict(type='TensorboardVisBackend')], 'a': 1}
    assert expand_vis_backend_names({'visualizer.vis_backends': 'WandbVisBackend'}) == {
        'visualizer.vis_backends': [dict(type='WandbVisBackend')]}
    unchanged = {'visualizer.vis_backends.0.type': 'LocalVisBackend'}
    assert expand_vis_backend_names(unchanged) == unchanged


def test_tensorboard_event_file_holds_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    work = str(tmp_path / 'work')
    result = run_python(
        [sys.executable, 'tools/train.py', DEMO, '--work-dir', work, '--cfg-options', *TINY,
         f'train_dataloader.dataset.data_root={tmp_path}/shapes', SWITCH],
        cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED='1'), capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    (vis_data, ) = glob.glob(osp.join(work, '*', 'vis_data'))
    (event_file, ) = glob.glob(osp.join(vis_data, 'events.out.tfevents.*'))
    with open(osp.join(vis_data, 'scalars.json')) as f:
        logged = [json.loads(line) for line in f if line.strip()]
    assert [r['step'] for r in logged] == [1, 2]

    events = EventAccumulator(event_file)
    events.Reload()
    for key in ('loss', 'loss_contrastive', 'loss_reconstruction', 'i2t_acc', 'recon_kept',
                'logit_scale', 'lr'):
        assert key in events.Tags()['scalars'], (key, events.Tags()['scalars'])
        written = events.Scalars(key)
        assert [e.step for e in written] == [1, 2], key
        # TensorBoard stores float32.
        assert [e.value for e in written] == pytest.approx(
            [r[key] for r in logged], rel=1e-6, abs=1e-12), key

    # The same run's local log draws as curves.
    from PIL import Image

    from rils_mm.tools.plot_curves import plot_curves
    out = plot_curves([work], ['loss', 'loss_contrastive', 'lr'], out=str(tmp_path / 'c.png'))
    assert Image.open(out).size == (1000, 600)
