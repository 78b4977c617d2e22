"""ViTDet options of RILSViT, the simple feature pyramid, registration in every toolbox, and the
layer-decay optimizer constructor."""
import importlib
import sys

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from torch import nn

from transfer_helpers import TINY_ARCH
from tool_processes import run_python  # noqa: E402

TOOLBOXES = ['mmpretrain', 'mmdet', 'mmseg']


def build(cfg, toolbox='mmdet'):
    registry = importlib.import_module(f'{toolbox}.registry').MODELS
    with DefaultScope.overwrite_default_scope(toolbox):
        model = registry.build(cfg)
    model.init_weights()
    model.eval()  # mmpretrain's BaseBackbone.train returns None, so no chaining
    return model


def vit(**kwargs):
    cfg = dict(type='RILSViT', arch=TINY_ARCH, img_size=64, patch_size=16, out_type='featmap',
               out_indices=[3])
    cfg.update(kwargs)
    torch.manual_seed(0)
    return build(cfg)


def copy_weights(source, target):
    result = target.load_state_dict(source.state_dict(), strict=False)
    assert all('rel_pos' in k for k in result.missing_keys) and not result.unexpected_keys


def test_import_rils_mm_registers_in_every_toolbox():
    # A fresh interpreter: what ``custom_imports=dict(imports=['rils_mm'])`` gives a config
    # (models register themselves there, the engine its optimizer constructor).
    code = ('import rils_mm, importlib\n'
            'from rils_mm.models.backbones.rils_vit import RILSViT\n'
            'from rils_mm.models.necks import SimpleFeaturePyramid\n'
            'for toolbox in ("mmpretrain", "mmdet", "mmseg"):\n'
            '    registry = importlib.import_module(toolbox + ".registry")\n'
            '    assert registry.MODELS.get("RILSViT") is RILSViT, toolbox\n'
            '    assert registry.MODELS.get("SimpleFeaturePyramid") is SimpleFeaturePyramid\n'
            '    assert registry.OPTIM_WRAPPER_CONSTRUCTORS.get(\n'
            '        "RILSLayerDecayOptimWrapperConstructor"), toolbox\n')
    result = run_python([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1500:]


def test_full_windows_and_zero_relative_positions_equal_global_attention():
    images = torch.randn(2, 3, 64, 64)
    # A 4 x 4 token grid: windows of 4 cover it exactly (no padding), zero tables add nothing.
    windowed = vit(window_size=4, window_block_indexes=[0, 1, 2, 3])
    rel_pos = vit(use_rel_pos=True)
    copy_weights(windowed, rel_pos)
    with torch.no_grad():
        out_windowed, = windowed(images)
        out_rel, = rel_pos(images)
        assert out_windowed.shape == (2, 32, 4, 4)
        torch.testing.assert_close(out_windowed, out_rel)
        # ... and the tables matter once they are non-zero.
        for layer in rel_pos.layers:
            layer.attn.rel_pos_h.normal_()
        assert not torch.allclose(rel_pos(images)[0], out_rel, atol=1e-3)


def test_windows_are_local_and_other_sizes_pad():
    model = vit(window_size=2, window_block_indexes=[0, 1, 2, 3], use_rel_pos=True)
    images = torch.randn(1, 3, 64, 64)
    changed = images.clone()
    changed[..., :16, :16] += 5  # patch (0, 0): inside the top-left 2 x 2 window
    with torch.no_grad():
        before, = model(images)
        after, = model(changed)
    diff = (before - after).abs().sum(dim=1)[0]  # 4 x 4
    assert diff[:2, :2].min() > 0
    diff[:2, :2] = 0
    assert diff.max() == 0
    # A grid that windows do not divide (6 x 7 with windows of 4): padded, then cropped back.
    with torch.no_grad():
        assert model(torch.randn(2, 3, 96, 112))[0].shape == (2, 32, 6, 7)


def test_grid_blocks_checkpointing_and_drop_path_train():
    kwargs = dict(window_size=3, window_block_indexes=[0, 2], use_rel_pos=True)
    plain, checkpointed = vit(**kwargs), vit(with_cp=True, **kwargs)
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 80, 64)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        model(images)[0].square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert 'layers.0.attn.rel_pos_h' in grads[0] and grads[0].keys() == grads[1].keys()
    # Every trainable parameter gets a gradient (DDP needs that); the dropped class token is
    # frozen.
    assert set(grads[0]) == {n for n, p in plain.named_parameters() if p.requires_grad}
    assert not plain.cls_token.requires_grad
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name])
    # Stochastic depth runs per image in windowed blocks.
    dropping = vit(drop_path_rate=0.5, **kwargs)
    dropping.train()
    assert dropping(images)[0].shape == (2, 32, 5, 4)


