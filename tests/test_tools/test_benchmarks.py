"""The benchmark scripts as users run them: they run and print what docs/speed.md quotes."""
import json
import os
import os.path as osp
import re
import sys
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def run_tool(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO)
    return run_python([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                      text=True, timeout=timeout)


def test_milan_decoder_flops_benchmark():
    """The prompting decoder costs less than MAE's decoder at every ratio, more so the more
    patches are visible (its visible tokens are never updated); at 0.75 the saving is close
    to the paper's 20 %."""
    result = run_tool('tools/benchmark_milan_decoder.py', '--mask-ratios', '0.5', '0.75')
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r'^\| (0\.\d+) \| .* \| ([0-9.]+) / ([0-9.]+) \| ([0-9.]+) \|$',
                      result.stdout, flags=re.M)
    assert [row[0] for row in rows] == ['0.50', '0.75'], result.stdout
    ratios = {row[0]: (float(row[1]), float(row[2])) for row in rows}
    assert ratios['0.50'][0] < ratios['0.75'][0] < 1
    assert 0.7 < ratios['0.75'][0] < 0.85 and 0.7 < ratios['0.75'][1] < 0.85


def test_lit_cache_benchmark(tmp_path):
    """The cached-features benchmark runs both modes on the demo config (tiny data here)."""
    result = run_tool('tools/benchmark_lit_cache.py', '--rounds', '1', '--steps', '2',
                      '--cache-dir', str(tmp_path / 'cache'), '--cfg-options',
                      f'train_dataloader.dataset.data_root={tmp_path}/demo',
                      'train_dataloader.dataset.generate_cfg.num_train=64',
                      'train_dataloader.dataset.generate_cfg.num_val=16',
                      'train_dataloader.dataset.generate_cfg.num_heldout=16',
                      'train_dataloader.batch_size=16')
    assert result.returncode == 0, result.stderr[-3000:]
    rates = dict(re.findall(r'^ *(images|cached): ([0-9.]+) samples/s', result.stdout, re.M))
    assert sorted(rates) == ['cached', 'images'] and all(float(v) > 0 for v in rates.values())
    assert re.search(r'^cached / images: [0-9.]+x', result.stdout, re.M)
    with open(tmp_path / 'cache' / 'cache_info.json') as f:
        assert json.load(f)['num_samples'] == 64  # every demo training pair, cached


def test_milan_decoder_benchmark_refuses_other_configs():
    result = run_tool('tools/benchmark_milan_decoder.py', '--config',
                      'configs/clip/pretrain_b16.py')
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        'benchmark_milan_decoder.py: error: configs/clip/pretrain_b16.py is not a MILAN config '
        '(model.neck must be MILANPretrainDecoder or MAEFeatureDecoder, got None)')


def test_reconstruction_memory_benchmark():
    """Measured in separate processes: the dense loss grows with the global batch by about
    B x L x 4 bytes per caption for each logit tensor it holds; the tiled, masked-only loss
    grows only by the prototypes' gradient (D x 4 bytes per caption)."""
    result = run_tool('tools/benchmark_recon_memory.py', '--local-batch', '8',
                      '--global-batches', '1024', '2048', '--extrapolate', '8192',
                      '--chunk-size', '256')
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r'^\| (\d+) \| (\d+) \| (\d+) \| (measured|formula) \|$', result.stdout,
                      flags=re.M)
    assert [(row[0], row[3]) for row in rows] == [
        ('1024', 'measured'), ('2048', 'measured'), ('8192', 'formula')], result.stdout
    dense, tiled = (dict((int(row[0]), int(row[index])) for row in rows) for index in (1, 2))
    per_tensor = 8 * 196 * 4 * 1024 / 2**20  # MiB added by 1024 captions, per logit tensor
    assert dense[2048] - dense[1024] > 3 * per_tensor, result.stdout
    assert tiled[2048] - tiled[1024] < 0.5 * per_tensor, result.stdout
    assert tiled[8192] < dense[8192] / 5, result.stdout


def test_reconstruction_memory_benchmark_refuses_bad_sizes():
    result = run_tool('tools/benchmark_recon_memory.py', '--local-batch', '64',
                      '--global-batches', '32')
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        'benchmark_recon_memory.py: error: every --global-batches value must be >= '
        '--local-batch (64)')
