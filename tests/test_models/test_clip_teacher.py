"""The CLIP teacher (MILAN's target generator) against direct computations, and mmpretrain's
MILAN with our pretraining ViT against the same algorithm with mmpretrain's MILANViT."""
import copy

import pytest
import torch
from mmpretrain.registry import MODELS

import rils_mm  # noqa: F401
from test_framework import TINY_ARCH, to_mae_vit_state
from test_rils_algorithm import TINY_RILS

TINY_CLIP = {k: v for k, v in copy.deepcopy(TINY_RILS).items() if k not in ('neck', 'head')}
TINY_CLIP['type'] = 'ImageTextPretrainer'


def test_teacher_from_our_checkpoint_matches_the_model(clip_checkpoint):
    source, path = clip_checkpoint
    teacher = MODELS.build(dict(type='CLIPTeacher', model=TINY_CLIP, checkpoint=path))
    teacher.init_weights()  # keeps the loaded weights
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    images = torch.randn(3, 3, 32, 32)
    features, attention = teacher(images)
    source.eval()
    with torch.no_grad():
        tokens = source.backbone(images, mask=False)[-1]
        torch.testing.assert_close(features, source.image_head.project(tokens))
        # The last block's class-token attention, by torch's own multi-head attention.
        vit = source.backbone
        x = vit.patch_embed(images)[0]
        x = torch.cat((vit.cls_token.expand(3, -1, -1), x), dim=1) + vit.pos_embed
        x = vit.layers[0](x)
        last = vit.layers[1]
        reference = torch.nn.MultiheadAttention(32, 4, batch_first=True)
        reference.in_proj_weight.copy_(last.attn.qkv.weight)
        reference.in_proj_bias.copy_(last.attn.qkv_bias())
        normed = last.ln1(x)
        _, weights = reference(normed, normed, normed, need_weights=True)
    assert features.shape == (3, 17, 16) and attention.shape == (3, 1, 17)
    torch.testing.assert_close(attention, weights[:, :1])
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 1))


