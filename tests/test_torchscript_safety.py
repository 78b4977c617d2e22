"""A TorchScript archive given as a CLIP file never runs code; benign ones load as before.

``torch.jit.load`` runs each scripted class's ``__setstate__``. The crafted archive here is a
tiny open_clip CLIP whose ``ln_final`` is scripted with a ``__setstate__`` that creates (or
overwrites) a file of its choosing; its state dict has exactly open_clip's keys, so a loader
that runs it loads a working model and says nothing. The first test proves that
``torch.jit.load`` creates the file; every path that accepts open_clip/OpenAI files is then
given the archive, each command-line tool in its own process, and the file must not appear.
Benign archives (a scripted open_clip model; an OpenAI-layout model traced with float16
weights and OpenAI's scalar buffers) load bitwise equal to ``torch.jit.load``'s state dict.
"""
import json
import os
import os.path as osp
import subprocess
import sys
import textwrap
import zipfile
from typing import Tuple

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import rils_mm  # noqa: F401
from rils_mm.compat import (CheckpointLoadError, DamagedCheckpointError, UnsafeCheckpointError,
                            is_torchscript_archive, torchscript_state_dict)
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
ARCH = 'rils-ts-tiny-clip'  # OpenAI-style (QuickGELU), 32 px, width 32, one layer per tower
IMG, CTX, VOCAB = 32, 16, 49408
ARCH_CFG = dict(embed_dim=16, quick_gelu=True,
                vision_cfg=dict(image_size=IMG, layers=1, width=32, patch_size=8, head_width=16),
                text_cfg=dict(context_length=CTX, vocab_size=VOCAB, width=32, heads=2,
                              layers=1))
PAYLOAD = b'PWNED!!\n'  # what the crafted __setstate__ writes
# Tracing and scripting the tiny models warn about what does not concern these tests.
pytestmark = [pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning'),
              pytest.mark.filterwarnings('ignore:`torch.jit:FutureWarning')]


class EvilLayerNorm(nn.Module):
    """A LayerNorm whose TorchScript ``__setstate__`` maps ``path`` shared (creating it) and
    writes :data:`PAYLOAD` into it, then restores the weights as if nothing happened."""

    def __init__(self, norm: nn.LayerNorm, path: str):
        super().__init__()
        self.weight, self.bias, self.path = norm.weight, norm.bias, path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, [self.weight.shape[0]], self.weight, self.bias, 1e-5)

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, torch.Tensor, torch.Tensor, bool]:
        return (self.path, self.weight, self.bias, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, torch.Tensor, torch.Tensor, bool]) -> None:
        self.path = state[0]
        self.training = state[3]
        self.weight = state[1]
        written = torch.from_file(self.path, True, 8, dtype=torch.uint8)
        written.copy_(torch.tensor([80, 87, 78, 69, 68, 33, 33, 10], dtype=torch.uint8))
        # Read after the write, so that TorchScript keeps the write (unread, it is dropped).
        self.bias = state[2] + 0.0 * written.sum().float()


