"""Checked conversion of pretraining checkpoints for mmpretrain, mmdet, mmseg, timm, and the
open_clip import."""
import copy
import importlib
import os.path as osp

import pytest
import torch
from mmengine.registry import DefaultScope

from rils_mm.models.utils.checkpoint_loading import load_checked
from rils_mm.tools.converters import (ConversionError, extract_vision_encoder, open_clip_to_rils,
                                      rils_vit_to_timm)
from rils_mm.tools.model_converters import rils_to_toolbox_main

from transfer_helpers import PRETRAIN_SIZE, TINY_ARCH

IMAGES = torch.randn(2, 3, PRETRAIN_SIZE, PRETRAIN_SIZE, generator=torch.Generator().manual_seed(1))


def build_in(toolbox, cfg):
    registry = importlib.import_module(f'{toolbox}.registry').MODELS
    with DefaultScope.overwrite_default_scope(toolbox):
        return registry.build(cfg)


@pytest.mark.parametrize('toolbox', ['mmpretrain', 'mmdet', 'mmseg'])
def test_converted_encoder_loads_fully_and_gives_pretraining_features(
        toolbox, pretrain_checkpoint, tmp_path, capsys):
    src, pretrainer = pretrain_checkpoint
    dst = str(tmp_path / f'encoder_{toolbox}.pth')
    rils_to_toolbox_main([src, dst, '--format', toolbox])
    out = capsys.readouterr().out
    assert '0 expected keys missing' in out and 'text_encoder' in out  # reported, left out

    cfg = dict(type='RILSViT', arch=TINY_ARCH, img_size=PRETRAIN_SIZE, patch_size=16,
               out_type='raw',
               init_cfg=dict(type='CheckedPretrained', checkpoint=dst, prefix='backbone.'))
    backbone = build_in(toolbox, cfg)
    assert type(backbone) is type(pretrainer.backbone)  # one class in every registry
    backbone.init_weights()  # the config path: CheckedPretrained, then the backbone's own init
    backbone.eval()
    report = load_checked(copy.deepcopy(backbone), dst, prefix='backbone.')
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.matched) == sorted(backbone.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(backbone(IMAGES)[-1], pretrainer.backbone(IMAGES)[-1])
        # A transfer-sized input works too (positions interpolated).
        assert backbone(torch.randn(1, 3, 96, 128))[-1].shape == (1, 1 + 6 * 8, 32)


def test_cli_verifies_against_a_detection_config(pretrain_checkpoint, tmp_path, capsys):
    """--config loads the written file into that config's backbone (ViTDet: the relative
    position tables are allowed to be missing, nothing else)."""
    src, _ = pretrain_checkpoint
    coco = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                    'configs/mask_rcnn/rils_vit-b16_mask-rcnn_vitdet-lsj-100e_coco.py')
    config = tmp_path / 'tiny_vitdet.py'
    config.write_text(f"_base_ = ['{coco}']\n"
                      f"model = dict(backbone=dict(arch=dict(_delete_=True, **{TINY_ARCH!r}), "
                      "img_size=(128, 128), "
                      "window_size=4, window_block_indexes=[0, 1, 3], out_indices=[3]))\n")
    rils_to_toolbox_main([src, str(tmp_path / 'enc.pth'), '--config', str(config)])
    out = capsys.readouterr().out
    assert 'wrote' in out
    # The report goes to the mmengine logger; check the numbers through the library call.
    from rils_mm.tools.model_converters import verify_with_config
    report = verify_with_config(str(config), str(tmp_path / 'enc.pth'))
    assert len(report.matched) == 58 and report.unexpected == []
    assert report.missing == report.ignored_missing and len(report.missing) == 8  # rel_pos_h/w


