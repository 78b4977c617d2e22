"""tools/analysis_tools/plot_curves.py: curves from mmengine's scalars.json of one or more runs,
and the comparison's training-curves chart."""
import json
import os
import os.path as osp
import sys

import pytest
from PIL import Image

from rils_mm.tools.plot_curves import (CurvesError, curve, find_scalars_file, plot_curves,
                                       read_scalars, run_name)
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def write_run(work_dir, timestamp, losses, epochs_of=None, extra=None, val=None):
    """A scalars.json as mmengine's LocalVisBackend writes it (LoggerHook every iteration;
    validation metrics by epoch, whose ``step`` is the epoch)."""
    folder = osp.join(work_dir, timestamp, 'vis_data')
    os.makedirs(folder, exist_ok=True)
    with open(osp.join(folder, 'scalars.json'), 'w') as f:
        for i, loss in enumerate(losses, 1):
            record = dict(lr=1e-3 * i, data_time=0.01, loss=loss, time=0.2,
                          epoch=epochs_of(i) if epochs_of else 1, iter=i, memory=0, step=i)
            record.update((extra or {}).get(i, {}))
            f.write(json.dumps(record) + '\n')
            if val and i in val:
                f.write(json.dumps(dict(val[i], data_time=0.0, time=0.1)) + '\n')
    return osp.join(folder, 'scalars.json')


def test_finds_the_newest_log_of_a_work_dir(tmp_path):
    work = str(tmp_path / 'rils_demo')
    write_run(work, '20260101_120000', [3.0, 2.0])
    newest = write_run(work, '20260102_080000', [1.0])
    assert find_scalars_file(work) == newest
    assert find_scalars_file(osp.dirname(osp.dirname(newest))) == newest  # timestamp folder
    assert find_scalars_file(newest) == newest
    assert run_name(work) == run_name(newest) == 'rils_demo'
    with pytest.raises(CurvesError, match='no such file or run directory: .*nowhere'):
        find_scalars_file(str(tmp_path / 'nowhere'))
    with pytest.raises(CurvesError, match='no scalar log in .*expected .*/<timestamp>/vis_data'):
        find_scalars_file(str(tmp_path))


def test_curves_are_against_the_iteration(tmp_path):
    # 2 epochs of 3 iterations; accuracy validated after each epoch (step = epoch).
    path = write_run(str(tmp_path / 'run'), '20260101_000000', [5, 4, 3, 2.5, 2, 1.5],
                     epochs_of=lambda i: (i - 1) // 3 + 1,
                     extra={4: {'loss_contrastive': 1.25}},
                     val={3: {'accuracy/top1': 40.0, 'step': 1},
                          6: {'accuracy/top1': 55.0, 'step': 2}})
    records = read_scalars(path)
    assert curve(records, 'loss') == ([1, 2, 3, 4, 5, 6], [5, 4, 3, 2.5, 2, 1.5])
    assert curve(records, 'loss_contrastive') == ([4], [1.25])
    # Validation entries sit at the last iteration of their epoch.
    assert curve(records, 'accuracy/top1') == ([3, 6], [40.0, 55.0])
    bad = tmp_path / 'bad.json'
    bad.write_text('{"loss": 1, "step": 1}\nnot json\n')
    with pytest.raises(CurvesError, match=r'bad.json:2: not a JSON line'):
        read_scalars(str(bad))


def test_one_png_of_fixed_size_with_every_run(tmp_path):
    rils = str(tmp_path / 'rils')
    clip = str(tmp_path / 'clip')
    write_run(rils, '20260101_000000', [3, 2, 1], extra={i: {'loss_recon': 0.5 / i}
                                                         for i in (1, 2, 3)})
    write_run(clip, '20260101_000000', [4, 3, 2])
    for keys in (['loss'], ['loss', 'lr', 'loss_recon']):
        out = str(tmp_path / f'curves{len(keys)}.png')
        # loss_recon is RILS's only: CLIP's line is left out of that panel.
        assert plot_curves([rils, clip], keys, ['RILS', 'CLIP'], out) == out
        assert Image.open(out).size == (1000, 600)


@pytest.mark.parametrize('kwargs,message', [
    (dict(keys=['loss', 'los']),
     'key "los" is not logged in {file}; logged keys: data_time, loss, lr, memory, time'),
    (dict(legend=['a', 'b']), '--legend has 2 names for 1 runs'),
])
def test_one_line_errors(tmp_path, kwargs, message):
    run = str(tmp_path / 'run')
    file = write_run(run, '20260101_000000', [1.0, 0.5])
    with pytest.raises(CurvesError) as err:
        plot_curves([run], **dict(dict(out=str(tmp_path / 'x.png')), **kwargs))
    assert str(err.value) == message.format(file=file)
    assert not osp.exists(tmp_path / 'x.png')


def test_tool_writes_the_chart_or_says_what_is_wrong(tmp_path):
    run = str(tmp_path / 'mae')
    write_run(run, '20260101_000000', [1.0, 0.5])
    out = str(tmp_path / 'curves.png')
    ok = run_python([sys.executable, 'tools/analysis_tools/plot_curves.py', run, '--keys',
                         'loss', 'lr', '--out', out], cwd=REPO, capture_output=True, text=True,
                    timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert Image.open(out).size == (1000, 600)
    bad = run_python([sys.executable, 'tools/analysis_tools/plot_curves.py', run, '--keys',
                          'i2t_acc'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        'tools/analysis_tools/plot_curves.py: error: key "i2t_acc" is not logged in '
        f'{run}/20260101_000000/vis_data/scalars.json; logged keys: data_time, loss, lr, '
        'memory, time']


def test_comparison_draws_the_training_curves(tmp_path):
    """tools/compare.py's curves.png: each method's first seed (a chain's last stage), the
    keys that some method logged; methods without a log are left out."""
    from rils_mm.tools.compare import method_run_dir, plot_training_curves
    work = str(tmp_path / 'compare')
    write_run(method_run_dir(work, 'RILS', 0), '20260101_000000', [3, 2],
              extra={1: {'loss_contrastive': 2.0}, 2: {'loss_contrastive': 1.5}})
    write_run(osp.join(method_run_dir(work, 'MIM->CLIP', 0), 'clip'), '20260101_000000', [4, 3])
    write_run(method_run_dir(work, 'MAE', 0), '20260101_000000', [1, 0.5])
    out = str(tmp_path / 'curves.png')
    drawn = plot_training_curves(work, ['RILS', 'MIM->CLIP', 'MAE', 'CLIP'], 0, out)
    assert drawn == ['RILS', 'MIM->CLIP', 'MAE']  # CLIP has not run
    assert Image.open(out).size == (1000, 600)
    assert plot_training_curves(str(tmp_path / 'empty'), ['RILS'], 0, out) == []