def test_teacher_from_an_open_clip_file_matches_open_clip(tmp_path):
    import open_clip
    clip = open_clip.create_model('ViT-B-16', pretrained=None).eval()
    path = str(tmp_path / 'open_clip.pt')
    torch.save(clip.state_dict(), path)
    teacher = MODELS.build(dict(type='CLIPTeacher', model=dict(
        type='OpenCLIPModel', arch='ViT-B-16', pretrained=path)))
    images = torch.randn(1, 3, 224, 224)
    features, attention = teacher(images)
    clip.visual.output_tokens = True
    with torch.no_grad():
        pooled, tokens = clip.visual(images)
    torch.testing.assert_close(features[:, 0], pooled, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(features[:, 1:], tokens @ clip.visual.proj, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(attention.sum(-1), torch.ones(1, 1))
    with pytest.raises(FileNotFoundError, match='nowhere.pt'):
        MODELS.build(dict(type='CLIPTeacher', model=dict(
            type='OpenCLIPModel', arch='ViT-B-16', pretrained=str(tmp_path / 'nowhere.pt'))))
    with pytest.raises(ValueError, match='no weights'):
        MODELS.build(dict(type='CLIPTeacher', model=TINY_CLIP))


def test_mmpretrain_milan_with_our_vit_equals_milanvit(clip_checkpoint):
    _, path = clip_checkpoint

    def milan(backbone_type):
        torch.manual_seed(0)
        model = MODELS.build(dict(
            type='MILAN',
            backbone=dict(type=backbone_type, arch=TINY_ARCH, img_size=32, patch_size=8,
                          mask_ratio=0.75),
            neck=dict(type='MILANPretrainDecoder', num_patches=16, patch_size=8, embed_dim=32,
                      decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                      predict_feature_dim=16),
            head=dict(type='MIMHead', loss=dict(type='CosineSimilarityLoss', shift_factor=2.0,
                                                scale_factor=2.0)),
            target_generator=dict(type='CLIPTeacher', model=TINY_CLIP, checkpoint=path),
            data_preprocessor=dict(type='ImageTextDataPreprocessor', images_only=True)))
        model.init_weights()
        return model

    ours, reference = milan('RILSPretrainViT'), milan('MILANViT')
    reference.backbone.load_state_dict(to_mae_vit_state(ours.backbone.state_dict()))
    reference.neck.load_state_dict(ours.neck.state_dict())
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    batch = ours.data_preprocessor(dict(inputs=dict(images=images)), True)
    torch.manual_seed(3)  # the same multinomial draws of the semantic masking
    loss = ours(batch['inputs'], batch['data_samples'], mode='loss')['loss']
    torch.manual_seed(3)
    expected = reference(batch['inputs'], batch['data_samples'], mode='loss')['loss']
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert ours.backbone.layers[0].attn.q_bias.grad is not None
    assert all(p.grad is None for p in ours.target_generator.parameters())


def test_the_algorithms_init_cfg_does_not_reach_the_teacher(clip_checkpoint):
    """An algorithm-level Xavier/Constant init_cfg is applied to every sub-module before the
    children's init_weights; the teacher loads its file again there."""
    source, path = clip_checkpoint
    model = MODELS.build(dict(
        type='MILAN',
        backbone=dict(type='RILSPretrainViT', arch=TINY_ARCH, img_size=32, patch_size=8),
        neck=dict(type='MILANPretrainDecoder', num_patches=16, patch_size=8, embed_dim=32,
                  decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                  predict_feature_dim=16),
        head=dict(type='MIMHead', loss=dict(type='CosineSimilarityLoss')),
        target_generator=dict(type='CLIPTeacher', model=TINY_CLIP, checkpoint=path),
        init_cfg=[dict(type='Xavier', layer='Linear', distribution='uniform'),
                  dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)]))
    model.init_weights()
    tower = model.target_generator.image_tower.state_dict()
    image_keys = [k for k in source.state_dict() if k.startswith(('backbone.', 'image_head.'))]
    assert sorted(tower) == sorted(image_keys)  # the image tower only
    for key in image_keys:
        assert torch.equal(tower[key], source.state_dict()[key]), key


def test_semantic_masking_keeps_patches_in_the_order_of_the_attention():
    """Over many draws on one attention map, each patch is kept more often the more attention
    it has, and every draw keeps exactly round(L * (1 - ratio)) patches."""
    vit = MODELS.build(dict(type='RILSPretrainViT', arch=TINY_ARCH, img_size=32, patch_size=8,
                            mask_ratio=0.75))
    importance = torch.linspace(0.01, 1.0, 16).repeat(2000, 1)
    torch.manual_seed(0)
    with torch.no_grad():
        _, _, ids_keep, ids_dump = vit(torch.zeros(2000, 3, 32, 32), importance=importance)
    assert ids_keep.shape == (2000, 4) and ids_dump.shape == (2000, 12)
    kept = torch.zeros(16).index_add_(0, ids_keep.flatten(), torch.ones(ids_keep.numel()))
    # Spearman's rank correlation between attention and keep count (fixed seed, 2000 draws).
    ranks = torch.argsort(torch.argsort(kept)).float()
    spearman = torch.corrcoef(torch.stack([ranks, torch.arange(16.)]))[0, 1]
    assert spearman > 0.95, kept
    assert kept[12:].sum() > 3 * kept[:4].sum()


def test_uniform_masking_switch_gives_equal_weights(clip_checkpoint):
    _, path = clip_checkpoint
    teacher = MODELS.build(dict(type='CLIPTeacher', model=TINY_CLIP, checkpoint=path,
                                masking='uniform'))
    features, attention = teacher(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(attention, torch.full((2, 1, 17), 1 / 17))
    with pytest.raises(ValueError, match='masking'):
        MODELS.build(dict(type='CLIPTeacher', model=TINY_CLIP, checkpoint=path, masking='x'))
