"""MILAN's parts beyond mmpretrain's classes: the decoder switch, the pixel-target algorithm,
the ablation configs of the paper's Table 4, and the teacher's checks."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmpretrain.registry import MODELS

import rils_mm  # noqa: F401
from test_clip_teacher import TINY_CLIP
from test_framework import TINY_ARCH, TINY_MAE_HEAD

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_NECK = dict(num_patches=16, patch_size=8, embed_dim=32, decoder_embed_dim=16,
                 decoder_depth=2, decoder_num_heads=2, predict_feature_dim=16)


def masked_encoding(batch=3):
    """Encoder tokens of a masked pass (4 of 16 patches kept) and its indices."""
    torch.manual_seed(0)
    vit = MODELS.build(dict(type='RILSPretrainViT', arch=TINY_ARCH, img_size=32, patch_size=8,
                            mask_ratio=0.75))
    with torch.no_grad():
        return vit(torch.randn(batch, 3, 32, 32), importance=torch.rand(batch, 16))


def decode_with_hidden(neck, *inputs):
    """The decoder's output and the tokens entering its final norm (after the blocks)."""
    seen = {}
    handle = neck.decoder_norm.register_forward_hook(
        lambda module, args, output: seen.update(hidden=args[0]))
    with torch.no_grad():
        output = neck(*inputs)
    handle.remove()
    return output, seen['hidden']


@pytest.mark.parametrize('neck_type,keeps_visible', [('MILANPretrainDecoder', True),
                                                      ('MAEFeatureDecoder', False)])
def test_prompting_decoder_leaves_the_visible_tokens_unchanged(neck_type, keeps_visible):
    latent, ids_restore, ids_keep, ids_dump = masked_encoding()
    torch.manual_seed(1)
    neck = MODELS.build(dict(type=neck_type, **TINY_NECK))
    neck.init_weights()
    output, hidden = decode_with_hidden(neck, latent, ids_restore, ids_keep, ids_dump)
    assert output.shape == (3, 17, 16)  # class token first, the teacher's width
    with torch.no_grad():
        embedded = neck.decoder_embed(latent)  # B x (1 + 4) x 16, kept-patch order
        positions = neck.decoder_pos_embed.expand(3, -1, -1)
        index = ids_keep.unsqueeze(-1).expand(-1, -1, 16)
        # What enters the first block at the visible positions (and the class token).
        entering = torch.cat([embedded[:, :1] + positions[:, :1],
                              embedded[:, 1:] + positions[:, 1:].gather(1, index)], dim=1)
    leaving = torch.cat([hidden[:, :1], hidden[:, 1:].gather(1, index)], dim=1)
    # The prompting decoder passes them through its blocks bitwise; MAE's updates them.
    assert torch.equal(leaving, entering) is keeps_visible
    masked = hidden[:, 1:].gather(1, ids_dump.unsqueeze(-1).expand(-1, -1, 16))
    assert not torch.allclose(masked, neck.mask_token.expand_as(masked), atol=1e-3)


def test_mae_feature_decoder_is_mmpretrains_mae_decoder_with_another_output():
    latent, ids_restore, ids_keep, ids_dump = masked_encoding()
    ours = MODELS.build(dict(type='MAEFeatureDecoder', **TINY_NECK))
    reference_cfg = {k: v for k, v in TINY_NECK.items() if k != 'predict_feature_dim'}
    reference = MODELS.build(dict(type='MAEPretrainDecoder', **reference_cfg))
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith('decoder_pred')}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert sorted(missing) == ['decoder_pred.bias', 'decoder_pred.weight'] and not unexpected
    output, hidden = decode_with_hidden(ours, latent, ids_restore, ids_keep, ids_dump)
    _, reference_hidden = decode_with_hidden(reference, latent, ids_restore)
    torch.testing.assert_close(hidden, reference_hidden, rtol=0, atol=0)
    torch.testing.assert_close(output, ours.decoder_pred(ours.decoder_norm(hidden)))


def pixel_milan(teacher_path=None, neck_type='MILANPretrainDecoder'):
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='PixelTargetMILAN',
        backbone=dict(type='RILSPretrainViT', arch=TINY_ARCH, img_size=32, patch_size=8,
                      mask_ratio=0.75),
        neck=dict(TINY_NECK, type=neck_type, predict_feature_dim=8 * 8 * 3),
        head=TINY_MAE_HEAD,
        target_generator=teacher_path and dict(type='CLIPTeacher', model=TINY_CLIP,
                                               checkpoint=teacher_path)))
    model.init_weights()
    return model