class OpenAIStyleCLIP(nn.Module):
    """OpenAI's CLIP layout, which open_clip's ``build_model_from_openai_state_dict`` reads:
    the towers at the top level beside the scalar buffers OpenAI's archives carry."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        for name in ('visual', 'transformer', 'token_embedding', 'ln_final',
                     'positional_embedding', 'text_projection', 'logit_scale'):
            setattr(self, name, getattr(clip, name))
        self.register_buffer('input_resolution', torch.tensor(IMG))
        self.register_buffer('context_length', torch.tensor(CTX))
        self.register_buffer('vocab_size', torch.tensor(VOCAB))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


class OddTensors(nn.Module):
    """Tensors a reader can get wrong: a transposed parameter, two buffers viewing one
    storage at different offsets, bool/int/empty buffers, a missing bias, nested modules."""

    def __init__(self):
        super().__init__()
        self.transposed = nn.Parameter(torch.randn(3, 5).t())
        base = torch.arange(10.)
        self.register_buffer('head', base[:4])
        self.register_buffer('tail', base[6:].view(2, 2))
        self.register_buffer('flags', torch.tensor([True, False, True]))
        self.register_buffer('counts', torch.arange(3, dtype=torch.int32))
        self.register_buffer('empty', torch.zeros(0, 3))
        self.blocks = nn.Sequential(nn.Linear(5, 3, bias=False), nn.LayerNorm(3).half())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[0](x @ self.transposed.t()) + self.head[:3]


def tiny_clip(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return open_clip.create_model(ARCH, device='cpu').eval()


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_bitwise_equal(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert got[key].stride() == value.stride(), key
        assert torch.equal(bits(got[key]), bits(value)), key


def run(*args, cwd=REPO, timeout=300) -> subprocess.CompletedProcess:
    return run_python([sys.executable, *map(str, args)], cwd=cwd, capture_output=True,
                      text=True, env=dict(os.environ, PYTHONUNBUFFERED='1'),
                      timeout=timeout)


def error_lines(stderr: str):
    return [line for line in stderr.splitlines() if 'error' in line.lower()]


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """The tiny architecture's JSON config (registered here too), a benign scripted open_clip
    archive, an OpenAI-layout traced archive, their source models, configs and an image."""
    root = tmp_path_factory.mktemp('torchscript')
    arch_json = root / f'{ARCH}.json'
    arch_json.write_text(json.dumps(ARCH_CFG))
    open_clip.add_model_config(str(arch_json))
    out = dict(root=root, arch_json=arch_json)

    clip = tiny_clip(0)
    torch.jit.script(clip).save(str(root / 'scripted.pt'))
    out.update(scripted=root / 'scripted.pt', scripted_model=clip)

    openai = tiny_clip(1)
    open_clip.model.convert_weights_to_lp(openai, torch.float16)  # as OpenAI's releases
    traced = torch.jit.trace(OpenAIStyleCLIP(openai), torch.randn(1, 3, IMG, IMG).half(),
                             check_trace=False)
    traced.save(str(root / 'openai.pt'))
    out.update(openai=root / 'openai.pt', openai_model=openai)

    torch.manual_seed(3)
    torch.jit.script(OddTensors()).save(str(root / 'odd.pt'))
    out['odd'] = root / 'odd.pt'

    out['open_clip_config'] = root / 'open_clip_cfg.py'
    out['open_clip_config'].write_text(
        f'model = dict(type=\'OpenCLIPModel\', arch={ARCH!r}, '
        f'model_cfg_path={str(arch_json)!r})\n')
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (IMG, IMG, 3), np.uint8)).save(
        root / 'image.png')
    out['image'] = root / 'image.png'
    return out


@pytest.fixture
def crafted(files, tmp_path):
    """(archive, marker): the tiny CLIP whose ``ln_final`` creates ``marker`` when unpickled
    by TorchScript; ``marker`` does not exist yet."""
    clip = tiny_clip(2)
    marker = tmp_path / 'CREATED_BY_THE_ARCHIVE'
    clip.ln_final = EvilLayerNorm(clip.ln_final, str(marker))
    path = tmp_path / 'crafted_clip.pt'
    torch.jit.script(clip).save(str(path))
    assert not marker.exists()
    return path, marker


# --- the crafted archive runs code under torch.jit.load -----------------------------------------
def test_torch_jit_load_runs_the_crafted_archive(crafted, files):
    """The archive is a real attack: torch.jit.load creates the file, silently, and gives a
    model whose state dict fits open_clip's architecture exactly."""
    path, marker = crafted
    state_dict = torch.jit.load(str(path), map_location='cpu').state_dict()
    assert marker.read_bytes() == PAYLOAD
    expected = open_clip.create_model(ARCH, device='cpu').state_dict()
    assert set(state_dict) == set(expected) | {'attn_mask'}  # TorchScript saves it too


def test_reader_refuses_the_crafted_archive_and_runs_nothing(crafted):
    path, marker = crafted
    assert is_torchscript_archive(str(path))
    with pytest.raises(UnsafeCheckpointError) as error:
        torchscript_state_dict(str(path))
    message = str(error.value)
    assert '\n' not in message and str(path) in message
    assert 'EvilLayerNorm defines __setstate__' in message and 'nothing from the file was run' \
        in message
    assert not marker.exists()


def test_open_clip_model_runs_nothing_unless_trusted(crafted, files, monkeypatch):
    """OpenCLIPModel refuses the archive (one line naming the file and trust_torchscript);
    trust_torchscript=True loads it with torch.jit.load, which creates the file; and a reader
    that ran the archive (here: torch.jit.load in its place) would be caught by the checks of
    this file, since the same call then creates the file too."""
    from rils_mm.models.algorithms import open_clip_wrapper
    from rils_mm.models.algorithms.open_clip_wrapper import OpenCLIPModel
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError, match='trust_torchscript=True') as error:
        OpenCLIPModel(arch=ARCH, pretrained=str(path))
    assert '\n' not in str(error.value) and str(path) in str(error.value)
    assert not marker.exists()

    OpenCLIPModel(arch=ARCH, pretrained=str(path), trust_torchscript=True)
    assert marker.read_bytes() == PAYLOAD
    marker.unlink()

    monkeypatch.setattr(open_clip_wrapper, 'torchscript_state_dict',
                        lambda p: torch.jit.load(p, map_location='cpu').state_dict())
    OpenCLIPModel(arch=ARCH, pretrained=str(path))  # the mutant loads it, silently
    assert marker.exists()


