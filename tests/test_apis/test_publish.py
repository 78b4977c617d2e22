"""Published weights: ``tools/model_converters/publish_model.py`` writes safetensors and a JSON
of metadata; every loading path reads safetensors; model-index ``Weights`` load strictly.

One separate-process flow: the tool publishes a tiny model in one process and
``tools/test.py`` evaluates the published file in another, with the figures of the ``.pth``.
"""
import hashlib
import io
import json
import os
import os.path as osp
import re
import sys

import pytest
import torch
import yaml

import rils_mm  # noqa: F401  (the safetensors loader, the model index)
from rils_mm.apis import init_model, register_model_index
from rils_mm.compat import (CheckpointKeysError, DamagedCheckpointError, safetensors_bytes,
                            weights_only_load)
from rils_mm.tools.model_converters import publish_model_main, run
from rils_mm.tools.publish import publish_checkpoint

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'tests', 'test_tools'))
from tiny_demo import TINY_MODEL, tiny_data, tiny_run  # noqa: E402
from tool_processes import run_python  # noqa: E402

RILS_DEMO = 'rils-mm_rils_vit-demo-p8_1xb64-coslr-6e_demo-shapes'
METRIC = r'accuracy/top1: ([\d.]+)\s+accuracy/top5: ([\d.]+)'


def runner_checkpoint(model, path, top1=None):
    """What a Runner saves: weights, meta with the config text, and the training state (an
    optimizer, a message hub with a validation figure when ``top1`` is given)."""
    from mmengine.logging import MessageHub
    hub = MessageHub(f'publish-test-{osp.basename(path)}')
    hub.update_scalar('train/loss', 3.0)
    if top1 is not None:
        hub.update_scalar('val/accuracy/top1', top1)
        hub.update_scalar('val/time', 0.5)
    optimizer = torch.optim.AdamW(model.parameters())
    state = dict(meta=dict(epoch=6, iter=24, cfg=model._config.pretty_text, seed=0,
                           experiment_name='demo_cpu_20261207_120000'),
                 state_dict=model.state_dict(), optimizer=optimizer.state_dict(),
                 message_hub=hub.state_dict(), param_schedulers=[dict(last_step=24)])
    torch.save(state, path)
    return state


def header(path):
    """The JSON header of a safetensors file."""
    with open(path, 'rb') as f:
        length = int.from_bytes(f.read(8), 'little')
        return json.loads(f.read(length))


def test_publish_keeps_the_weights_and_records_the_run(tmp_path, capsys):
    torch.manual_seed(0)
    model = init_model(RILS_DEMO)
    saved = runner_checkpoint(model, str(tmp_path / 'epoch_6.pth'), top1=25.0)
    record = publish_checkpoint(str(tmp_path / 'epoch_6.pth'), str(tmp_path / 'out' /
                                                                  'rils_demo.pth'))
    path = record['metafile']['Weights']
    data = open(path, 'rb').read()
    # mmpretrain's naming: the first 8 hex digits of the file's sha256.
    assert record['sha256'] == hashlib.sha256(data).hexdigest()
    assert osp.basename(path) == f'rils_demo-{record["sha256"][:8]}.safetensors'
    with open(path[:-len('.safetensors')] + '.json') as f:
        assert json.load(f) == record
    # Weights only: no optimizer, schedulers or message hub; every tensor as it was.
    assert set(header(path)) - {'__metadata__'} == set(saved['state_dict'])
    loaded = weights_only_load(path)
    assert set(loaded) == {'state_dict', 'meta'}
    assert all(torch.equal(loaded['state_dict'][k], v) for k, v in saved['state_dict'].items())
    metadata = record['metadata']
    assert loaded['meta'] == metadata
    assert metadata['config_name'] == 'demo_cpu' and metadata['method'] == 'RILS'
    assert 'config' not in metadata  # mmengine's resume runs meta['config'] as config text
    assert (metadata['epoch'], metadata['iter']) == (6, 24)
    assert metadata['data']['data_root'] == 'data/demo_shapes'
    assert metadata['validation']['metrics'] == {'accuracy/top1': 25.0}  # no timings
    assert metadata['num_parameters'] == sum(p.numel() for p in model.parameters())
    assert record['metafile']['Results'][0]['Metrics'] == {'accuracy/top1': 25.0}
    # A run that never validated has no figures; a published file publishes again as itself.
    runner_checkpoint(model, str(tmp_path / 'noval.pth'))
    again = publish_checkpoint(path, str(tmp_path / 'again.safetensors'))
    assert again['metadata'] == metadata and again['sha256'] == record['sha256']
    assert 'validation' not in publish_checkpoint(str(tmp_path / 'noval.pth'),
                                                  str(tmp_path / 'noval'))['metadata']
    # The config text in the checkpoint is read, never run (Config.fromstring would run it).
    marker = tmp_path / 'ran'
    crafted = f"open({str(marker)!r}, 'w')\nmodel = dict(type='RILS', embed_dims=128)\n"
    torch.save(dict(state_dict=saved['state_dict'], meta=dict(cfg=crafted)),
               str(tmp_path / 'crafted.pth'))
    assert publish_checkpoint(str(tmp_path / 'crafted.pth'),
                              str(tmp_path / 'crafted'))['metadata']['method'] == 'RILS'
    assert not marker.exists()
    # Bad input is one line, exit status 1.
    for argv, line in [([str(tmp_path / 'nope.pth'), str(tmp_path / 'x')],
                        f'error: checkpoint file not found: {tmp_path / "nope.pth"}'),
                       ([str(tmp_path / 'empty.pth'), str(tmp_path / 'x')],
                        f'error: {tmp_path / "empty.pth"} holds no weights (an empty state '
                        f'dict)')]:
        torch.save(dict(state_dict={}), str(tmp_path / 'empty.pth'))
        with pytest.raises(SystemExit) as exit_info:
            run(publish_model_main, argv)
        assert exit_info.value.code == 1
        assert capsys.readouterr().err.strip() == line


