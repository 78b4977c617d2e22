"""The RILS training step: distributed equivalence, learning, inference entry points, checks."""
import copy

import pytest
import torch
from mmengine.model.wrappers import MMDistributedDataParallel
from mmpretrain.registry import MODELS

import rils_mm  # noqa: F401

XAVIER_INIT = [dict(type='Xavier', layer='Linear', distribution='uniform'),
               dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)]
TINY_RILS = dict(
    type='RILS',
    backbone=dict(type='RILSPretrainViT', arch=dict(embed_dims=32, num_layers=2, num_heads=4,
                                            feedforward_channels=64),
                  img_size=32, patch_size=8, mask_ratio=0.75, init_cfg=XAVIER_INIT),
    neck=dict(type='RILSDecoder', num_patches=16, embed_dim=32, decoder_embed_dim=32,
              decoder_num_heads=4, init_cfg=XAVIER_INIT),
    head=dict(type='LanguageReconstructionHead',
              loss=dict(type='LanguageSpaceReconstructionLoss')),
    text_encoder=dict(type='CLIPTextEncoder', vocab_size=64, width=32, heads=4, layers=2),
    embed_dims=16)


def build(cfg=TINY_RILS, **overrides):
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        target = cfg
        *parents, leaf = key.split('.')
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def make_batch(batch_size=8, seed=0):
    """Random images and token rows of the form [SOT-like ids ..., EOT(=63), 0 ...]."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8,
                           generator=generator)
    texts = torch.randint(1, 63, (batch_size, 77), generator=generator)
    lengths = torch.randint(3, 12, (batch_size, ), generator=generator)
    for row, length in enumerate(lengths.tolist()):
        texts[row, length] = 63
        texts[row, length + 1:] = 0
    noise = torch.rand(batch_size, 16, generator=generator)
    return images, texts, noise


def use_fixed_mask_noise(model, noise):
    """Make the masked pass use the given B x L noise, so runs can be compared."""
    original = model.backbone.random_masking
    model.backbone.random_masking = lambda x, ratio, _noise=None: original(x, ratio, noise)


def loss_and_grads(model, images, texts):
    data = model.module.data_preprocessor if hasattr(model, 'module') else model.data_preprocessor
    batch = data(dict(inputs=dict(images=images, texts=texts)), True)
    losses = model(**batch, mode='loss')
    unwrapped = model.module if hasattr(model, 'module') else model
    total, log = unwrapped.parse_losses(losses)
    total.backward()
    grads = {n: p.grad.clone() for n, p in unwrapped.named_parameters() if p.grad is not None}
    return total.detach(), log, grads


def _train_step_on_half_batch(rank, world_size, out_dir, mode):
    if mode == 'authors':
        model = build(loss_contrastive=dict(type='ContrastiveLoss', gather_with_grad=False),
                      **{'head.loss': dict(type='LanguageSpaceReconstructionLoss',
                                           global_average=False)})
    else:
        model = build()
    images, texts, noise = make_batch()
    rows = slice(rank * 4, (rank + 1) * 4)
    use_fixed_mask_noise(model, noise[rows])
    ddp = MMDistributedDataParallel(module=model)
    total, log, grads = loss_and_grads(ddp, images[rows], texts[rows])
    torch.save(dict(total=total, grads=grads), f'{out_dir}/{mode}_{rank}.pt')


@pytest.fixture(scope='module')
def single_process_step():
    model = build()
    images, texts, noise = make_batch()
    use_fixed_mask_noise(model, noise)
    return loss_and_grads(model, images, texts)


def test_two_processes_equal_one_process_on_the_whole_batch(run_distributed, tmp_path,
                                                            single_process_step):
    run_distributed(_train_step_on_half_batch, 2, str(tmp_path), 'default')
    ranks = [torch.load(tmp_path / f'default_{r}.pt') for r in range(2)]
    total, log, grads = single_process_step
    assert log['loss_reconstruction'] > 0 and log['loss_contrastive'] > 0
    torch.testing.assert_close((ranks[0]['total'] + ranks[1]['total']) / 2, total)
    assert set(ranks[0]['grads']) == set(grads)
    for name, grad in grads.items():
        tolerance = 1e-5 * max(1.0, grad.abs().max().item())  # float32 summation order
        for rank in ranks:  # DDP leaves the same averaged gradient on every rank
            torch.testing.assert_close(rank['grads'][name], grad, rtol=1e-4, atol=tolerance,
                                       msg=name)


def test_authors_gather_differs_from_the_whole_batch(run_distributed, tmp_path,
                                                     single_process_step):
    """With the authors' no-gradient gather, rows from the other device are constants: the
    text tower misses the gradient that flows through the other device's images."""
    run_distributed(_train_step_on_half_batch, 2, str(tmp_path), 'authors')
    ranks = [torch.load(tmp_path / f'authors_{r}.pt') for r in range(2)]
    _, _, grads = single_process_step
    name = 'text_encoder.token_embedding.weight'
    assert not torch.allclose(ranks[0]['grads'][name], grads[name], rtol=1e-3, atol=1e-6)
    # The gradients stay synchronised across devices (DDP), only their value differs.
    torch.testing.assert_close(ranks[0]['grads'][name], ranks[1]['grads'][name])


