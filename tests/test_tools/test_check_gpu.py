"""tools/check_gpu.sh as a person with a GPU runs it, here on the CPU with tiny towers: one
table with a row per check, the step-time table, a JSON report, and exit status 1 with the
FAIL row named when a check fails."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
WRAPPER = osp.join(REPO, 'tools', 'check_gpu.sh')


def run_check(*args, timeout=300):
    # No GPU, also where the suite runs on a GPU machine: the CPU path is what is tested.
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES='')
    return subprocess.run(['bash', WRAPPER, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def rows(stdout):
    """The first markdown table's rows as (check, config, result, figures)."""
    table = stdout.split('\n\n')[1]
    lines = table.splitlines()
    assert lines[0] == '| check | config | result | figures | s |', stdout
    found = []
    for line in lines[2:]:
        check, config, result, figures, seconds = [c.strip() for c in line.strip('|')
                                                   .split(' | ')]
        assert float(seconds) >= 0
        found.append((check, config, result, figures))
    return found


def differences(figures):
    """The relative loss and largest gradient differences of a ddp or accum row."""
    loss = float(re.search(r'loss \S+, rel. difference (\S+);', figures).group(1))
    grads = float(re.search(r'largest rel. difference (\S+) ', figures).group(1))
    return loss, grads


def test_the_wrapper_is_valid_bash():
    assert subprocess.run(['bash', '-n', WRAPPER]).returncode == 0


def test_tiny_cpu_run_passes_the_checks(tmp_path):
    """amp, ddp, accum and bench (fsdp: the next test)."""
    report = tmp_path / 'report.json'
    result = run_check('--tiny', '--device', 'cpu', '--only', 'amp,ddp,accum,bench',
                       '--configs', 'clip/pretrain_b16.py', '--out', str(report))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert result.stdout.startswith('device cpu ('), result.stdout
    found = rows(result.stdout)
    assert [(check, config) for check, config, _, _ in found] == [
        ('amp bfloat16', 'configs/clip/pretrain_b16.py'),
        ('amp float16', 'configs/clip/pretrain_b16.py'),
        ('ddp', 'configs/clip/pretrain_b16.py'),
        ('ddp', 'configs/rils/pretrain_b16.py'),
        ('accum', 'configs/clip/pretrain_b16.py'),
        ('accum', 'configs/rils/pretrain_b16.py'),
        ('bench', 'tools/benchmark_train.py --tiny --batch-size 4 --rounds 1 --warmup 1 '
                  '--methods clip,rils --amp bf16 --device cpu'),
    ], result.stdout
    assert all(res == 'PASS' for _, _, res, _ in found), result.stdout
    by_check = {(check, config.split('/')[1] if check in ('ddp', 'accum') else ''): figures
                for check, config, _, figures in found}
    for dtype in ('bfloat16', 'float16'):
        first, last = map(float, re.match(r'loss (\S+) -> (\S+) in 20 it \(batch 8, 64 px\)$',
                                          by_check[f'amp {dtype}', '']).groups())
        assert last < first
    for check in ('ddp', 'accum'):
        for method in ('clip', 'rils'):
            figures = by_check[check, method]
            assert figures.endswith('tolerance 0.0001'), figures
            assert max(differences(figures)) <= 1e-4
    assert by_check['ddp', 'rils'].startswith('2 x 8 pairs (gloo) vs 1 process: ')
    assert by_check['accum', 'rils'].startswith('K=4 x 8 pairs vs 32: ')
    # The step-time table follows, with a row per method and its MFU.
    assert re.search(r'^\| rils \| configs/rils/pretrain_b16.py \| .* \| [0-9.e+-]+ % \|$',
                     result.stdout, re.M), result.stdout
    assert result.stdout.rstrip().endswith('7 of 7 rows passed')
    saved = json.loads(report.read_text())
    assert [(r['check'], r['config'], r['result'], r['figures']) for r in saved['rows']] == found
    assert saved['failed'] == 0 and '| clip | configs/clip/pretrain_b16.py |' in \
        saved['bench_table']


def test_a_failing_row_fails_the_run(tmp_path):
    """Zero image std makes every input infinite: the amp rows fail on a non-finite loss, the
    fsdp row (tools/check_sharded_gpu.sh, 2 gloo processes, tiny RILS) still runs and passes,
    and the exit status is 1."""
    result = run_check('--tiny', '--device', 'cpu', '--only', 'amp,fsdp', '--configs',
                       'clip/pretrain_b16.py', '--cfg-options',
                       'model.data_preprocessor.std=[0,0,0]')
    assert result.returncode == 1, (result.stdout + result.stderr)[-4000:]
    found = rows(result.stdout)
    assert [(check, res) for check, _, res, _ in found] == [
        ('amp bfloat16', 'FAIL'), ('amp float16', 'FAIL'), ('fsdp', 'PASS')], result.stdout
    assert found[0][3] == found[1][3] == 'non-finite loss at iteration 1 (nan)'
    assert ('FAIL: amp bfloat16 configs/clip/pretrain_b16.py: non-finite loss at iteration 1 '
            '(nan)') in result.stdout
    assert found[2][1] == 'configs/sharded/rils_demo_cpu_fsdp.py vs configs/rils/demo_cpu.py'
    assert re.fullmatch(r'2 gloo processes, 4 steps: OK: AMP none, largest relative difference '
                        r'\S+ \(limit 1e-05\)', found[2][3]), found[2][3]
    assert result.stdout.rstrip().endswith('1 of 3 rows passed; 2 failed')


@pytest.mark.parametrize('args,message', [
    (['--only', 'amp,gpu'], "--only: unknown 'gpu'; choose from amp,ddp,fsdp,accum,bench"),
    (['--configs', 'clip/nope.py'], '--configs: config file not found: configs/clip/nope.py'),
    (['--only', 'accum'], 'no CUDA device is visible (is this a CPU-only torch?): give --device '
     'cpu to run the full-size checks on the CPU anyway (hours), or --tiny for a quick look'),
])
def test_bad_options_are_one_line_and_status_2(args, message):
    result = run_check(*args, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f'check_gpu.py: error: {message}'
    assert result.stdout == ''