def test_every_loading_path_reads_safetensors(tmp_path):
    from mmengine.runner.checkpoint import CheckpointLoader, load_checkpoint
    from mmpretrain import get_model

    from rils_mm.models.utils import load_checked
    from rils_mm.tools.converters import extract_vision_encoder, load_state_dict_file
    torch.manual_seed(0)
    source = init_model(RILS_DEMO)
    state_dict = source.state_dict()
    path = str(tmp_path / 'rils.safetensors')
    with open(path, 'wb') as f:
        f.write(safetensors_bytes(state_dict, dict(epoch=1)))

    def equal(loaded):
        return set(loaded) == set(state_dict) and all(
            torch.equal(loaded[k], v) for k, v in state_dict.items())

    assert equal(CheckpointLoader.load_checkpoint(path, map_location='cpu')['state_dict'])
    assert equal(load_state_dict_file(path))  # the converters
    from mmengine.runner.checkpoint import _load_checkpoint_with_prefix  # init_cfg Pretrained
    backbone = _load_checkpoint_with_prefix('backbone.', path, map_location='cpu')
    assert backbone and all(torch.equal(v, state_dict[f'backbone.{k}'])
                            for k, v in backbone.items())
    encoder = extract_vision_encoder(path).state_dict  # rils_to_toolbox.py
    assert encoder and all(torch.equal(v, state_dict[f'backbone.{k}']) for k, v in encoder.items())
    # By content, not by name (a URL's cached file or an object store's bytes).
    renamed = str(tmp_path / 'weights.bin')
    os.link(path, renamed)
    assert equal(weights_only_load(renamed)['state_dict'])
    assert equal(weights_only_load(io.BytesIO(open(path, 'rb').read()))['state_dict'])
    torch.manual_seed(1)
    assert not equal(init_model(RILS_DEMO).state_dict())  # other weights before loading
    for load in (lambda m: load_checkpoint(m, path, strict=True),  # mmengine's
                 lambda m: load_checked(m, path, prefix='', logger=None)):  # CheckedPretrained
        torch.manual_seed(1)
        model = init_model(RILS_DEMO)
        load(model)
        assert equal(model.state_dict())
    assert equal(init_model(RILS_DEMO, path).state_dict())
    assert equal(get_model(RILS_DEMO, pretrained=path).state_dict())
    # Damaged: one line naming the file.
    cut = str(tmp_path / 'cut.safetensors')
    with open(cut, 'wb') as f:
        f.write(open(path, 'rb').read()[:-100])
    with pytest.raises(DamagedCheckpointError, match=f'^checkpoint {re.escape(cut)} is a '
                       'damaged safetensors file') as info:
        init_model(RILS_DEMO, cut)
    assert '\n' not in str(info.value)