def test_tiny_rils_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = build()
    images, texts, _ = make_batch()
    batch = model.data_preprocessor(dict(inputs=dict(images=images, texts=texts)), True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(100):
        total, log = model.parse_losses(model(**batch, mode='loss'))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: float(v) for k, v in log.items()})
    assert {'loss', 'loss_contrastive', 'loss_reconstruction', 'i2t_acc', 'recon_kept',
            'logit_scale'} <= set(history[0])
    first = history[0]['loss']
    last = sum(h['loss'] for h in history[-5:]) / 5
    assert last < first / 2, (first, last)
    assert history[-1]['i2t_acc'] == 1.0


def test_inference_entry_points():
    model = build()
    model.eval()
    images, texts, _ = make_batch(4)
    batch = model.data_preprocessor(dict(inputs=dict(images=images, texts=texts)), False)
    with torch.no_grad():
        image_embeddings = model.encode_image(batch['inputs']['images'])
        text_embeddings = model.encode_text(batch['inputs']['texts'])
        features = model.extract_feat(batch['inputs'])
        tensor_mode = model(batch['inputs']['images'], mode='tensor')
    assert image_embeddings.shape == (4, 16) and text_embeddings.shape == (4, 16)
    torch.testing.assert_close(image_embeddings.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(text_embeddings.norm(dim=-1), torch.ones(4))
    # The image embedding is the global average of patch tokens, projected.
    tokens = features[-1]
    expected = torch.nn.functional.normalize(
        tokens[:, 1:].mean(1) @ model.image_head.projection.weight.t(), dim=-1)
    torch.testing.assert_close(image_embeddings, expected)
    torch.testing.assert_close(tensor_mode[-1], tokens)


def test_logit_scale_is_clamped_at_100():
    model = build()
    assert model.get_logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.get_logit_scale().item() == pytest.approx(100.0, rel=1e-5)


@pytest.mark.parametrize('key,value,match', [
    ('neck.embed_dim', 24, 'embed_dim'),
    ('neck.decoder_num_heads', 5, 'decoder_num_heads'),
    ('text_encoder.output_dim', 8, 'embed_dims'),
    ('backbone.mask_ratio', 1.5, 'mask_ratio'),
    ('head', dict(type='LanguageReconstructionHead',
                  loss=dict(type='LanguageSpaceReconstructionLoss', teacher_temperature=0)),
     'teacher_temperature'),
    ('backbone.out_type', 'cls_token', 'out_type'),
])
def test_bad_settings_fail_at_build_time(key, value, match):
    with pytest.raises(ValueError, match=match):
        build(**{key: value})


def test_batch_of_one_with_filter_is_refused():
    model = build()
    images, texts, _ = make_batch(1)
    batch = model.data_preprocessor(dict(inputs=dict(images=images, texts=texts)), True)
    with pytest.raises(ValueError, match='batch_size'):
        model(**batch, mode='loss')


def test_clip_baseline_is_rils_without_reconstruction():
    rils = build()
    clip_cfg = {k: v for k, v in copy.deepcopy(TINY_RILS).items()
                if k not in ('neck', 'head')}
    clip_cfg['type'] = 'ImageTextPretrainer'
    clip = build(clip_cfg)
    missing, unexpected = clip.load_state_dict(rils.state_dict(), strict=False)
    assert not missing and all(key.startswith('neck.') for key in unexpected)
    images, texts, noise = make_batch()
    use_fixed_mask_noise(rils, noise)
    batch = rils.data_preprocessor(dict(inputs=dict(images=images, texts=texts)), True)
    clip_losses = clip(**batch, mode='loss')
    rils_losses = rils(**batch, mode='loss')
    assert set(clip_losses) == {'loss_contrastive', 'i2t_acc', 'logit_scale'}
    torch.testing.assert_close(clip_losses['loss_contrastive'], rils_losses['loss_contrastive'])


def _reference_reconstruction(model, batch):
    """The reconstruction loss as first written: both passes called on the images, every
    patch decoded and projected, the loss masked to the scored patches."""
    images, texts = batch['inputs']['images'], batch['inputs']['texts']
    if model.intact_keep_ratio < 1:
        noise = torch.rand(images.shape[0], 16)  # ignored: use_fixed_mask_noise
        intact, dropped, restore = model.backbone(images, mask=True, noise=noise,
                                                  mask_ratio=1 - model.intact_keep_ratio)
        latent, masked, ids_restore = model.backbone(
            images, mask=True, noise=noise,
            mask_ratio=1 - model.intact_keep_ratio * (1 - model.backbone.mask_ratio))
        padded = torch.cat([intact[:, 1:], intact.new_zeros(8, 17 - intact.shape[1], 32)],
                           dim=1)
        targets = torch.gather(padded, 1, restore.unsqueeze(-1).expand(-1, -1, 32))
        has_target = masked * (1 - dropped)
    else:
        intact = model.image_tokens(images)
        latent, has_target, ids_restore = model.backbone(images, mask=True)
        targets = intact[:, 1:]
    predictions = model.neck(latent, ids_restore)  # B x L x C: every patch
    contrast, correct, _ = model.contrastive_step(intact, texts)
    loss, _ = model.head.loss(model.image_head.project(predictions),
                              model.image_head.project(targets),
                              contrast.text_features_all, has_target, correct)
    return loss


@pytest.mark.parametrize('overrides', [
    {}, {'intact_keep_ratio': 0.5, 'backbone.mask_ratio': 0.5}, {'neck.decoder_depth': 2},
    {'neck.with_cp': True}])
def test_decoding_only_the_scored_patches_equals_decoding_all(overrides):
    """The step decodes and projects only the patches the loss scores (and embeds the patches
    once for both passes); value and gradients equal the full computation's."""
    model = build(**overrides, **{'head.loss.filter_correct': False})
    images, texts, noise = make_batch()
    use_fixed_mask_noise(model, noise)
    batch = model.data_preprocessor(dict(inputs=dict(images=images, texts=texts)), True)
    # The towers in float64 (the loss keeps float32), so that summation order cannot fail
    # the test.
    model.double()
    batch['inputs']['images'] = batch['inputs']['images'].double()
    ours = model(**batch, mode='loss')['loss_reconstruction']
    reference = _reference_reconstruction(model, batch)
    assert ours > 0
    torch.testing.assert_close(ours, reference)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.autograd.grad(loss, params, allow_unused=True)
             for loss in (ours, reference)]
    used = 0
    for param_ours, param_reference in zip(*grads):
        assert (param_ours is None) == (param_reference is None)
        if param_ours is not None:
            used += 1
            torch.testing.assert_close(param_ours, param_reference)
    assert used > 20


