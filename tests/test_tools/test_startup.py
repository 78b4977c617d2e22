"""``tools/train.py`` and ``tools/test.py`` answer ``--help``, option mistakes and config syntax
errors before torch and the OpenMMLab stack load (``tools/_early.py``,
``rils_mm/tools/arguments.py``): checked with ``python -X importtime``, which lists every
module a process imports."""
import os
import os.path as osp
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HEAVY = ('torch', 'rils_mm', 'mmpretrain', 'mmcv', 'open_clip')


def run(*args):
    return subprocess.run([sys.executable, '-X', 'importtime', *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=REPO))


def imported(stderr):
    """Top-level names of the modules the process imported (from ``-X importtime``)."""
    return {line.split('|')[-1].strip().split('.')[0] for line in stderr.splitlines()
            if line.startswith('import time:') and '|' in line}


@pytest.mark.parametrize('tool', ['tools/train.py', 'tools/test.py'])
def test_help_loads_no_torch(tool):
    result = run(tool, '--help')
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f'usage: {tool} ')
    assert '--cfg-options' in result.stdout and '--launcher' in result.stdout
    assert not imported(result.stderr) & set(HEAVY), imported(result.stderr) & set(HEAVY)


def test_config_mistakes_are_one_line_before_torch_loads(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text("_base_ = ['./base.py']\n")
    (tmp_path / 'base.py').write_text('model = dict(type="RILS",\n')
    cases = [
        (('tools/train.py', str(tmp_path / 'none.py')),
         f'tools/train.py: error: config file not found: {tmp_path}/none.py'),
        (('tools/test.py', str(bad)),
         f"tools/test.py: error: syntax error in config {tmp_path}/base.py, line 1: '(' was "
         "never closed: model = dict(type=\"RILS\","),
    ]
    for args, line in cases:
        result = run(*args)
        assert result.returncode == 2, result.stderr[-2000:]
        errors = [text for text in result.stderr.splitlines() if not text.startswith('import')]
        assert errors == [line]
        assert not imported(result.stderr) & set(HEAVY)
    # An unknown option: argparse's usage and error, exit 2, before torch too.
    result = run('tools/train.py', 'configs/rils/demo_cpu.py', '--bogus')
    assert result.returncode == 2
    assert 'tools/train.py: error: unrecognized arguments: --bogus' in result.stderr
    assert not imported(result.stderr) & set(HEAVY)
