"""Checkpoints as an attacker and a killed job leave them: nothing runs, nothing is lost.

Every load here happens in a process that did not write the file (the bug that refused every
Runner checkpoint in a fresh process hid behind in-process tests). A crafted checkpoint whose
unpickling would create a marker file is given to every loading path; each must refuse it with
one line naming the file and the blocked global, and the marker must not appear.
"""
import os
import os.path as osp
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest
import torch

import rils_mm  # noqa: F401  (the types of Runner checkpoints are allowed by weights-only loading)
from tool_processes import run_python as run_process  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def run_python(code: str, env=None, timeout=300, fresh=False) -> subprocess.CompletedProcess:
    """Run ``code`` in a new process (cwd: the repository; ``fresh``: a fresh interpreter, not
    one forked from the tests' process server)."""
    return run_process([sys.executable, '-c', textwrap.dedent(code)], cwd=REPO,
                       env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                       timeout=timeout, fresh=fresh)


def run_tool(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return run_process([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONUNBUFFERED='1', **(env or {})),
                       timeout=timeout)


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def write_crafted(path, marker, **extra):
    """A checkpoint that looks like a model's but runs a command when unpickled."""
    torch.save(dict(state_dict={'weight': torch.zeros(2, 2)}, meta={}, payload=Payload(marker),
                    **extra), str(path))


def refusal_lines(stderr: str):
    return [line for line in stderr.splitlines() if 'refused to load' in line]


# --- a Runner checkpoint loads in a new process ---------------------------------------------------
TOY_RUNNER = '''
import sys, torch
import rils_mm  # noqa
from mmengine.model import BaseModel
from mmengine.runner import Runner

class Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)
    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.linear(torch.stack(inputs) if isinstance(inputs, list) else inputs)
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out

def runner(work_dir, max_iters, resume=False, keep=-1):
    torch.manual_seed(0)
    return Runner(
        model=Toy(), work_dir=work_dir, default_scope='mmengine', resume=resume,
        train_dataloader=dict(dataset=[dict(inputs=torch.randn(2)) for _ in range(8)],
                              sampler=dict(type='DefaultSampler', shuffle=True), batch_size=2,
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False,
                                           max_keep_ckpts=keep)))
'''


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """A checkpoint written by mmengine's Runner in another process (message hub included)."""
    work_dir = tmp_path_factory.mktemp('toy_run')
    result = run_python(TOY_RUNNER + f'runner({str(work_dir)!r}, 4).train()\n')
    assert result.returncode == 0, result.stderr[-3000:]
    return work_dir / 'iter_4.pth'


def test_runner_checkpoint_loads_in_a_fresh_process(runner_checkpoint):
    """The allow-list must not depend on a HistoryBuffer having been built in the process."""
    result = run_python(f'''
        import rils_mm
        from mmengine.runner.checkpoint import CheckpointLoader
        ckpt = CheckpointLoader.load_checkpoint({str(runner_checkpoint)!r}, map_location='cpu')
        scalars = ckpt['message_hub']['log_scalars']
        print('OK', ckpt['meta']['iter'], type(scalars['train/loss']).__name__)
    ''', fresh=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'OK 4 HistoryBuffer' in result.stdout


def test_runner_resumes_in_a_fresh_process(runner_checkpoint):
    work_dir = runner_checkpoint.parent
    result = run_python(TOY_RUNNER + f'''
r = runner({str(work_dir)!r}, 6, resume=True)
r.train()
print('ITER', r.iter)
''')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'ITER 6' in result.stdout
    assert 'resumed' in (result.stdout + result.stderr).lower()


# --- crafted checkpoints ------------------------------------------------------------------------
@pytest.fixture
def crafted(tmp_path):
    marker = tmp_path / 'PAYLOAD_RAN'
    path = tmp_path / 'crafted.pth'
    write_crafted(path, marker)
    yield path, marker
    assert not marker.exists(), 'the payload of the crafted checkpoint ran'


def test_crafted_checkpoint_alone_would_run_its_payload(tmp_path):
    """The test's payload is real: unrestricted unpickling does create the marker."""
    marker = tmp_path / 'PAYLOAD_RAN'
    write_crafted(tmp_path / 'c.pth', marker)
    torch.load(tmp_path / 'c.pth', weights_only=False)
    assert marker.exists()


LOCAL_LOADERS = [
    'mmengine.runner.load_checkpoint(torch.nn.Linear(2, 2), PATH)',
    'mmengine.runner.checkpoint._load_checkpoint(PATH)',
    'rils_mm.models.utils.checkpoint_loading.load_checked(torch.nn.Linear(2, 2), PATH)',
]


def try_each(calls, **names) -> str:
    """Code that runs each call in one fresh interpreter and prints its outcome on one line."""
    code = ['import torch, mmengine.runner, rils_mm, rils_mm.models.utils.checkpoint_loading']
    code += [f'{key} = {value!r}' for key, value in names.items()]
    for call in calls:
        code += ['try:', f'    {call}', f'    print("LOADED", {call!r})',
                 'except Exception as err:',
                 f'    print("REFUSED", {call!r}, "|", " ".join(str(err).split()))']
    return '\n'.join(code) + '\n'


def outcomes(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return [line for line in result.stdout.splitlines() if line.startswith(('LOADED', 'REFUSED'))]


def test_crafted_local_file_is_refused_by_every_loader(crafted):
    """Also with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set: every load says weights_only=True."""
    path, _ = crafted
    result = run_python(try_each(LOCAL_LOADERS, PATH=str(path)),
                        env=dict(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1'))
    lines = outcomes(result)
    assert len(lines) == len(LOCAL_LOADERS)
    for line in lines:
        assert line.startswith('REFUSED'), line
        assert f'refused to load {path}: it holds the Python object posix.system' in line


def _zoo_url(scheme: str, name: str) -> str:
    from mmengine.runner.checkpoint import (get_external_models, get_mmcls_models,
                                            get_torchvision_models)
    table = {'torchvision://': get_torchvision_models, 'modelzoo://': get_torchvision_models,
             'open-mmlab://': get_external_models, 'mmcls://': get_mmcls_models}[scheme]()
    return table[name]


URL_SOURCES = ['https://example.invalid/models/evil_weights.pth',
               'http://example.invalid/evil_weights_http.pth', 'torchvision://resnet50',
               'modelzoo://resnet50', 'open-mmlab://resnet50_v1c', 'mmcls://resnet50']


def test_crafted_file_in_the_hub_cache_is_refused_for_every_url_scheme(tmp_path):
    """No network: the crafted file waits in the torch hub cache under the URL's file name."""
    marker = tmp_path / 'PAYLOAD_RAN'
    cache = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    names = {}
    for source in URL_SOURCES:
        scheme = source.split('://')[0] + '://'
        url = source if scheme in ('http://', 'https://') else _zoo_url(
            scheme, source[len(scheme):])
        names[source] = osp.basename(url)
        write_crafted(cache / names[source], marker)
    calls = [f'mmengine.runner.load_checkpoint(torch.nn.Linear(2, 2), {source!r})'
             for source in URL_SOURCES]
    result = run_python(try_each(calls), env=dict(TORCH_HOME=str(tmp_path / 'torch_home')))
    lines = outcomes(result)
    assert len(lines) == len(URL_SOURCES)
    for source, line in zip(URL_SOURCES, lines):
        assert line.startswith('REFUSED') and 'posix.system' in line, line
        assert f'cached as {cache / names[source]}' in line, line
    assert not marker.exists(), 'the payload ran'


def test_crafted_checkpoint_is_refused_by_init_cfg_pretrained(crafted):
    path, _ = crafted
    result = run_python(f'''
        import rils_mm
        from mmpretrain.registry import MODELS
        model = MODELS.build(dict(type='RILSViT', arch=dict(embed_dims=32, num_layers=1,
                                  num_heads=2, feedforward_channels=64), img_size=32,
                                  patch_size=16,
                                  init_cfg=dict(type='Pretrained', checkpoint={str(path)!r})))
        model.init_weights()
    ''')
    assert result.returncode != 0
    assert 'posix.system' in refusal_lines(result.stderr)[-1]


def test_crafted_checkpoint_is_refused_by_the_converter(crafted, tmp_path):
    path, _ = crafted
    result = run_tool('tools/model_converters/rils_to_toolbox.py', str(path),
                      str(tmp_path / 'out.pth'))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'posix.system' in errors[0] and str(path) in errors[0]
    assert 'Traceback' not in result.stderr
    assert not (tmp_path / 'out.pth').exists()


def test_open_clip_model_refuses_a_zip_dressed_as_torchscript(tmp_path, dressed_copy):
    """A torch.save file with an empty ``code/`` folder is not taken for TorchScript."""
    marker = tmp_path / 'PAYLOAD_RAN'
    plain = tmp_path / 'plain.pt'
    write_crafted(plain, marker)
    dressed = tmp_path / 'dressed.pt'
    dressed_copy(plain, dressed, 'code/')
    result = run_python(f'''
        import rils_mm
        from rils_mm.models.algorithms.open_clip_wrapper import OpenCLIPModel
        OpenCLIPModel(arch='ViT-B-32', pretrained={str(dressed)!r})
    ''')
    assert result.returncode != 0
    assert 'posix.system' in refusal_lines(result.stderr)[-1]
    assert not marker.exists()


def test_open_clip_model_loads_a_real_torchscript_archive_without_running_it(tmp_path,
                                                                            monkeypatch):
    """OpenAI-style TorchScript archives still load, their weights read without torch.jit.load
    (a ResNet CLIP here; ViT ones and archives that would run code: test_torchscript_safety)."""
    import open_clip
    model = open_clip.create_model('RN50', device='cpu')  # small enough to script quickly
    model.eval()
    scripted = torch.jit.script(model)
    path = tmp_path / 'scripted.pt'
    scripted.save(str(path))
    from rils_mm.compat import is_torchscript_archive
    from rils_mm.models.algorithms.open_clip_wrapper import OpenCLIPModel
    assert is_torchscript_archive(str(path))

    def no_jit_load(*args, **kwargs):
        raise AssertionError('torch.jit.load was called')

    monkeypatch.setattr(torch.jit, 'load', no_jit_load)
    loaded = OpenCLIPModel(arch='RN50', pretrained=str(path))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.clip.state_dict()[key], value)


def test_open_clip_model_refuses_weights_only_false():
    from rils_mm.models.algorithms.open_clip_wrapper import OpenCLIPModel
    with pytest.raises(ValueError, match='weights_only=False is not supported'):
        OpenCLIPModel(arch='ViT-B-32', weights_only=False)


# --- damaged files -------------------------------------------------------------------------------
@pytest.mark.parametrize('damage', ['truncate', 'empty'])
def test_damaged_checkpoint_is_one_line_naming_the_file(runner_checkpoint, tmp_path, damage):
    path = tmp_path / 'damaged.pth'
    data = runner_checkpoint.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == 'truncate' else b'')
    result = run_python(f'''
        import rils_mm
        from mmengine.runner.checkpoint import CheckpointLoader
        CheckpointLoader.load_checkpoint({str(path)!r})
    ''')
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert 'DamagedCheckpointError' in last and str(path) in last


# --- atomic saving --------------------------------------------------------------------------------
SAVE_LOOP = '''
import sys, torch, rils_mm
from mmengine.runner.checkpoint import save_checkpoint
state = dict(state_dict={f'w{i}': torch.full((1024, 1024), float(i)) for i in range(24)})
print('READY', flush=True)
save_checkpoint(state, sys.argv[1])
print('SAVED', flush=True)
while True:
    save_checkpoint(state, sys.argv[1])
'''


def test_a_kill_during_saves_never_leaves_a_truncated_checkpoint(tmp_path):
    """SIGKILL a process that saves a 96 MB checkpoint in a loop, at 3 random moments."""
    target = tmp_path / 'ckpt.pth'
    script = tmp_path / 'save_loop.py'
    script.write_text(SAVE_LOOP)
    import random
    rng = random.Random(0)
    for trial in range(3):
        process = subprocess.Popen([sys.executable, str(script), str(target)], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == 'READY', process.stderr.read()
        if trial == 0:  # one complete file first, however slow the machine
            lines = iter(process.stdout.readline, '')  # mmengine logs to stdout too
            assert 'SAVED' in (line.strip() for line in lines), process.stderr.read()
        time.sleep(rng.uniform(0.05, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if target.exists():
            loaded = torch.load(target, weights_only=True)
            assert float(loaded['state_dict']['w23'][0, 0]) == 23.0
    assert target.exists()
    with zipfile.ZipFile(target) as archive:
        assert archive.testzip() is None


def test_rotation_removes_the_old_checkpoint_only_after_the_new_one_is_written(tmp_path):
    """max_keep_ckpts=1: a save that dies leaves the previous checkpoint in place."""
    result = run_python(TOY_RUNNER + f'''
import os
from mmengine.runner import Runner
r = runner({str(tmp_path)!r}, 4, keep=1)
original = Runner.save_checkpoint
def dying_save(self, out_dir, filename, *args, **kwargs):
    if filename == 'iter_4.pth':
        print('FILES_DURING_SAVE', sorted(os.listdir({str(tmp_path)!r})), flush=True)
        os._exit(3)  # as if killed while writing
    return original(self, out_dir, filename, *args, **kwargs)
Runner.save_checkpoint = dying_save
r.train()
''')
    assert result.returncode == 3, result.stderr[-2000:]
    assert 'iter_2.pth' in result.stdout
    assert (tmp_path / 'iter_2.pth').is_file()
    assert (tmp_path / 'last_checkpoint').read_text().endswith('iter_2.pth')
    torch.load(tmp_path / 'iter_2.pth', weights_only=True)



def test_refusal_names_the_reason_when_torch_gives_no_global(tmp_path):
    """torch words some refusals without a GLOBAL name; the reason must still be shown."""
    import numpy as np
    from rils_mm.compat import UnsafeCheckpointError, weights_only_load
    path = tmp_path / 'complex.pth'
    torch.save({'a': np.zeros(2, np.complex64)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        weights_only_load(str(path))
    assert f'refused to load {path}: Can only build' in str(info.value)
    assert 'Complex64DType' in str(info.value)


@pytest.mark.parametrize('how', ['resume', 'load_from'])
def test_crafted_checkpoint_is_refused_by_the_training_tool(crafted, tmp_path, how):
    """``tools/train.py --resume FILE`` and ``load_from=FILE`` (the path ``tools/test.py
    CONFIG FILE`` takes too): one line naming the file and the blocked global, exit status 1,
    and the payload never runs (the ``crafted`` fixture checks its marker)."""
    path, _ = crafted
    tiny_data = [f'train_dataloader.dataset.data_root={tmp_path}/data',
                 'train_dataloader.dataset.generate_cfg.num_train=64',
                 'train_dataloader.dataset.generate_cfg.num_val=8',
                 'train_dataloader.dataset.generate_cfg.num_heldout=8']
    extra = (['--resume', str(path), '--cfg-options', *tiny_data] if how == 'resume' else
             ['--cfg-options', f'load_from={path}', *tiny_data])
    result = run_tool('tools/train.py', 'configs/rils/demo_cpu.py', '--work-dir',
                      str(tmp_path / 'work'), *extra)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines()
             if line.startswith('tools/train.py: error:')]
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert f'refused to load {path}: it holds the Python object posix.system' in lines[0]


def no_space_after(limit):
    """A stand-in for atomic_saving._write_durably that writes ``limit`` bytes of a file
    and then fails as a full disk does."""
    import errno

    def write(path, data):
        with open(path, 'wb') as file:
            file.write(data[:limit])
        if len(data) > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_a_full_disk_during_an_atomic_write_leaves_the_old_file(tmp_path, monkeypatch):
    from rils_mm.compat import atomic_saving
    target = tmp_path / 'last_checkpoint'
    atomic_saving.atomic_write_bytes(b'old contents', target)
    monkeypatch.setattr(atomic_saving, '_write_durably', no_space_after(4))
    with pytest.raises(OSError, match='No space left on device'):
        atomic_saving.atomic_write_bytes(b'new, longer contents', target)
    assert target.read_bytes() == b'old contents'
    assert os.listdir(tmp_path) == ['last_checkpoint']  # no partial file


def test_a_full_disk_during_a_checkpoint_save_stops_the_run_in_one_line(tmp_path,
                                                                        monkeypatch):
    """In this process: the Runner's second save (iter_4) meets a full disk."""
    from rils_mm.compat import CheckpointSaveError, atomic_saving
    namespace = {}
    exec(TOY_RUNNER, namespace)
    runner = namespace['runner'](str(tmp_path), 6, keep=1)
    write = atomic_saving._write_durably

    def disk_fills_at_iter_4(path, data):
        if '/iter_4.pth' in path:
            return no_space_after(100)(path, data)
        return write(path, data)

    monkeypatch.setattr(atomic_saving, '_write_durably', disk_fills_at_iter_4)
    with pytest.raises(CheckpointSaveError) as error:
        runner.train()
    assert str(error.value) == (
        f'cannot save checkpoint {tmp_path}/iter_4.pth: No space left on device (ENOSPC); '
        f'nothing was replaced and no partial file was left; the previous checkpoint '
        f'{tmp_path}/iter_2.pth is intact')
    assert [p.name for p in tmp_path.glob('*.pth*')] == ['iter_2.pth']  # and no .partial-
    assert (tmp_path / 'last_checkpoint').read_text() == f'{tmp_path}/iter_2.pth'
    assert torch.load(tmp_path / 'iter_2.pth', weights_only=True)['meta']['iter'] == 2


def test_random_bytes_are_one_refusal_never_a_traceback(tmp_path):
    """Files that are no checkpoint at all (random bytes, some behind a pickle header, as
    torch's legacy format starts) are a CheckpointLoadError naming the file, whatever the
    weights-only unpickler trips on (IndexError, KeyError, struct.error, ... before)."""
    import random

    from rils_mm.compat import CheckpointLoadError, weights_only_load
    rng = random.Random(0)
    for index in range(300):
        data = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 2, 10, 100, 3000])))
        path = tmp_path / f'random{index}.pth'
        path.write_bytes(b'\x80\x02' + data if index % 2 else data)
        with pytest.raises(CheckpointLoadError, match=str(path)):
            weights_only_load(str(path))


def test_resume_never_runs_the_config_text_a_checkpoint_carries(runner_checkpoint, tmp_path):
    """mmengine's resume executes ``meta['config']``; ours reads it as literals: the code in a
    crafted checkpoint's config does not run, and its ``gpu_ids`` still reach mmengine's check
    (a 3-GPU checkpoint resumed by 1 process is refused as mmengine refuses it)."""
    checkpoint = torch.load(runner_checkpoint, map_location='cpu', weights_only=False)
    marker = tmp_path / 'ran'
    work_dirs = {}
    for name, gpu_ids in (('code', [0]), ('gpus', [0, 1, 2])):
        # (mmengine's Config.fromstring runs this line; an import statement would make it
        # take the text for a lazy-import config and stop instead.)
        checkpoint['meta']['config'] = (f"ran = __import__('pathlib').Path({str(marker)!r})"
                                        f".write_text('ran')\ngpu_ids = {gpu_ids!r}\n")
        work_dirs[name] = tmp_path / name
        work_dirs[name].mkdir()
        torch.save(checkpoint, work_dirs[name] / 'iter_4.pth')
        (work_dirs[name] / 'last_checkpoint').write_text(str(work_dirs[name] / 'iter_4.pth'))
    result = run_python(TOY_RUNNER + f'''
r = runner({str(work_dirs['code'])!r}, 6, resume=True)
r.train()
print('ITER', r.iter)
try:
    runner({str(work_dirs['gpus'])!r}, 6, resume=True).train()
except RuntimeError as error:
    print('REFUSED', 'Number of GPUs' in str(error))
''')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'ITER 6' in result.stdout and 'REFUSED True' in result.stdout
    assert not marker.exists()