# The cheaper RILS after FLIP: the intact pass sees half the patches, the masked pass half of
# those (a quarter of the image, as at mask_ratio 0.75).
FLIP = {'intact_keep_ratio': 0.5, 'backbone.mask_ratio': 0.5}


def _flip_step_on_half_batch(rank, world_size, out_dir):
    model = build(**FLIP)
    images, texts, noise = make_batch()
    rows = slice(rank * 4, (rank + 1) * 4)
    use_fixed_mask_noise(model, noise[rows])
    ddp = MMDistributedDataParallel(module=model)
    total, log, grads = loss_and_grads(ddp, images[rows], texts[rows])
    torch.save(dict(total=total, grads=grads), f'{out_dir}/flip_{rank}.pt')


def test_cheaper_rils_two_processes_equal_one_process(run_distributed, tmp_path):
    model = build(**FLIP)
    images, texts, noise = make_batch()
    use_fixed_mask_noise(model, noise)
    total, log, grads = loss_and_grads(model, images, texts)
    assert log['loss_reconstruction'] > 0
    run_distributed(_flip_step_on_half_batch, 2, str(tmp_path))
    ranks = [torch.load(tmp_path / f'flip_{r}.pt') for r in range(2)]
    torch.testing.assert_close((ranks[0]['total'] + ranks[1]['total']) / 2, total)
    assert set(ranks[0]['grads']) == set(grads)
    for name, grad in grads.items():
        tolerance = 1e-5 * max(1.0, grad.abs().max().item())
        for rank in ranks:
            torch.testing.assert_close(rank['grads'][name], grad, rtol=1e-4, atol=tolerance,
                                       msg=name)


