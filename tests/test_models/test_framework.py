"""The pretraining framework: the MAEViT contract, the baselines against their references,
configurable image heads, locked towers and checked tower initialisation."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.optim import build_optim_wrapper
from mmpretrain.registry import MODELS
from open_clip.loss import ClipLoss

import rils_mm  # noqa: F401
from test_losses import written_out_reconstruction_loss
from test_rils_algorithm import TINY_RILS, build, make_batch, use_fixed_mask_noise

TINY_ARCH = dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64)
TINY_MAE_NECK = dict(type='MAEPretrainDecoder', num_patches=16, patch_size=8, in_chans=3,
                     embed_dim=32, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
TINY_MAE_HEAD = dict(type='MAEPretrainHead', norm_pix=True, patch_size=8,
                     loss=dict(type='PixelReconstructionLoss', criterion='L2'))


def tiny_mae(backbone_type):
    cfg = dict(type='MAE',
               backbone=dict(type=backbone_type, arch=TINY_ARCH, img_size=32, patch_size=8,
                             mask_ratio=0.75),
               neck=TINY_MAE_NECK, head=TINY_MAE_HEAD,
               data_preprocessor=dict(type='ImageTextDataPreprocessor', images_only=True))
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def to_mae_vit_state(state):
    """Our q/v biases as the full qkv bias (zero k part) of mmpretrain's MAEViT."""
    out = {}
    for key, value in state.items():
        if key.endswith('attn.q_bias'):
            prefix = key[:-len('q_bias')]
            out[prefix + 'qkv.bias'] = torch.cat(
                (value, torch.zeros_like(value), state[prefix + 'v_bias']))
        elif not key.endswith('attn.v_bias'):
            out[key] = value
    return out


def image_batch(model, images):
    batch = model.data_preprocessor(dict(inputs=dict(images=images)), True)
    return batch['inputs'], batch['data_samples']


def test_mmpretrain_mae_accepts_our_vit_and_matches_maevit():
    ours, reference = tiny_mae('RILSPretrainViT'), tiny_mae('MAEViT')
    missing, unexpected = reference.load_state_dict(to_mae_vit_state(ours.state_dict()),
                                                    strict=True)
    images, _, _ = make_batch(4)
    inputs, samples = image_batch(ours, images)
    assert isinstance(inputs, torch.Tensor) and inputs.shape == (4, 3, 32, 32)
    torch.manual_seed(7)
    loss = ours(inputs, samples, mode='loss')['loss']
    torch.manual_seed(7)  # the same masking noise (both draw torch.rand(B, L) first)
    expected = reference(inputs, samples, mode='loss')['loss']
    torch.testing.assert_close(loss, expected)
    # mmpretrain's MAE trains a step with it.
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-3)
    before = ours.backbone.layers[0].attn.q_bias.detach().clone()
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, ours.backbone.layers[0].attn.q_bias)
    # The pretraining ViT masks by default; RILSViT (transfer) does not; same keys.
    vit = ours.backbone
    assert len(vit(inputs)) == 3 and vit(inputs)[0].shape == (4, 1 + 4, 32)
    transfer = MODELS.build(dict(type='RILSViT', arch=TINY_ARCH, img_size=32, patch_size=8))
    transfer.load_state_dict(vit.state_dict(), strict=True)
    torch.testing.assert_close(transfer(inputs)[-1], vit(inputs, mask=False)[-1])


def test_milan_style_masking_keeps_patches_by_importance():
    vit = MODELS.build(dict(type='RILSPretrainViT', arch=TINY_ARCH, img_size=32, patch_size=8,
                            mask_ratio=0.75))
    images = torch.randn(2, 3, 32, 32)
    importance = torch.zeros(2, 16)
    importance[:, [1, 5, 9, 13]] = 1.0  # only these can be drawn first
    latent, ids_restore, ids_keep, ids_dump = vit(images, importance=importance)
    assert latent.shape == (2, 5, 32) and ids_restore.shape == (2, 16)
    assert sorted(ids_keep[0].tolist()) == [1, 5, 9, 13] and ids_dump.shape == (2, 12)
    # The same call positionally, as mmpretrain's MILAN makes it.
    assert vit(images, importance)[0].shape == (2, 5, 32)


