"""tools/visualization/: the figures' numbers against direct computations, and the tools as a
user runs them (each a new process on files written here, PNG sizes checked).

Tiny models (2 blocks of width 32, 32 px images in 8 px patches: 4 x 4 patches) built from the
demo configs with random weights, saved in the Runner's checkpoint layout.
"""
import json
import os
import os.path as osp
import sys

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmpretrain.registry import MODELS
from PIL import Image

from rils_mm.compat import CheckpointKeysError
from rils_mm.datasets.demo_shapes import generate_demo_shapes, render_shape
from rils_mm.models.backbones import intact_outputs
from rils_mm.visualization import (VisualizationInputError, draw_mask, draw_masks_figure,
                                   last_block_attention, load_image, load_model,
                                   masked_patch_caption_maps, patch_caption_maps,
                                   read_labelled_images, tsne)
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CAPTIONS = ['a photo of a red circle', 'a photo of a blue square', 'a green triangle']
VIT = ("backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=2, num_heads=2, "
       "feedforward_channels=64), img_size=32, patch_size=8)")
TEXT = 'text_encoder=dict(width=32, heads=2, layers=1)'
TINY = {
    'rils': ('rils/demo_cpu.py', f'''model = dict(
    {VIT},
    neck=dict(num_patches=16, embed_dim=32, decoder_embed_dim=32, decoder_num_heads=2),
    {TEXT}, embed_dims=16)'''),
    'clip': ('clip/demo_cpu.py', f'model = dict({VIT}, {TEXT}, embed_dims=16)'),
    'mae': ('mae/demo_cpu.py', f'''model = dict(
    {VIT},
    neck=dict(num_patches=16, patch_size=8, embed_dim=32, decoder_embed_dim=32,
              decoder_depth=1, decoder_num_heads=2))'''),
    'milan': ('milan/demo_cpu.py', f'''model = dict(
    {VIT},
    neck=dict(num_patches=16, patch_size=8, embed_dim=32, decoder_embed_dim=32,
              decoder_depth=1, decoder_num_heads=2, predict_feature_dim=16),
    target_generator=dict(
        model=dict(backbone=dict(arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                                           feedforward_channels=64), img_size=32, patch_size=8),
                   {TEXT}, embed_dims=16),
        checkpoint=CLIP_CHECKPOINT))'''),
}
OPEN_CLIP_ARCH = 'rils-test-tiny-vit'
OPEN_CLIP_CFG = dict(
    embed_dim=16,
    vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


def run_tool(name, *args):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    return run_python([sys.executable, f'tools/visualization/{name}.py', *map(str, args)],
                      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def png_size(path):
    with Image.open(path) as image:
        return image.size


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """Configs and random-weight checkpoints of tiny RILS, CLIP, MAE, MILAN and open_clip
    models, an image and a small demo data root."""
    root = tmp_path_factory.mktemp('visualization')
    files = {}
    image = render_shape('red', 'circle', 'large', 'center', 48, np.random.default_rng(0))
    image.crop((0, 4, 48, 44)).save(root / 'shape.png')  # 48 x 40: resized and cropped
    files['image'] = root / 'shape.png'
    torch.manual_seed(0)
    for name in ('clip', 'rils', 'mae', 'milan'):  # the CLIP first: it teaches MILAN
        base, text = TINY[name]
        config = root / f'{name}.py'
        text = text.replace('CLIP_CHECKPOINT', repr(str(files.get('clip_checkpoint'))))
        config.write_text(f'_base_ = [{osp.join(REPO, "configs", base)!r}]\n{text}\n')
        model = MODELS.build(Config.fromfile(str(config)).model)
        model.init_weights()
        checkpoint = root / f'{name}.pth'
        torch.save(dict(state_dict=model.state_dict(), meta=dict()), checkpoint)
        files[f'{name}_config'], files[f'{name}_checkpoint'] = config, checkpoint
    model_cfg = root / f'{OPEN_CLIP_ARCH}.json'
    model_cfg.write_text(json.dumps(OPEN_CLIP_CFG))
    open_clip.add_model_config(str(model_cfg))
    torch.save(open_clip.create_model(OPEN_CLIP_ARCH, device='cpu').state_dict(),
               root / 'open_clip.pt')
    files['open_clip_config'] = root / 'open_clip_cfg.py'
    files['open_clip_config'].write_text(
        f"model = dict(type='OpenCLIPModel', arch={OPEN_CLIP_ARCH!r}, "
        f"model_cfg_path={str(model_cfg)!r})\n")
    files['open_clip_checkpoint'] = root / 'open_clip.pt'
    files['data'] = root / 'shapes'
    generate_demo_shapes(str(files['data']), num_train=8, num_val=12, num_heldout=8,
                         image_size=32, samples_per_shard=8)
    return {key: str(value) for key, value in files.items()}


def load(tiny, name):
    model = load_model(Config.fromfile(tiny[f'{name}_config']), tiny[f'{name}_checkpoint'])
    pixels, images = load_image(tiny['image'], model)
    return model, pixels, images


def test_image_is_cropped_and_normalised_as_the_test_pipeline(tiny):
    model, pixels, images = load(tiny, 'rils')
    assert pixels.shape == (32, 32, 3) and images.shape == (1, 3, 32, 32)
    mean = torch.tensor([122.770938, 116.7460125, 104.09373615])
    std = torch.tensor([68.5005327, 66.6321579, 70.32316305])
    expected = (torch.tensor(pixels).float().permute(2, 0, 1) - mean[:, None, None]) / \
        std[:, None, None]
    assert torch.allclose(images[0], expected, atol=1e-5)


def test_rils_teacher_maps_equal_a_direct_computation(tiny):
    model, _, images = load(tiny, 'rils')
    maps = patch_caption_maps(model, images, CAPTIONS)
    with torch.no_grad():
        tokens = intact_outputs(model.backbone, images)[-1]  # 1 x (1 + 16) x 32
        head = model.image_head
        patches = F.normalize(head.projection(head.norm(tokens[:, 1:])), dim=-1)
        text = F.normalize(model.text_encoder(open_clip.tokenize(CAPTIONS)), dim=-1)
        temperature = model.head.loss_module.teacher_temperature
        expected = (patches @ text.t() / temperature).softmax(dim=-1)  # 1 x 16 x 3
    assert maps.temperature == temperature == 0.04
    assert maps.probabilities.shape == (1, 3, 4, 4)
    assert torch.allclose(maps.probabilities.flatten(2).transpose(1, 2), expected, atol=1e-6)
    assert torch.allclose(maps.probabilities.sum(dim=1), torch.ones(1, 4, 4), atol=1e-6)


def test_rils_student_maps_give_the_reconstruction_loss_map(tiny):
    """KL(teacher || student) of the two maps, on the masked patches, is the per-patch loss
    that masks.py draws (the loss's own dense_kl) for the same seed."""
    model, _, images = load(tiny, 'rils')
    teacher = patch_caption_maps(model, images, CAPTIONS)
    student = masked_patch_caption_maps(model, images, CAPTIONS, seed=3)
    draw = draw_mask(model, images, seed=3, captions=CAPTIONS)
    assert student.temperature == 0.1
    assert torch.equal(student.hidden.flatten(1), draw.hidden)
    hidden = draw.hidden.bool()
    assert int(hidden.sum()) == 12  # round(16 * 0.75)
    p, q = teacher.probabilities.flatten(2), student.probabilities.flatten(2)  # 1 x K x L
    kl = (p * (p.log() - q.log())).sum(dim=1)
    assert torch.allclose(kl[hidden], draw.loss[hidden], rtol=1e-4, atol=1e-6)
    assert torch.isnan(draw.loss[~hidden]).all()
    assert torch.allclose(draw.loss_total, kl[hidden].mean(), rtol=1e-4)
    assert not torch.equal(draw_mask(model, images, seed=4, captions=CAPTIONS).hidden,
                           draw.hidden)


def test_clip_maps_use_the_logit_scale(tiny):
    model, _, images = load(tiny, 'clip')
    maps = patch_caption_maps(model, images, CAPTIONS)
    with torch.no_grad():
        patches = F.normalize(model.image_head.project(model.image_tokens(images)[:, 1:]), dim=-1)
        logits = model.get_logit_scale() * patches @ model.encode_text(
            open_clip.tokenize(CAPTIONS)).t()
    assert maps.temperature == pytest.approx(0.07)
    assert torch.allclose(maps.probabilities.flatten(2).transpose(1, 2),
                          logits.softmax(dim=-1), atol=1e-6)
    with pytest.raises(VisualizationInputError, match='only RILS'):
        masked_patch_caption_maps(model, images, CAPTIONS)
    with pytest.raises(VisualizationInputError, match='draws no masks'):
        draw_mask(model, images)


def _check_attention(attention, module, weights, inputs, output, value):
    """Rows sum to 1, and the weights reproduce the block's attention output."""
    assert torch.allclose(weights.sum(dim=-1), torch.ones(weights.shape[:-1]), atol=1e-6)
    assert (attention.class_to_patches().sum(dim=(-2, -1)) <= 1 + 1e-6).all()
    B, N, C = inputs.shape
    v = value(inputs).reshape(B, N, weights.shape[1], -1).transpose(1, 2)
    recomputed = module((weights @ v).transpose(1, 2).reshape(B, N, C))
    assert torch.allclose(recomputed, output, atol=1e-5)


def _capture(module):
    seen = {}
    handle = module.register_forward_hook(
        lambda m, args, out: seen.update(x=args[0], out=out[0] if isinstance(out, tuple)
                                         else out))
    return seen, handle


def test_attention_is_the_last_blocks_own(tiny):
    model, _, images = load(tiny, 'mae')
    attention = last_block_attention(model, images)
    assert attention.weights.shape == (1, 2, 17, 17)
    attn = model.backbone.layers[-1].attn
    seen, handle = _capture(attn)
    with torch.no_grad():
        model.backbone(images, mask=False)
        handle.remove()
        _check_attention(attention, attn.proj, attention.weights, seen['x'], seen['out'],
                         lambda x: F.linear(x, attn.qkv.weight, attn.qkv_bias())[..., 64:])


def test_open_clip_model_patch_maps_and_attention(tiny):
    model, _, images = load(tiny, 'open_clip')
    maps = patch_caption_maps(model, images, CAPTIONS)
    clip = model.clip
    with torch.no_grad():
        clip.visual.output_tokens = True
        _, tokens = clip.visual(images)  # ln_post'd patch tokens
        clip.visual.output_tokens = False
        patches = F.normalize(tokens @ clip.visual.proj, dim=-1)
        text = F.normalize(clip.encode_text(open_clip.get_tokenizer(OPEN_CLIP_ARCH)(CAPTIONS)),
                           dim=-1)
        expected = (clip.logit_scale.exp() * patches @ text.t()).softmax(dim=-1)
    assert torch.allclose(maps.probabilities.flatten(2).transpose(1, 2), expected, atol=1e-6)

    attention = last_block_attention(model, images)
    attn = clip.visual.transformer.resblocks[-1].attn
    seen, handle = _capture(attn)
    with torch.no_grad():
        clip.visual(images)
        handle.remove()
        _check_attention(attention, attn.out_proj, attention.weights, seen['x'], seen['out'],
                         lambda x: F.linear(x, attn.in_proj_weight, attn.in_proj_bias)[..., 64:])


def test_mae_and_milan_mask_losses_are_the_models_own(tiny, tmp_path):
    mae, _, images = load(tiny, 'mae')
    draw = draw_mask(mae, images, seed=5)
    torch.manual_seed(5)
    with torch.no_grad():
        assert torch.allclose(draw.loss_total[0], mae.loss(images, [])['loss'], rtol=1e-5)
    hidden = draw.hidden.bool()
    assert int(hidden.sum()) == 12 and torch.isnan(draw.loss[~hidden]).all()
    assert torch.allclose(draw.loss[hidden].mean(), draw.loss_total[0], rtol=1e-5)
    with pytest.raises(VisualizationInputError, match='has no text tower'):
        patch_caption_maps(mae, images, CAPTIONS)

    milan, pixels, images = load(tiny, 'milan')
    draw = draw_mask(milan, images, seed=7)
    torch.manual_seed(7)
    with torch.no_grad():
        assert torch.allclose(draw.loss_total[0], milan.loss(images, [])['loss'], rtol=1e-5)
    assert int(draw.hidden.sum()) == 12 and torch.isfinite(draw.loss).all()
    assert torch.allclose(draw.importance.sum(), torch.tensor(1.0))
    size = draw_masks_figure(milan, pixels, [draw], str(tmp_path / 'milan.png'), panel_px=100)
    assert size == png_size(tmp_path / 'milan.png') == (400, 100)


@pytest.mark.parametrize('checkpoint,message', [
    ('clip', 'keys of RILS are missing'), ('mae', 'size mismatch for neck.decoder_pred')])
def test_checkpoint_of_another_model_is_refused(tiny, checkpoint, message):
    with pytest.raises(CheckpointKeysError, match=message):
        load_model(Config.fromfile(tiny['rils_config']), tiny[f'{checkpoint}_checkpoint'])


def test_numpy_tsne_separates_clusters_and_reads_caption_files(tmp_path):
    rng = np.random.default_rng(0)
    features = np.vstack([rng.normal(0, 1, (15, 8)), rng.normal(5, 1, (15, 8))])
    points = tsne(features, backend='numpy')  # 1000 iterations
    assert np.array_equal(points, tsne(features, backend='numpy'))
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.argmin(axis=1)
    assert ((nearest < 15) == (np.arange(30) < 15)).all()

    (tmp_path / 'captions.jsonl').write_text(
        json.dumps(dict(filepath='a.png', caption='a large red circle on the left')) + '\n' +
        json.dumps(dict(filepath='b.png', caption='x', classname='blue square')) + '\n')
    assert read_labelled_images(str(tmp_path / 'captions.jsonl')) == [
        (str(tmp_path / 'a.png'), 'red circle'), (str(tmp_path / 'b.png'), 'blue square')]


def test_tools_write_pngs_of_the_documented_size(tiny, tmp_path):
    out = tmp_path / 'patch.png'
    result = run_tool('patch_sentence_map', tiny['rils_config'], tiny['rils_checkpoint'],
                      tiny['image'], '--captions', *CAPTIONS[:2], '--panel-size', 120,
                      '--out', out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert png_size(out) == (3 * 120, 2 * 120)  # image + 2 captions; teacher and student

    out = tmp_path / 'attention.png'
    result = run_tool('attention_map', tiny['mae_config'], tiny['mae_checkpoint'],
                      tiny['image'], '--per-head', '--panel-size', 100, '--out', out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert png_size(out) == (4 * 100, 100)  # image, mean, 2 heads

    out = tmp_path / 'masks.png'
    result = run_tool('masks', tiny['rils_config'], tiny['rils_checkpoint'], tiny['image'],
                      '--draws', 2, '--panel-size', 100, '--out', out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert png_size(out) == (3 * 100, 2 * 100)

    out = tmp_path / 'tsne.png'
    result = run_tool('tsne', tiny['clip_config'], tiny['clip_checkpoint'], '--data',
                      tiny['data'], '--iterations', 300, '--size', 300, '--out', out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert png_size(out) == (300 + 260, 300)
    assert '20 images' in result.stdout  # 12 val + 8 heldout


def test_missing_file_is_one_line_with_status_2(tiny, tmp_path):
    result = run_tool('masks', tiny['rils_config'], tiny['rils_checkpoint'],
                      tmp_path / 'nope.png', '--out', tmp_path / 'x.png')
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'tools/visualization/masks.py: error: image not found: {tmp_path / "nope.png"}']


def test_wrong_model_or_checkpoint_is_one_line_with_status_2(tiny, monkeypatch, capsys):
    """The same path as the command line, in this process: run_cli around the tool's main."""
    import importlib.util

    from rils_mm.tools.cli import run_cli
    monkeypatch.syspath_prepend(osp.join(REPO, 'tools', 'visualization'))
    spec = importlib.util.spec_from_file_location(
        'masks_tool', osp.join(REPO, 'tools', 'visualization', 'masks.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for config, checkpoint, expected in [
            ('clip', 'clip', 'ImageTextPretrainer draws no masks'),
            ('rils', 'mae', f'{tiny["mae_checkpoint"]} does not fit {tiny["rils_config"]}')]:
        args = tool.parse_args([tiny[f'{config}_config'], tiny[f'{checkpoint}_checkpoint'],
                                tiny['image'], '--out', 'unused.png'])
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda _: tool.main(args), [], prog=tool.PROG)
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f'{tool.PROG}: error: {expected}')


def png_header_only(path, width, height):
    """A PNG whose header announces ``width`` x ``height`` grey pixels (the data is cut short:
    a decompression bomb is refused from its header, before any pixel is decoded)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack('>I', len(data)) + kind + data
                + struct.pack('>I', zlib.crc32(kind + data)))

    header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    with open(path, 'wb') as file:
        file.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header)
                   + chunk(b'IDAT', zlib.compress(b'\0' * (width + 1) * 4)) + chunk(b'IEND', b''))


@pytest.mark.parametrize('side', [10000, 20000])  # PIL: a warning past 89 M pixels, an error
def test_decompression_bomb_image_is_refused_in_one_line(tiny, tmp_path, side):  # past 179 M
    image = tmp_path / 'bomb.png'
    png_header_only(image, side, side)
    result = run_tool('patch_sentence_map', tiny['rils_config'], tiny['rils_checkpoint'], image,
                      '--captions', 'a red circle', '--out', tmp_path / 'map.png')
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr and 'DecompressionBomb' not in result.stderr
    lines = [line for line in result.stderr.splitlines() if 'error:' in line]
    assert lines == [
        f'tools/visualization/patch_sentence_map.py: error: image {image} has {side * side} '
        f'pixels, more than the {Image.MAX_IMAGE_PIXELS} PIL decodes without a '
        f'decompression-bomb warning; refused without decoding it (downscale it first if it is '
        f'genuine)']
    assert not (tmp_path / 'map.png').exists()