def test_no_shipped_config_trusts_torchscript():
    found = [osp.join(folder, name) for folder, _, names in os.walk(osp.join(REPO, 'configs'))
             for name in names if name.endswith('.py')
             and 'trust_torchscript' in open(osp.join(folder, name)).read()]
    assert found == []


# --- every path that accepts an open_clip / OpenAI file, each tool in its own process --------
def test_test_tool_refuses_the_crafted_clip(crafted, files, tmp_path):
    path, marker = crafted
    result = run('tools/test.py', 'configs/benchmarks/zero_shot/openclip_vit-b16_zeroshot_in1k.py',
                 '--work-dir', tmp_path / 'work', '--cfg-options', f'model.model.arch={ARCH}',
                 f'model.model.model_cfg_path={files["arch_json"]}',
                 f'model.model.pretrained={path}')
    assert result.returncode == 1, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith('tools/test.py: error: ')
    assert f'refused to load {path}' in lines[0] and '__setstate__' in lines[0]
    assert 'Traceback' not in result.stderr
    assert not marker.exists()


def test_attention_map_refuses_the_crafted_clip(crafted, files, tmp_path):
    path, marker = crafted
    out = tmp_path / 'attention.png'
    result = run('tools/visualization/attention_map.py', files['open_clip_config'], path,
                 files['image'], '--out', out)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith('tools/visualization/attention_map.py: '
                                                   'error: ')
    assert f'refused to load {path}' in lines[0] and 'Traceback' not in result.stderr
    assert not out.exists() and not marker.exists()


def test_teacher_and_init_model_refuse_the_crafted_clip(crafted, files):
    """MILAN's CLIPTeacher built from a config, and rils_mm.apis.init_model, in one process."""
    path, marker = crafted
    result = run('-c', textwrap.dedent(f'''
        import rils_mm
        from mmpretrain.registry import MODELS
        from rils_mm.apis import init_model
        from rils_mm.compat import CheckpointLoadError
        teacher = dict(type='CLIPTeacher', model=dict(
            type='OpenCLIPModel', arch={ARCH!r}, model_cfg_path={str(files['arch_json'])!r},
            pretrained={str(path)!r}))
        for name, build in [('teacher', lambda: MODELS.build(teacher)),
                            ('init_model', lambda: init_model(
                                {str(files['open_clip_config'])!r}, {str(path)!r}))]:
            try:
                build()
                print(name, 'LOADED')
            except CheckpointLoadError as err:
                print(name, 'REFUSED', ' '.join(str(err).split()))
    '''))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [['teacher', 'REFUSED'],
                                                    ['init_model', 'REFUSED']]
    assert all(f'refused to load {path}' in line and 'EvilLayerNorm' in line for line in lines)
    assert not marker.exists()


def test_converter_refuses_the_crafted_clip(crafted, tmp_path, capsys):
    from rils_mm.tools.model_converters import open_clip_to_rils_main, run as run_converter
    path, marker = crafted
    with pytest.raises(SystemExit) as exit_info:
        run_converter(open_clip_to_rils_main, [str(path), str(tmp_path / 'out.pth')])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: refused to load {path}')
    assert not marker.exists() and not (tmp_path / 'out.pth').exists()


