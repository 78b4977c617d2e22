"""A readable console: ``init_weights`` reports one line (the per-parameter detail goes to the
log file), and long jobs report progress as a bar on a terminal, plain lines otherwise."""
import glob
import inspect
import io
import os
import os.path as osp
import re
import sys
import uuid

import pytest
from mmengine.config import Config
from mmengine.logging import MMLogger

from rils_mm.compat import install_tool_conveniences
from rils_mm.utils.progress import Progress, track
from tiny_demo import tiny_data, tiny_run
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = 'configs/rils/demo_cpu.py'
DETAIL = 'The value is the same before and after'
# A demo run of two iterations of a tiny model (the test_cli.py settings, 32 pairs).
TINY_RUN = tiny_run(32) + tiny_data(32)


# --- init_weights -------------------------------------------------------------------------------
def test_training_console_has_the_summary_and_the_log_file_the_detail(tmp_path):
    work_dir = tmp_path / 'work'
    result = run_python(
        [sys.executable, 'tools/train.py', DEMO, '--work-dir', str(work_dir), '--no-validate',
         '--cfg-options', *TINY_RUN,
         f'train_dataloader.dataset.data_root={tmp_path / "shapes"}'],
        cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED='1'), capture_output=True, text=True,
        timeout=600)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-4000:]
    assert DETAIL not in console and 'Initialized by' not in console
    assert 'paramwise_options -- ' not in console
    summaries = [line for line in console.splitlines()
                 if 'init_weights: ' in line or 'paramwise_options: ' in line]
    assert len(summaries) == 2, console[-4000:]
    paramwise, init = summaries  # the optimizer is built before init_weights runs
    assert re.search(r'paramwise_options: \d+ parameters with their own settings '
                     r'\(weight_decay \d+', paramwise)
    assert 'parameters of RILS initialised' in init
    logs = list(work_dir.glob('*/*.log'))
    assert len(logs) == 1
    assert all(f'per-parameter detail in {logs[0]}' in line for line in summaries)
    log = logs[0].read_text()
    assert log.count(DETAIL) > 10 and 'init_weights: ' in log
    assert log.count('paramwise_options -- ') > 10 and 'paramwise_options: ' in log


def test_model_built_outside_a_runner_prints_one_line(capfd):
    # A logger without a log file, as in a tool that builds a model itself (after the tools'
    # install_tool_conveniences; importing rils_mm alone leaves mmengine's report).
    install_tool_conveniences()
    logger = MMLogger.get_instance(f'console-{uuid.uuid4().hex}')
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, DEMO))
    capfd.readouterr()
    model = MODELS.build(cfg.model)
    model.init_weights()
    out, err = capfd.readouterr()
    lines = (out + err).strip().splitlines()
    assert len(lines) <= 3, lines[:10]
    summary = [line for line in lines if 'init_weights: ' in line]
    assert len(summary) == 1 and "per-parameter detail at log_level='DEBUG'" in summary[0]
    count = sum(1 for _ in model.parameters())
    assert f'{count} parameters of {type(model).__name__} initialised' in summary[0]
    assert 'unchanged' in summary[0]
    assert DETAIL not in out + err
    # At DEBUG the detail is there, one line per parameter.
    logger.setLevel('DEBUG')
    for handler in logger.handlers:
        handler.setLevel('DEBUG')
    try:
        MODELS.build(cfg.model).init_weights()
    finally:
        logger.setLevel('INFO')
    out, err = capfd.readouterr()
    assert len(re.findall(r'DEBUG - [\w.]+ - \([\d, ]*\): \S', out + err)) == count


# --- which tools apply the console fixes ---------------------------------------------------------
# Tools that run no rils_mm code of their own: their children are tools that apply the fixes.
RUN_OTHER_TOOLS = {
    'tools/analysis_tools/repeat_dist_train.py': 'runs tools/dist_train.sh (train.py: run_cli)',
    # Its logger shows warnings only (no init_weights report), and it formats no config.
    'tools/benchmark_train.py': 'logs at WARNING',
    # No torch, no logger, no config printed: they parse configs / json and print a table or a
    # line (importing rils_mm for the fixes would cost them their second).
    'tools/analysis_tools/compare_recipes.py': 'parses configs, prints a table',
    'tools/dataset_converters/coco_subset.py': 'json in, json out',
}


def test_every_tool_applies_the_console_fixes():
    """Importing rils_mm leaves mmengine's reports alone (tests/test_compat.py); every
    command-line tool applies them, directly or through run_cli or the converters' run."""
    from rils_mm.tools import model_converters
    from rils_mm.tools.cli import run_cli
    for helper in (run_cli, model_converters.run):
        assert 'install_tool_conveniences()' in inspect.getsource(helper), helper.__qualname__
    entries = {'run_cli(', 'install_tool_conveniences()', '_cli.run(',  # _cli.run: run_cli
               'run(open_clip_to_rils_main)', 'run(rils_to_toolbox_main)', 'run(publish_model_main)'}
    with open(osp.join(REPO, 'tools/visualization/_cli.py')) as file:
        assert 'run_cli(' in file.read()
    tools = [path for path in glob.glob(osp.join(REPO, 'tools', '**', '*.py'), recursive=True)
             if not path.endswith('_cli.py')]
    assert len(tools) > 20
    missing = []
    for path in tools:
        with open(path) as file:
            source = file.read()
        name = osp.relpath(path, REPO)
        if ("__name__ == '__main__'" in source and name not in RUN_OTHER_TOOLS
                and not any(entry in source for entry in entries)):
            missing.append(name)
    assert missing == []


# --- progress -----------------------------------------------------------------------------------
class _Tty(io.StringIO):

    def isatty(self):
        return True


def test_progress_prints_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    for _ in track(range(50), 'job', 'sample', stream=stream, min_interval=0):
        pass
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # one per tenth
    assert lines[0].startswith('job: 5/50 samples (10 %), 0 s')
    assert lines[-1].startswith('job: 50/50 samples (100 %)')
    assert '\r' not in stream.getvalue()


def test_progress_is_quiet_for_short_jobs_and_other_ranks():
    stream = io.StringIO()
    for _ in track(range(50), 'job', stream=stream):  # well within min_interval
        pass
    with Progress(10, 'job', stream=stream, min_interval=0, enabled=False) as progress:
        progress.update(10)
    assert stream.getvalue() == ''


def test_progress_with_an_unknown_total_and_a_resumed_job():
    stream = io.StringIO()
    with Progress(None, 'cache', 'sample', stream=stream, min_interval=0,
                  max_interval=0) as progress:
        progress.update(3)
    assert stream.getvalue().splitlines()[0].startswith('cache: 3 samples, 0 s')
    resumed = Progress(100, 'cache', 'sample', initial=40, stream=io.StringIO(),
                       min_interval=0)
    resumed.update(10)  # the first line comes at 50 %, not at once
    lines = resumed.stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith('cache: 50/100 samples (50 %), 0 s, about')


def test_progress_draws_a_bar_on_a_terminal():
    pytest.importorskip('tqdm')
    stream = _Tty()
    with Progress(4, 'job', 'class', stream=stream, min_interval=0) as progress:
        progress.update(4)
    assert '4/4' in stream.getvalue() and '\r' in stream.getvalue()