def test_missing_backbone_keys_fail_with_their_names(pretrain_checkpoint, tmp_path):
    src, pretrainer = pretrain_checkpoint
    state = torch.load(src, weights_only=True)['state_dict']
    for key in ('backbone.layers.1.attn.qkv.weight', 'backbone.layers.3.ln2.bias'):
        del state[key]
    broken = str(tmp_path / 'broken.pth')
    torch.save(dict(state_dict=state), broken)

    with pytest.raises(ConversionError, match=r'2 keys are missing.*layers\.1\.attn\.qkv\.weight'):
        extract_vision_encoder(broken)
    with pytest.raises(SystemExit):  # the CLI refuses too
        from rils_mm.tools.model_converters import run
        run(rils_to_toolbox_main, [broken, str(tmp_path / 'x.pth')])
    # Explicitly allowed: written, and then the checked loader refuses at load time.
    dst = str(tmp_path / 'partial.pth')
    rils_to_toolbox_main([broken, dst, '--allow-missing'])
    backbone = build_in('mmdet', dict(
        type='RILSViT', arch=TINY_ARCH, img_size=PRETRAIN_SIZE, patch_size=16,
        init_cfg=dict(type='CheckedPretrained', checkpoint=dst, prefix='backbone.')))
    with pytest.raises(RuntimeError, match=r'layers\.1\.attn\.qkv\.weight') as err:
        backbone.init_weights()
    assert 'layers.3.ln2.bias' in str(err.value)
    # Also a wrong prefix: nothing would load.
    with pytest.raises(ConversionError, match='no key starts with "encoder."'):
        extract_vision_encoder(src, prefix='encoder.')


def test_timm_layout_gives_the_same_features(pretrain_checkpoint):
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer
    _, pretrainer = pretrain_checkpoint
    encoder = extract_vision_encoder(
        {'backbone.' + k: v for k, v in pretrainer.backbone.state_dict().items()})
    timm_sd = rils_vit_to_timm(encoder.state_dict)
    assert timm_sd.unmapped == []
    qkv_bias = timm_sd.state_dict['blocks.0.attn.qkv.bias']
    assert torch.equal(qkv_bias[32:64], torch.zeros(32))  # zero k part
    assert torch.equal(qkv_bias[:32], encoder.state_dict['layers.0.attn.q_bias'])

    timm_vit = VisionTransformer(
        img_size=PRETRAIN_SIZE, patch_size=16, embed_dim=32, depth=4, num_heads=2,
        mlp_ratio=2, qkv_bias=True, num_classes=0, global_pool='token',
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    timm_vit.load_state_dict(timm_sd.state_dict, strict=True)  # every key, both ways
    with torch.no_grad():
        torch.testing.assert_close(timm_vit.forward_features(IMAGES),
                                   pretrainer.backbone(IMAGES)[-1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('quick_gelu', [True, False])
def test_open_clip_import_maps_both_towers(quick_gelu, tmp_path):
    from mmpretrain.registry import MODELS
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    clip = CLIP(embed_dim=16,
                vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=16,
                                         image_size=PRETRAIN_SIZE, mlp_ratio=2),
                text_cfg=CLIPTextCfg(context_length=16, vocab_size=64, width=32, heads=2,
                                     layers=2),
                quick_gelu=quick_gelu).eval()
    with torch.no_grad():  # non-zero biases everywhere (open_clip zero-initialises some)
        for name, param in clip.named_parameters():
            if name.endswith('bias'):
                param.normal_(std=0.1)
    path = tmp_path / 'open_clip_tiny.pt'
    torch.save(dict(epoch=1, state_dict={'module.' + k: v for k, v in clip.state_dict().items()}),
               path)

    from rils_mm.tools.converters import load_state_dict_file
    result = open_clip_to_rils(load_state_dict_file(str(path)))
    assert result.missing == [] and result.unmapped == []
    act = dict(act_cfg=dict(type='QuickGELU')) if quick_gelu else dict()
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        ours = MODELS.build(dict(
            type='ImageTextPretrainer',
            backbone=dict(type='RILSViT', arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                                                    feedforward_channels=64),
                          img_size=PRETRAIN_SIZE, patch_size=16, pre_norm=True,
                          norm_cfg=dict(type='LN', eps=1e-5), layer_cfgs=act),
            text_encoder=dict(type='CLIPTextEncoder', context_length=16, vocab_size=64,
                              width=32, heads=2, layers=2, output_dim=16,
                              quick_gelu=quick_gelu),
            image_head=dict(type='ImageEmbeddingHead', pooling='cls_token'),
            embed_dims=16)).eval()
    ours.load_state_dict(result.state_dict, strict=True)  # every key of our model, both ways

    texts = torch.randint(1, 60, (2, 16))
    texts[:, 9] = 63  # end-of-text = highest id
    texts[:, 10:] = 0
    clip.visual.output_tokens = True
    with torch.no_grad():
        pooled, patch_tokens = clip.visual(IMAGES)
        tokens = ours.backbone(IMAGES)[-1]
        torch.testing.assert_close(tokens[:, 1:], patch_tokens, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.image_head(tokens), pooled, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.text_encoder(texts), clip.encode_text(texts),
                                   rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.logit_scale, clip.logit_scale)