def test_weights_only_paths_name_a_torchscript_archive(files, tmp_path):
    """tools/test.py with a config of ours given a TorchScript file: the one line says what the
    file is and where it goes, not that it is damaged. (Run in a folder holding a small
    generated copy of the demo data that the config reads.)"""
    from rils_mm.datasets.demo_shapes import generate_demo_shapes
    generate_demo_shapes(str(tmp_path / 'data' / 'demo_shapes'), num_train=8, num_val=8,
                         num_heldout=8, image_size=32, samples_per_shard=8)
    result = run(osp.join(REPO, 'tools/test.py'),
                 osp.join(REPO, 'configs/rils/demo_cpu_zeroshot.py'), files['openai'],
                 '--work-dir', tmp_path / 'work', cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith('tools/test.py: error: refused to load')
    assert f'{files["openai"]}: it is a TorchScript archive' in lines[0]
    assert 'pretrained' in lines[0] and 'open_clip_to_rils.py' in lines[0]
    assert 'damaged' not in lines[0] and 'Traceback' not in result.stderr


def test_checkpoint_loader_names_a_torchscript_archive(files):
    """load_from / --resume / init_cfg go through mmengine's CheckpointLoader."""
    from mmengine.runner.checkpoint import CheckpointLoader
    with pytest.raises(UnsafeCheckpointError, match='it is a TorchScript archive') as error:
        CheckpointLoader.load_checkpoint(str(files['openai']))
    assert '\n' not in str(error.value) and 'damaged' not in str(error.value)


# --- benign archives --------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['scripted', 'openai', 'odd'])
def test_reader_equals_torch_jit_load(files, name):
    expected = torch.jit.load(str(files[name]), map_location='cpu').state_dict()
    got = torchscript_state_dict(str(files[name]))
    assert_bitwise_equal(got, expected)
    if name == 'openai':
        assert {'input_resolution', 'context_length', 'vocab_size'} <= set(got)
        assert got['visual.conv1.weight'].dtype == torch.float16
        assert int(got['input_resolution']) == IMG
    if name == 'odd':
        assert got['head'].untyped_storage().data_ptr() == got['tail'].untyped_storage(
        ).data_ptr() and got['tail'].storage_offset() == 6
        assert 'blocks.0.bias' not in got and got['transposed'].stride() == (1, 5)


def test_openai_layout_gives_the_same_open_clip_model_as_before(files):
    """The OpenAI-layout archive through the reader gives the model that torch.jit.load gave
    (the previous path, now trust_torchscript=True), bitwise, and that model computes what
    the source model computes."""
    from rils_mm.models.algorithms.open_clip_wrapper import OpenCLIPModel
    path = str(files['openai'])
    ours = OpenCLIPModel(arch=ARCH, pretrained=path)
    before = OpenCLIPModel(arch=ARCH, pretrained=path, trust_torchscript=True)
    assert_bitwise_equal(ours.clip.state_dict(), before.clip.state_dict())
    images = torch.randn(2, 3, IMG, IMG)
    tokens = open_clip.get_tokenizer(ARCH)(['a red circle', 'a blue square'])
    source = files['openai_model'].float()
    with torch.no_grad():
        assert torch.equal(ours.encode_image(images), before.encode_image(images))
        assert torch.equal(ours.encode_text(tokens), before.encode_text(tokens))
        torch.testing.assert_close(ours.clip.encode_image(images), source.encode_image(images))
        torch.testing.assert_close(ours.clip.encode_text(tokens), source.encode_text(tokens))


def test_converter_converts_an_openai_torchscript_file(files, tmp_path):
    from rils_mm.tools.converters import open_clip_to_rils
    out = tmp_path / 'rils_layout.pth'
    result = run('tools/model_converters/open_clip_to_rils.py', files['openai'], out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f'wrote {out}' in result.stdout and '0 expected keys missing' in result.stdout
    reference = {k: v for k, v in torch.jit.load(str(files['openai'])).state_dict().items()
                 if k not in ('input_resolution', 'context_length', 'vocab_size')}
    expected = open_clip_to_rils(reference).state_dict
    assert_bitwise_equal(torch.load(out, weights_only=True)['state_dict'], expected)


# --- other archives the reader meets ---------------------------------------------------------
class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def test_a_pickle_dressed_as_torchscript_is_refused(tmp_path, dressed_copy):
    """A torch.save file with a constants.pkl record is read by the reader, whose unpickler
    refuses the global before looking it up."""
    marker = tmp_path / 'PAYLOAD_RAN'
    plain = tmp_path / 'plain.pt'
    torch.save(dict(weight=torch.zeros(2), payload=Payload(marker)), str(plain))
    dressed = tmp_path / 'dressed.pt'
    dressed_copy(plain, dressed, 'constants.pkl')
    assert is_torchscript_archive(str(dressed))
    with pytest.raises(UnsafeCheckpointError, match='holds the Python object posix.system'):
        torchscript_state_dict(str(dressed))
    assert not marker.exists()


def test_a_tensor_outside_its_storage_is_refused(files, tmp_path):
    """A size that reads past its storage record is an error (``Tensor.set_`` would grow the
    storage with uninitialised memory instead)."""
    path = tmp_path / 'oversized.pt'
    with zipfile.ZipFile(files['odd']) as src, zipfile.ZipFile(path, 'w') as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith('/data.pkl'):
                # `transposed`: size (5, 3), stride (1, 5); make it (5, 99).
                old = b'(K\x05K\x03t(K\x01K\x05t'
                assert data.count(old) == 1
                data = data.replace(old, b'(K\x05K\x63t(K\x01K\x05t')
            dst.writestr(item, data)
    with pytest.raises(DamagedCheckpointError, match='reads .* elements of a storage of 15'):
        torchscript_state_dict(str(path))


def test_a_truncated_archive_is_one_line(files, tmp_path):
    data = files['scripted'].read_bytes()
    path = tmp_path / 'cut.pt'
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointLoadError) as error:
        torchscript_state_dict(str(path))
    assert isinstance(error.value, DamagedCheckpointError)
    assert str(path) in str(error.value) and '\n' not in str(error.value)