def test_cheaper_rils_passes_are_nested_and_targets_are_the_intact_features():
    model = build(**FLIP)
    images, texts, noise = make_batch()
    use_fixed_mask_noise(model, noise)
    batch = model.data_preprocessor(dict(inputs=dict(images=images, texts=texts)), True)
    pixels = batch['inputs']['images']
    with torch.no_grad():
        intact, targets, latent, has_target, _ = model.patch_dropped_passes(pixels)
    order = noise.argsort(dim=1)  # the lowest scores are kept
    assert intact.shape == (8, 1 + 8, 32) and latent.shape == (8, 1 + 4, 32)
    for row in range(8):
        seen, visible = set(order[row, :8].tolist()), set(order[row, :4].tolist())
        assert visible < seen
        assert set(has_target[row].nonzero().squeeze(1).tolist()) == seen - visible
        # Targets: the intact pass's tokens at their patch positions, zero where unseen.
        for slot, patch in enumerate(order[row, :8].tolist()):
            torch.testing.assert_close(targets[row, patch], intact[row, 1 + slot])
        unseen = sorted(set(range(16)) - seen)
        assert (targets[row, unseen] == 0).all()
    # The intact pass on the kept patches is the encoder's own pass on that subset.
    with torch.no_grad():
        reference = model.backbone(pixels, mask=True, noise=noise, mask_ratio=0.5)[0]
    torch.testing.assert_close(intact, reference)
    # The loss counts only the targets, and evaluation still encodes every patch.
    with torch.no_grad():
        log = model(**batch, mode='loss')
        tokens = model.extract_feat(batch['inputs'])[-1]
    assert tokens.shape == (8, 1 + 16, 32)
    assert 0 < log['recon_kept'] <= 1


def test_cheaper_rils_with_keep_ratio_one_is_rils():
    images, texts, noise = make_batch()
    losses = []
    for overrides in ({}, {'intact_keep_ratio': 1.0}):
        model = build(**overrides)
        use_fixed_mask_noise(model, noise)
        losses.append(loss_and_grads(model, images, texts)[0])
    assert losses[0] == losses[1]


@pytest.mark.parametrize('value', [0.0, 1.5, -0.5])
def test_cheaper_rils_keep_ratio_is_checked(value):
    with pytest.raises(ValueError, match='intact_keep_ratio'):
        build(intact_keep_ratio=value)
