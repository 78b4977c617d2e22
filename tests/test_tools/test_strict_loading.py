"""tools/test.py and tools/train.py load checkpoints strictly (rils_mm/tools/checked_loading.py).

Each test runs the tool in its own process on tiny checkpoints saved here (random weights of
the demo configs shrunk to one block of width 32 on 32 px images): a checkpoint of another
shape, an image-only (MAE) checkpoint in a zero-shot config and an open_clip file with missing
keys are one line and exit status 1; a fine-tuning ``load_from`` with parts meant to differ
runs once they are allowed by ``load_from_ignore_keys``.
"""
import json
import os
import os.path as osp
import sys

import open_clip
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmpretrain.registry import MODELS

from rils_mm.datasets.demo_shapes import ensure_demo_shapes
from tiny_demo import TINY_MODEL, tiny_data
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
VIT = ('backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=1, num_heads=2, '
       'feedforward_channels=64), img_size=32)')
TEXT = 'text_encoder=dict(width=32, layers=1, heads=2, output_dim=16)'
MODELS_TEXT = {
    'rils': ('rils/demo_cpu.py', f'model = dict({VIT}, {TEXT}, embed_dims=16, neck=dict('
             'num_patches=16, embed_dim=32, decoder_embed_dim=32, decoder_num_heads=2))'),
    'clip': ('clip/demo_cpu.py', f'model = dict({VIT}, {TEXT}, embed_dims=16)'),
    'mae': ('mae/demo_cpu.py', f'model = dict({VIT}, neck=dict(num_patches=16, embed_dim=32, '
            'decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2))'),
}
ZERO_SHOT = '''_base_ = [{base!r}]
model = dict(model=dict({vit}, {text}, embed_dims=16, neck=dict(
    num_patches=16, embed_dim=32, decoder_embed_dim=32, decoder_num_heads=2)),
             classnames='{data}/classnames.txt', templates='{data}/templates.txt')
test_dataloader = dict(num_workers=0, dataset=dict(
    ann_file='{data}/heldout.jsonl', data_prefix=dict(img_path='{data}/heldout'),
    pipeline=[dict(type='LoadImageRGB', min_size=8),
              dict(type='ResizeEdge', scale=32, edge='short', interpolation='bicubic',
                   backend='pillow'),
              dict(type='CenterCrop', crop_size=32), dict(type='CLIPTokenize', context_length=77),
              dict(type='PackImageText')]))
'''
OPEN_CLIP_ARCH = 'rils-test-strict-clip'
OPEN_CLIP_CFG = dict(
    embed_dim=16,
    vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Tiny RILS, CLIP and MAE checkpoints (Runner layout), a zero-shot config of the tiny
    RILS on generated demo data, and an open_clip checkpoint lacking its second block."""
    root = tmp_path_factory.mktemp('strict')
    found = dict(data=str(root / 'shapes'))
    ensure_demo_shapes(found['data'], num_train=64, num_val=8, num_heldout=8, image_size=32)
    torch.manual_seed(0)
    for name, (base, text) in MODELS_TEXT.items():
        config = root / f'{name}.py'
        config.write_text(f'_base_ = [{osp.join(REPO, "configs", base)!r}]\n{text}\n')
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            model = MODELS.build(Config.fromfile(str(config)).model)
        model.init_weights()
        found[name] = str(root / f'{name}.pth')
        torch.save(dict(state_dict=model.state_dict(), meta=dict()), found[name])
    found['zero_shot'] = str(root / 'zero_shot.py')
    (root / 'zero_shot.py').write_text(ZERO_SHOT.format(
        base=osp.join(REPO, 'configs', 'rils', 'demo_cpu_zeroshot.py'), vit=VIT, text=TEXT,
        data=found['data']))

    (root / f'{OPEN_CLIP_ARCH}.json').write_text(json.dumps(OPEN_CLIP_CFG))
    open_clip.add_model_config(str(root / f'{OPEN_CLIP_ARCH}.json'))
    state = open_clip.create_model(OPEN_CLIP_ARCH).state_dict()
    found['open_clip_missing'] = str(root / 'open_clip_missing.pt')
    torch.save({k: v for k, v in state.items()
                if not k.startswith('visual.transformer.resblocks.1.')},
               found['open_clip_missing'])
    found['open_clip_zero_shot'] = str(root / 'open_clip_zero_shot.py')
    (root / 'open_clip_zero_shot.py').write_text(
        f'_base_ = [{found["zero_shot"]!r}]\n'
        f"model = dict(model=dict(_delete_=True, type='OpenCLIPModel', arch={OPEN_CLIP_ARCH!r}, "
        f"model_cfg_path={str(root / (OPEN_CLIP_ARCH + '.json'))!r}, "
        f"pretrained={found['open_clip_missing']!r}))\n")
    return found


def run(tool, *args):
    return run_python([sys.executable, tool, *map(str, args)], cwd=REPO,
                      capture_output=True, text=True, timeout=300,
                      env=dict(os.environ, PYTHONUNBUFFERED='1'))


def one_error_line(result, tool):
    lines = [line for line in result.stderr.splitlines() if line.startswith(f'{tool}: error:')]
    assert len(lines) == 1, (result.stdout + result.stderr)[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    return lines[0][len(f'{tool}: error: '):]


def test_test_tool_refuses_a_checkpoint_of_another_shape(files, tmp_path):
    # The config's joint space is 8-d, the checkpoint's 16-d: before, this scored random
    # projections (a "size mismatch" line in the log, exit status 0).
    result = run('tools/test.py', files['zero_shot'], files['rils'], '--work-dir', tmp_path,
                 '--cfg-options', 'model.model.embed_dims=8',
                 'model.model.text_encoder.output_dim=8')
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]
    line = one_error_line(result, 'tools/test.py')
    assert line.startswith(f'checkpoint {files["rils"]} does not fit the model of '
                           f'{files["zero_shot"]}: 2 weights differ in shape (')
    assert 'model.image_head.projection.weight: [16, 32] in the checkpoint, [8, 32] in the ' \
        'model' in line
    assert 'load_from_ignore_keys' in line and 'load_from_strict=False' in line
    assert 'accuracy/top1' not in result.stdout + result.stderr


def fine_tune(files, tmp_path, *options):
    """tools/train.py on the tiny RILS config, starting from the CLIP checkpoint (load_from):
    the CLIP has no RILS decoder (neck)."""
    return run('tools/train.py', 'configs/rils/demo_cpu.py', '--work-dir', tmp_path,
               '--cfg-options', *TINY_MODEL, *tiny_data(64), 'train_cfg.max_epochs=1',
               f'train_dataloader.dataset.data_root={files["data"]}',
               'train_dataloader.batch_size=16', 'train_dataloader.dataset.batch_size=16',
               'train_dataloader.dataset.samples_per_epoch=32', 'train_dataloader.num_workers=0',
               'train_dataloader.persistent_workers=False', f'load_from={files["clip"]}',
               *options)


def test_fine_tuning_load_from_is_strict_unless_the_new_parts_are_allowed(files, tmp_path):
    refused = fine_tune(files, tmp_path / 'refused')
    assert refused.returncode == 1, (refused.stdout + refused.stderr)[-3000:]
    line = one_error_line(refused, 'tools/train.py')
    assert line.startswith(f'checkpoint {files["clip"]} does not fit the model of '
                           f'configs/rils/demo_cpu.py: ')
    assert 'weights of the model are missing from the checkpoint (neck.' in line
    assert not list((tmp_path / 'refused').glob('*.pth'))

    allowed = fine_tune(files, tmp_path / 'allowed', 'load_from_ignore_keys=[neck.*]')
    log = allowed.stdout + allowed.stderr
    assert allowed.returncode == 0, log[-3000:]
    assert f"load_from {files['clip']}: allowed by load_from_ignore_keys=['neck.*']: " in log
    assert 'weights of the model are missing from the checkpoint (neck.' in log
    assert (tmp_path / 'allowed' / 'epoch_1.pth').is_file()


def test_image_only_checkpoint_in_a_zero_shot_config_is_one_line(files, tmp_path):
    result = run('tools/test.py', files['zero_shot'], files['mae'], '--work-dir', tmp_path)
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]
    line = one_error_line(result, 'tools/test.py')
    assert line.startswith(f'checkpoint {files["mae"]} has no text tower (no text_encoder.* '
                           f'weights): it was saved by an image-only method')
    assert 'weights of the model are missing from the checkpoint (' in line


def test_open_clip_file_with_missing_keys_is_one_line(files, tmp_path):
    result = run('tools/test.py', files['open_clip_zero_shot'], '--work-dir', tmp_path)
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]
    line = one_error_line(result, 'tools/test.py')
    assert line.startswith(f'{files["open_clip_missing"]} does not fit the model of '
                           f'{files["open_clip_zero_shot"]}: 12 weights of the model are '
                           f'missing from the checkpoint (visual.transformer.resblocks.1.')
    assert '... 8 more' in line