def test_pixel_target_milan_scores_the_masked_patches_normalised_pixels(clip_checkpoint):
    _, path = clip_checkpoint
    model = pixel_milan(path)
    images = torch.randn(2, 3, 32, 32)
    torch.manual_seed(5)
    loss = model.loss(images, [])['loss']
    # By hand: the same draws from the teacher's attention, MAE's per-patch normalisation
    # (unbiased variance, eps 1e-6) and the mean squared error over the masked patches.
    torch.manual_seed(5)
    with torch.no_grad():
        importance = model.target_generator(images)[1][:, 0, 1:]
        latent, ids_restore, ids_keep, ids_dump = model.backbone(images, importance)
        predictions = model.neck(latent, ids_restore, ids_keep, ids_dump)[:, 1:]
    patches = images.reshape(2, 3, 4, 8, 4, 8).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 192)
    patches = (patches - patches.mean(-1, keepdim=True)) / (
        patches.var(-1, keepdim=True) + 1e-6)**.5
    per_patch = (predictions - patches).pow(2).mean(-1)  # 2 x 16
    masked = torch.ones(2, 16)
    for row in range(2):
        masked[row, ids_keep[row]] = 0
    assert masked.sum() == 2 * 12
    torch.testing.assert_close(loss.detach(), (per_patch * masked).sum() / masked.sum())
    loss.backward()
    assert model.backbone.patch_embed.projection.weight.grad.abs().sum() > 0
    # Without a teacher the masking is uniform and nothing else runs.
    alone = pixel_milan(None, neck_type='MAEFeatureDecoder')
    assert not alone.with_target_generator
    assert torch.isfinite(alone.loss(images, [])['loss'])


def tiny_config(name, teacher_path):
    """A ViT-B/16 MILAN config (one of Table 4's switches) at the tiny test size."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'milan', name)).model
    cfg.backbone.update(arch=TINY_ARCH, img_size=32, patch_size=8)
    pixels = cfg.type == 'PixelTargetMILAN'
    cfg.neck.update(TINY_NECK, predict_feature_dim=192 if pixels else 16)
    if pixels:
        cfg.head.patch_size = 8
    cfg.target_generator = dict(type='CLIPTeacher', model=TINY_CLIP, checkpoint=teacher_path,
                                masking=cfg.target_generator.masking)
    return cfg


@pytest.mark.parametrize('name,algorithm,neck,masking', [
    ('pretrain_b16.py', 'MILAN', 'MILANPretrainDecoder', 'attention'),
    ('pretrain_b16_mae-decoder.py', 'MILAN', 'MAEFeatureDecoder', 'attention'),
    ('pretrain_b16_uniform-masking.py', 'MILAN', 'MILANPretrainDecoder', 'uniform'),
    ('pretrain_b16_pixel-target.py', 'PixelTargetMILAN', 'MILANPretrainDecoder', 'attention'),
])
def test_table4_switches_build_and_train(name, algorithm, neck, masking, clip_checkpoint):
    _, path = clip_checkpoint
    cfg = tiny_config(name, path)
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    assert (type(model).__name__, type(model.neck).__name__, model.target_generator.masking) \
        == (algorithm, neck, masking)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    batch = model.data_preprocessor(dict(inputs=dict(images=images)), True)
    loss = model(batch['inputs'], batch['data_samples'], mode='loss')['loss']
    assert torch.isfinite(loss)
    if algorithm == 'MILAN':
        assert 0 <= loss <= 4  # 2 - 2 cos
    loss.backward()
    assert model.backbone.layers[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.target_generator.parameters())


def test_teacher_file_with_other_keys_fails_naming_them(clip_checkpoint, tmp_path):
    source, _ = clip_checkpoint
    state = source.state_dict()
    state.pop('image_head.projection.weight')
    state['image_head.proj'] = torch.zeros(1)
    path = str(tmp_path / 'other.pth')
    torch.save(dict(state_dict=state), path)
    with pytest.raises(Exception) as error:
        MODELS.build(dict(type='CLIPTeacher', model=TINY_CLIP, checkpoint=path))
    message = str(error.value)
    assert 'image_head.projection.weight' in message and 'image_head.proj' in message
    assert path in message


def test_the_teacher_runs_in_the_autocast_dtype(clip_checkpoint):
    """Under AMP the teacher computes in the low-precision dtype and returns float32."""
    _, path = clip_checkpoint
    teacher = MODELS.build(dict(type='CLIPTeacher', model=TINY_CLIP, checkpoint=path))
    seen = []
    projection = teacher.image_tower['backbone'].layers[0].attn.proj
    projection.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    images = torch.randn(2, 3, 32, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        features, attention = teacher(images)
    exact, _ = teacher(images)
    assert seen == [torch.bfloat16, torch.float32]
    assert features.dtype == attention.dtype == torch.float32
    torch.testing.assert_close(features, exact, rtol=0.05, atol=0.05)