def test_mae_clip_total_is_the_weighted_sum_of_the_references():
    cfg = {k: v for k, v in copy.deepcopy(TINY_RILS).items() if k not in ('neck', 'head')}
    cfg.update(type='MAECLIP', neck=TINY_MAE_NECK, head=TINY_MAE_HEAD, pixel_loss_weight=0.7)
    model = build(cfg)
    images, texts, noise = make_batch()
    use_fixed_mask_noise(model, noise)
    batch = model.data_preprocessor(dict(inputs=dict(images=images, texts=texts)), True)
    losses = model(**batch, mode='loss')
    total, _ = model.parse_losses(losses)
    normed, tokens = batch['inputs']['images'], None
    with torch.no_grad():
        tokens = model.backbone(normed, mask=False)[-1]
        image = F.normalize(tokens[:, 1:].mean(1) @ model.image_head.projection.weight.t(), dim=-1)
        text = model.encode_text(batch['inputs']['texts'])
        clip = ClipLoss()(image, text, model.get_logit_scale())
        latent, mask, ids_restore = model.backbone(normed, mask=True, noise=noise)
        pixels = MODELS.build(TINY_MAE_HEAD).loss(model.neck(latent, ids_restore), normed, mask)
    torch.testing.assert_close(losses['loss_contrastive'], clip)
    torch.testing.assert_close(losses['loss_pixel'], 0.7 * pixels)
    torch.testing.assert_close(total, clip + 0.7 * pixels)


def test_vision_space_loss_equals_the_formula_with_fixed_prototypes():
    cfg = copy.deepcopy(TINY_RILS)
    cfg['head']['prototypes'] = dict(type='RandomPrototypes', num_prototypes=12, seed=3)
    model = build(cfg)
    prototypes = model.head.prototypes.prototypes
    assert prototypes.shape == (12, 16) and not prototypes.requires_grad
    # Drawn from the seed alone: another run seed gives the same vectors.
    torch.manual_seed(123)
    again = MODELS.build(dict(type='RandomPrototypes', num_prototypes=12, embed_dims=16, seed=3))
    torch.testing.assert_close(again.prototypes, prototypes, rtol=0, atol=0)

    images, texts, noise = make_batch()
    use_fixed_mask_noise(model, noise)
    batch = model.data_preprocessor(dict(inputs=dict(images=images, texts=texts)), True)
    losses = model(**batch, mode='loss')
    with torch.no_grad():
        normed = batch['inputs']['images']
        tokens = model.backbone(normed, mask=False)[-1]
        latent, mask, ids_restore = model.backbone(normed, mask=True, noise=noise)
        projection = model.image_head.projection.weight.t()
        pred, target = model.neck(latent, ids_restore) @ projection, tokens[:, 1:] @ projection
        image = F.normalize(tokens[:, 1:].mean(1) @ projection, dim=-1)
        text = model.encode_text(batch['inputs']['texts'])
        correct = (image @ text.t()).argmax(1) == torch.arange(8)
    expected = written_out_reconstruction_loss(pred, target, prototypes, mask, correct, 0.1, 0.04)
    assert losses['loss_reconstruction'].item() == pytest.approx(0.5 * expected, rel=1e-5)
    # Not the captions: the RILS loss on the same batch differs.
    rils = build()
    use_fixed_mask_noise(rils, noise)
    assert rils(**batch, mode='loss')['loss_reconstruction'].item() != pytest.approx(
        losses['loss_reconstruction'].item(), rel=1e-3)


@pytest.mark.parametrize('pooling', ['mean', 'cls_token', 'attention'])
def test_image_head_poolings(pooling):
    head = MODELS.build(dict(type='ImageEmbeddingHead', in_channels=32, embed_dims=16,
                             pooling=pooling, attention_heads=4,
                             norm_cfg=dict(type='LN') if pooling == 'cls_token' else None))
    head.init_weights()
    tokens = torch.randn(3, 17, 32)
    out = head(tokens)
    assert out.shape == (3, 16)
    if pooling == 'mean':
        torch.testing.assert_close(out, tokens[:, 1:].mean(1) @ head.projection.weight.t())
    elif pooling == 'cls_token':
        torch.testing.assert_close(out, head.projection(F.layer_norm(tokens[:, 0], (32, ))))
    else:
        shuffled = torch.cat([tokens[:, :1], tokens[:, 1:].flip(1)], dim=1)
        torch.testing.assert_close(head(shuffled), out)  # attention pooling ignores order
    with pytest.raises(ValueError, match='pooling'):
        MODELS.build(dict(type='ImageEmbeddingHead', in_channels=32, embed_dims=16,
                          pooling='max'))


def test_old_checkpoints_with_image_projection_still_load():
    model = build()
    state = model.state_dict()
    state['image_projection.weight'] = state.pop('image_head.projection.weight') * 2
    other = build()
    other.load_state_dict(state, strict=True)
    torch.testing.assert_close(other.image_head.projection.weight,
                               model.image_head.projection.weight * 2)


