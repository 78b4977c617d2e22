"""tools/benchmark_train.py as users run it: one table row per method with its measurements,
and its argument errors as one line with exit status 2."""
import importlib.util
import math
import os
import os.path as osp
import re
import sys

import pytest
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(REPO, 'tools', 'benchmark_train.py')
RATIO = re.compile(r'([0-9.]+) \(([0-9.]+)-([0-9.]+)\)')


def run_tool(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO)
    return run_python([sys.executable, TOOL, *args], cwd=REPO, env=env,
                      capture_output=True, text=True, timeout=timeout)


def table(stdout):
    """The markdown table's rows, by method, as dicts keyed by the header's columns."""
    lines = [line for line in stdout.splitlines() if line.startswith('|')]
    columns = [cell.strip() for cell in lines[0].strip('|').split('|')]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip('|').split('|')]
        assert len(cells) == len(columns), line
        rows[cells[0]] = dict(zip(columns, cells))
    return rows


def positive(text):
    value = float(text)
    assert math.isfinite(value) and value > 0, text
    return value


def test_tiny_run_has_a_row_per_method():
    methods = ['open_clip', 'clip', 'rils', 'lit_cached']
    result = run_tool('--tiny', '--rounds', '2', '--warmup', '1', '--batch-size', '4',
                      '--device', 'cpu', '--methods', ','.join(methods))
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r'^device cpu .*, float32, batch 4, 64 px, tiny towers, 2 rounds after 1 '
                     r'warm-up steps; matmul peak [0-9.e+]+ TFLOP/s', result.stdout, re.M), \
        result.stdout
    rows = table(result.stdout)
    assert list(rows) == methods, result.stdout
    for name, row in rows.items():
        for column in ('ms/step', 'images/s', 'GFLOPs/image'):
            positive(row[column])
        assert row['MFU'].endswith(' %') and positive(row['MFU'][:-2])
        params, trained = map(positive, re.fullmatch(r'(\S+) \((\S+)\)',
                                                     row['params M (trained)']).groups())
        assert trained <= params
        for column in ('time / open_clip', 'time / CLIP'):
            median, low, high = map(positive, RATIO.fullmatch(row[column]).groups())
            assert low <= median <= high, (name, column, row[column])
        assert row['peak GiB'] == '-'  # CPU
    assert rows['clip']['time / CLIP'] == '1.00 (1.00-1.00)'
    assert rows['open_clip']['time / open_clip'] == '1.00 (1.00-1.00)'
    # The cached LiT trains the text tower only (the image tower is locked and not run);
    # RILS adds a masked pass and a decoder to CLIP's step.
    cached = rows['lit_cached']
    assert positive(re.match(r'\S+ \((\S+)\)', cached['params M (trained)']).group(1)) < \
        positive(cached['params M (trained)'].split()[0])
    flops = {name: float(row['GFLOPs/image']) for name, row in rows.items()}
    assert flops['lit_cached'] < flops['clip'] < flops['rils']


def test_unknown_method_is_one_line_and_status_2():
    result = run_tool('--methods', 'clip,no_such_method')
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown method 'no_such_method'" in lines[0], result.stderr
    assert result.stdout == ''


@pytest.fixture
def tool():
    spec = importlib.util.spec_from_file_location('benchmark_train', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_config_is_one_line_and_status_2(tool, capsys):
    tool.METHODS['clip'] = 'clip/no_such_config.py'
    with pytest.raises(SystemExit) as exit_info:
        tool.main(['--methods', 'clip', '--device', 'cpu'])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ['benchmark_train.py: error: config file not found for clip: '
                     'configs/clip/no_such_config.py']


def test_optional_method_without_its_config_is_skipped_unless_asked_for(tool):
    tool.METHODS['rils_flip'] = 'rils/no_such_config.py'
    methods, notes = tool.select_methods(tool.parse_args([]))
    assert 'rils_flip' not in methods and methods[:3] == ['open_clip', 'clip', 'rils']
    assert notes == ['note: rils_flip skipped: configs/rils/no_such_config.py does not exist '
                     'yet']
    with pytest.raises(SystemExit) as exit_info:
        tool.select_methods(tool.parse_args(['--methods', 'clip,rils_flip']))
    assert exit_info.value.code == 2


def test_fp16_needs_cuda(tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool.main(['--methods', 'clip', '--device', 'cpu', '--amp', 'fp16'])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        'benchmark_train.py: error: --amp fp16 needs CUDA (use --amp bf16 on the CPU)']


def test_accumulate_adds_a_table_of_accumulated_steps_against_k1():
    """--accumulate 2: each of our methods also takes steps of 2 micro-batches of the batch
    size; the second table gives their time per pair against the plain step's, and their
    FLOPs per pair count the pass without gradient too (more than the plain step's)."""
    result = run_tool('--tiny', '--rounds', '2', '--warmup', '1', '--batch-size', '4',
                      '--device', 'cpu', '--methods', 'open_clip,clip,rils',
                      '--accumulate', '2')
    assert result.returncode == 0, result.stderr[-3000:]
    main, _, accumulated = result.stdout.partition('Accumulated steps (model.accumulation)')
    assert list(table(main)) == ['open_clip', 'clip', 'rils']
    rows = table(accumulated)
    assert list(rows) == ['clip', 'rils'], result.stdout  # open_clip has no accumulation
    plain = table(main)
    for name, row in rows.items():
        assert row['K'] == '2' and row['pairs/step'] == '8'
        for column in ('ms/step', 'ms/pair'):
            positive(row[column])
        median, low, high = map(positive, RATIO.fullmatch(row['time per pair / K=1']).groups())
        assert low <= median <= high
        # A second forward pass: more than the plain step's FLOPs, less than twice.
        ratio = positive(row['GFLOPs/pair']) / positive(plain[name]['GFLOPs/image'])
        assert 1.1 < ratio < 2, (name, ratio)


def test_accumulate_below_one_is_one_line():
    result = run_tool('--accumulate', '0', '--methods', 'clip')
    assert result.returncode == 2
    assert result.stderr.strip() == 'benchmark_train.py: error: --accumulate must be at ' \
        'least 1, got 0', result.stderr