def test_grid_blocks_reject_class_token_output_and_masking():
    with pytest.raises(ValueError, match='cls_token'):
        vit(window_size=4, window_block_indexes=[0], out_type='cls_token')
    with pytest.raises(ValueError, match='masked pass'):
        vit(use_rel_pos=True).uniform_masked_pass(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize('toolbox', TOOLBOXES)
def test_simple_feature_pyramid_strides(toolbox):
    neck = build(dict(type='SimpleFeaturePyramid', in_channels=32, out_channels=16), toolbox)
    outs = neck([torch.randn(2, 32, 6, 8)])  # a stride-16 map of a 96 x 128 image
    assert [tuple(o.shape[2:]) for o in outs] == [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
    assert {o.shape[1] for o in outs} == {16}
    with pytest.raises(ValueError, match='scale factor 3'):
        build(dict(type='SimpleFeaturePyramid', in_channels=32, out_channels=16,
                   scale_factors=(3.0, ), num_outs=1), toolbox)


class TinyDetector(nn.Module):
    """backbone + neck + head, named as in mmdet/mmseg models."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Conv2d(32, 8, 1)
        self.head = nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(4))


@pytest.mark.parametrize('toolbox', TOOLBOXES)
def test_layer_decay_lr_per_parameter(toolbox):
    model = TinyDetector(vit(use_rel_pos=True, pre_norm=True, fixed_pos_embed=False))
    cfg = dict(
        type='OptimWrapper',
        constructor='RILSLayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.1),
        paramwise_cfg=dict(layer_decay_rate=0.5, norm_decay_mult=0.,
                           custom_keys={'.pos_embed': dict(decay_mult=0.)}))
    with DefaultScope.overwrite_default_scope(toolbox):
        wrapper = build_optim_wrapper(model, cfg)
    groups = {g['param_name']: g for g in wrapper.optimizer.param_groups}
    depth_top = TINY_ARCH['num_layers'] + 1  # stem 0, blocks 1..4, rest 5

    def lr(depth):
        return 1e-3 * 0.5**(depth_top - depth)

    expected_lr = {
        'backbone.pos_embed': lr(0),
        'backbone.patch_embed.projection.weight': lr(0),
        'backbone.pre_norm.weight': lr(0),
        'backbone.layers.0.attn.qkv.weight': lr(1),
        'backbone.layers.2.attn.rel_pos_h': lr(3),
        'backbone.layers.3.ffn.layers.1.weight': lr(4),
        'backbone.ln1.weight': lr(5),
        'neck.weight': lr(5),
        'head.0.weight': lr(5),
    }
    for name, value in expected_lr.items():
        assert groups[name]['lr'] == pytest.approx(value), name
    assert 'backbone.cls_token' not in groups  # dropped with relative positions (ViTDet)
    assert groups['backbone.pos_embed']['weight_decay'] == 0
    assert groups['backbone.layers.1.ln2.weight']['weight_decay'] == 0
    assert groups['head.1.weight']['weight_decay'] == 0
    assert groups['backbone.layers.1.attn.qkv.weight']['weight_decay'] == pytest.approx(0.1)
    assert len(groups) == sum(p.requires_grad for p in model.parameters())


def test_layer_decay_needs_a_layered_backbone():
    model = TinyDetector(nn.Conv2d(3, 32, 1))
    cfg = dict(type='OptimWrapper', constructor='RILSLayerDecayOptimWrapperConstructor',
               optimizer=dict(type='AdamW', lr=1e-3), paramwise_cfg=dict(layer_decay_rate=0.5))
    with pytest.raises(NotImplementedError, match='get_layer_depth'):
        build_optim_wrapper(model, cfg)