def test_locked_towers_do_not_change_and_hold_no_optimizer_state():
    cfg = copy.deepcopy(TINY_RILS)
    # open_clip's counting: the image head is the image side's last group, then the last block
    # with the final norm.
    cfg['lock_cfg'] = dict(backbone=dict(unlocked_groups=2), text_encoder=True)
    cfg['backbone']['drop_path_rate'] = 0.1
    model = build(cfg)
    model.train()
    groups = model.backbone.lock_groups()
    unlocked = set(groups[-1])
    assert 'layers.1.attn.q_bias' in unlocked and 'ln1.weight' in unlocked
    assert all(p.requires_grad for p in model.image_head.parameters())
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    for name, param in model.backbone.named_parameters():
        assert param.requires_grad == (name in unlocked), name
    # Locked parts are in eval mode (dropout, stochastic depth, norm statistics fixed).
    assert not model.text_encoder.training and not model.backbone.layers[0].training
    assert model.backbone.layers[1].training and model.neck.training

    locked_before = {f'text_encoder.{k}': v.clone()
                     for k, v in model.text_encoder.state_dict().items()}
    locked_before.update({f'backbone.{k}': v.clone() for k, v in model.backbone.state_dict()
                          .items() if not k.startswith(('layers.1.', 'ln1.'))})
    optim_wrapper = build_optim_wrapper(model, dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.5)))
    images, texts, _ = make_batch()
    for _ in range(3):
        batch = model.data_preprocessor(dict(inputs=dict(images=images, texts=texts)), True)
        optim_wrapper.update_params(model.parse_losses(model(**batch, mode='loss'))[0])
    state = model.state_dict()
    for key, value in locked_before.items():
        assert torch.equal(state[key], value), key
    assert not torch.equal(state['backbone.layers.1.attn.q_bias'],
                           torch.zeros_like(state['backbone.layers.1.attn.q_bias']))
    names = {id(p): n for n, p in model.named_parameters()}
    with_state = {names[id(p)] for p in optim_wrapper.optimizer.state}
    assert with_state and not any(n.startswith('text_encoder.') for n in with_state)
    assert not any(n.startswith('backbone.layers.0.') for n in with_state)
    assert 'backbone.layers.1.attn.q_bias' in with_state
    with pytest.raises(ValueError, match='lockable'):
        build(dict(copy.deepcopy(TINY_RILS), lock_cfg=dict(decoder=True)))


def test_text_tower_init_cfg_is_checked(tmp_path):
    source = build()
    checkpoint = str(tmp_path / 'rils.pth')
    torch.save(dict(state_dict=source.state_dict()), checkpoint)
    cfg = copy.deepcopy(TINY_RILS)
    cfg['text_encoder']['init_cfg'] = dict(type='Pretrained', checkpoint=checkpoint,
                                           prefix='text_encoder.')
    torch.manual_seed(5)
    model = MODELS.build(cfg)
    model.init_weights()
    for key, value in source.text_encoder.state_dict().items():
        torch.testing.assert_close(model.text_encoder.state_dict()[key], value, rtol=0, atol=0)
    cfg['text_encoder']['init_cfg']['checkpoint'] = str(tmp_path / 'nowhere.pth')
    with pytest.raises(Exception, match='nowhere.pth'):
        MODELS.build(cfg).init_weights()
    cfg['text_encoder']['init_cfg'].update(checkpoint=checkpoint, prefix='backbone.')
    with pytest.raises(RuntimeError, match='missing'):
        MODELS.build(cfg).init_weights()


def test_a_fully_locked_tower_is_in_eval_mode_with_its_dropout():
    cfg = copy.deepcopy(TINY_RILS)
    cfg['backbone'].update(drop_rate=0.1, drop_path_rate=0.1)
    cfg['lock_cfg'] = dict(backbone=True)
    model = build(cfg)
    model.train()
    assert not any(m.training for m in model.backbone.modules())
    assert model.text_encoder.training and model.neck.training


def test_a_model_level_checkpoint_load_keeps_the_text_tower(tmp_path):
    source = build()
    checkpoint = str(tmp_path / 'rils.pth')
    torch.save(dict(state_dict=source.state_dict()), checkpoint)
    cfg = dict(copy.deepcopy(TINY_RILS), init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
    torch.manual_seed(9)
    model = MODELS.build(cfg)
    model.init_weights()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_a_binary_mask_is_not_taken_for_milan_importance():
    vit = MODELS.build(dict(type='RILSPretrainViT', arch=TINY_ARCH, img_size=32, patch_size=8))
    with pytest.raises(ValueError, match='importance'):
        vit(torch.randn(2, 3, 32, 32), torch.zeros(2, 16, dtype=torch.bool))