def test_model_index_weights_load_strictly(tmp_path):
    from mmpretrain import get_model
    from mmpretrain.apis.model import ModelHub
    torch.manual_seed(0)
    model = init_model(RILS_DEMO)
    runner_checkpoint(model, str(tmp_path / 'epoch_6.pth'), top1=40.0)
    record = publish_checkpoint(str(tmp_path / 'epoch_6.pth'), str(tmp_path / 'rils_demo'))
    name = f'rils-mm_published-test-{record["sha256"][:8]}'
    entry = dict(Name=name, Metadata=dict(Epochs=6, **{'Batch Size': 64}),
                 Config=ModelHub.get(RILS_DEMO).config.filename,
                 Weights=record['file'],  # relative to the index, as Config paths are
                 Results=record['metafile']['Results'])
    (tmp_path / 'metafile.yml').write_text(yaml.safe_dump(dict(Models=[entry])))
    (tmp_path / 'model-index.yml').write_text(yaml.safe_dump(dict(Import=['metafile.yml'])))
    assert register_model_index(str(tmp_path / 'model-index.yml')) == [name]
    info = ModelHub.get(name)
    assert info.weights == record['metafile']['Weights']
    assert info.results[0].metrics == {'accuracy/top1': 40.0}
    torch.manual_seed(1)
    loaded = get_model(name, pretrained=True)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert loaded._metainfo.name == name and not loaded.training
    # Strict: a published file one weight short is refused, not loaded with a warning.
    short = {k: v for k, v in model.state_dict().items() if k != 'logit_scale'}
    with open(record['metafile']['Weights'], 'wb') as f:
        f.write(safetensors_bytes(short))
    with pytest.raises(CheckpointKeysError, match=r"missing .*\['logit_scale'\]"):
        get_model(name, pretrained=True)
    # mmpretrain's own names load as mmpretrain does.
    assert type(get_model('resnet18_8xb32_in1k')).__name__ == 'ImageClassifier'


def run_tool(*args):
    result = run_python([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONUNBUFFERED='1'), timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout + result.stderr


def test_published_file_evaluates_as_the_checkpoint_in_other_processes(tmp_path):
    """Publish in one process, ``tools/test.py`` on the published file in another: the
    figures of the ``.pth``."""
    from mmengine.config import Config

    from rils_mm.datasets.demo_shapes import generate_demo_shapes
    root = str(tmp_path / 'shapes')
    generate_demo_shapes(root, num_train=16, num_val=8, num_heldout=32, image_size=32)
    cfg = Config.fromfile(osp.join(REPO, 'configs/rils/demo_cpu.py'))
    cfg.merge_from_dict({k: int(v) for k, v in (o.split('=') for o in TINY_MODEL)})
    torch.manual_seed(0)
    model = init_model(cfg)
    runner_checkpoint(model, str(tmp_path / 'epoch_6.pth'), top1=10.0)
    out = run_tool('tools/model_converters/publish_model.py', str(tmp_path / 'epoch_6.pth'),
                   str(tmp_path / 'rils_tiny.safetensors'))
    published = re.search(r'wrote (\S+\.safetensors) \(sha256 ([0-9a-f]{64})\)', out)
    assert published, out
    assert published.group(1).endswith(f'rils_tiny-{published.group(2)[:8]}.safetensors')
    test = ['--cfg-options', *['model.' + o for o in TINY_MODEL],
            f'model.classnames={root}/classnames.txt', f'model.templates={root}/templates.txt',
            'test_dataloader.num_workers=0', f'test_dataloader.dataset.ann_file='
            f'{root}/heldout.jsonl', f'test_dataloader.dataset.data_prefix.img_path='
            f'{root}/heldout', 'test_dataloader.dataset.pipeline.1.scale=32',
            'test_dataloader.dataset.pipeline.2.crop_size=32']
    figures = []
    for checkpoint in (published.group(1), str(tmp_path / 'epoch_6.pth')):
        out = run_tool('tools/test.py', 'configs/rils/demo_cpu_zeroshot.py', checkpoint,
                       '--work-dir', str(tmp_path / 'test'), *test)
        lines = [line for line in out.splitlines() if 'Epoch(test)' in line and 'top1' in line]
        assert lines, out[-3000:]
        figures.append(re.search(METRIC, lines[-1]).groups())
    assert figures[0] == figures[1]
    # A training run starts from it (load_from, checked); --resume refuses it in one line.
    train = ['tools/train.py', 'configs/rils/demo_cpu.py', '--cfg-options', *tiny_run(16),
             *tiny_data(16), f'train_dataloader.dataset.data_root={tmp_path / "train"}']
    out = run_tool(*train[:2], '--work-dir', str(tmp_path / 'load_from'), *train[2:],
                   f'load_from={published.group(1)}')
    assert f'Load checkpoint from {published.group(1)}' in out
    result = run_python([sys.executable, *train[:2], '--work-dir', str(tmp_path / 'resume'),
                             '--resume', published.group(1), *train[2:]], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f'tools/train.py: error: --resume {published.group(1)}: it holds weights only (no '
        f'message_hub, optimizer: a published or converted file), not the training state a '
        f'run resumes from (epoch_N.pth, iter_N.pth); to start a new run from these weights '
        f'give --cfg-options load_from={published.group(1)}')
