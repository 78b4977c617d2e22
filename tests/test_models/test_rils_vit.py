"""The RILS vision encoder and its q/v-bias block, against mmpretrain's own modules."""
import pytest
import torch
from mmpretrain.models.utils import MultiheadAttention
from mmpretrain.registry import MODELS

import rils_mm  # noqa: F401
from rils_mm.models.utils import QVBiasMultiheadAttention

TINY_ARCH = dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64)


def tiny_vit(**kwargs):
    cfg = dict(type='RILSViT', arch=TINY_ARCH, img_size=32, patch_size=8, mask_ratio=0.75)
    cfg.update(kwargs)
    model = MODELS.build(cfg)
    model.init_weights()
    model.eval()
    return model


def test_qv_bias_attention_equals_full_bias_with_zero_key_part():
    torch.manual_seed(0)
    ours = QVBiasMultiheadAttention(embed_dims=32, num_heads=4)
    reference = MultiheadAttention(embed_dims=32, num_heads=4, qkv_bias=True)
    torch.nn.init.normal_(ours.q_bias)
    torch.nn.init.normal_(ours.v_bias)
    reference.load_state_dict(ours.state_dict(), strict=False)
    with torch.no_grad():
        reference.qkv.bias.copy_(torch.cat([ours.q_bias, torch.zeros(32), ours.v_bias]))
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(ours(x), reference(x))
    assert 'qkv.bias' not in ours.state_dict()  # no k bias parameter at all


@pytest.mark.parametrize('mask_ratio,expected_keep', [(0.75, 4), (0.6, 6), (0.5, 8)])
def test_masking_keeps_round_of_visible_patches(mask_ratio, expected_keep):
    model = tiny_vit(mask_ratio=mask_ratio)
    x = torch.randn(3, 16, 32)
    kept, mask, ids_restore = model.random_masking(x, mask_ratio)
    assert expected_keep == round(16 * (1 - mask_ratio))
    assert kept.shape == (3, expected_keep, 32)
    assert mask.sum(dim=1).tolist() == [16 - expected_keep] * 3
    # ids_restore inverts the shuffle: un-shuffling [kept, masked] restores the order.
    noise = torch.rand(3, 16)
    kept, mask, ids_restore = model.random_masking(x, mask_ratio, noise=noise)
    ids_shuffle = torch.argsort(noise, dim=1)
    torch.testing.assert_close(torch.gather(ids_shuffle, 1, ids_restore),
                               torch.arange(16).expand(3, -1))
    # The kept tokens are exactly the unmasked ones, in shuffle order.
    for b in range(3):
        visible = (mask[b] == 0).nonzero().flatten()
        assert set(visible.tolist()) == set(ids_shuffle[b, :expected_keep].tolist())
        torch.testing.assert_close(kept[b], x[b, ids_shuffle[b, :expected_keep]])


def test_masked_pass_never_sees_masked_patches():
    model = tiny_vit(type='RILSMaskedViT')
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        latent, mask, _ = model(images, mask=True, noise=noise)
    # Overwrite every masked 8x8 patch with garbage: the masked pass must not change.
    corrupted = images.clone()
    for b in range(2):
        for patch in mask[b].nonzero().flatten().tolist():
            row, col = divmod(patch, 4)
            corrupted[b, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = 1e3
    with torch.no_grad():
        latent_corrupted, mask2, _ = model(corrupted, mask=True, noise=noise)
        intact, = model(images, mask=False)
        intact_corrupted, = model(corrupted, mask=False)
    torch.testing.assert_close(mask, mask2)
    torch.testing.assert_close(latent, latent_corrupted)
    assert not torch.allclose(intact, intact_corrupted)  # the intact pass does see them
    assert latent.shape == (2, 1 + 4, 32)


def test_intact_pass_formats_and_other_input_sizes():
    model = tiny_vit(out_type='featmap', out_indices=[0, 1], final_norm=False)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 48))  # not the pretraining size
    assert [tuple(f.shape) for f in feats] == [(1, 32, 8, 6), (1, 32, 8, 6)]
    raw = tiny_vit()
    with torch.no_grad():
        tokens, = raw(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 17, 32)


def test_shared_patch_embedding_gives_both_passes():
    """RILS embeds the patches once; the two passes from those tokens equal full calls."""
    model = tiny_vit(type='RILSMultiPassViT')
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        intact, masked = model(images, passes=(None, 0.75), noise=noise)
        torch.testing.assert_close(intact, model(images)[0])
        for ours, reference in zip(masked, model.uniform_masked_pass(images, noise=noise,
                                                                     mask_ratio=0.75)):
            torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize('with_cp', [False, True])
def test_block_output_at_some_tokens_equals_the_full_block(with_cp):
    from rils_mm.models.utils import QVBiasDecoderLayer
    torch.manual_seed(0)
    block = QVBiasDecoderLayer(32, 4, 64, with_cp=with_cp)
    torch.nn.init.normal_(block.attn.q_bias)
    torch.nn.init.normal_(block.attn.v_bias)
    x = torch.randn(3, 9, 32, requires_grad=True)
    index = torch.stack([torch.randperm(9)[:5] for _ in range(3)])
    full = torch.gather(block(x), 1, index.unsqueeze(-1).expand(-1, -1, 32))
    part = block(x, query_index=index)
    torch.testing.assert_close(part, full)
    weights = torch.randn_like(full)
    grads = [torch.autograd.grad((out * weights).sum(), [x, *block.parameters()])
             for out in (full, part)]
    for reference, ours in zip(*grads):
        torch.testing.assert_close(ours, reference)
    # Tokens shared by every sample (here the last 4 of 9 rows of a 6-row table): the
    # output at some of them equals the block on the assembled sequences.
    shared = torch.randn(6, 32, requires_grad=True)
    shared_index = torch.stack([torch.randperm(6)[:4] for _ in range(3)])
    sequences = torch.cat([x[:, :5], shared[shared_index]], dim=1)
    full = block(sequences)[:, 5:7]
    part = block(x[:, :5], query_index=shared_index[:, :2], shared=shared,
                 shared_index=shared_index)
    torch.testing.assert_close(part, full)
    grads = [torch.autograd.grad(out.pow(2).sum(), [x, shared, *block.parameters()])
             for out in (full, part)]
    for reference, ours in zip(*grads):
        torch.testing.assert_close(ours, reference)


def test_position_embedding_is_fixed_sincos():
    model = tiny_vit()
    assert not model.pos_embed.requires_grad
    from mmpretrain.models.utils import build_2d_sincos_position_embedding
    expected = build_2d_sincos_position_embedding(4, 32, cls_token=True)
    torch.testing.assert_close(model.pos_embed.data, expected.float())


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = tiny_vit()
    plain.train()
    checkpointed = tiny_vit(with_cp=True)
    checkpointed.train()
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 32, 32)
    for model in (plain, checkpointed):
        model(images)[0].pow(2).sum().backward()
    for (name, p1), (_, p2) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        if p1.grad is not None:
            torch.testing.assert_close(p1.grad, p2.grad, msg=name)


def test_layer_depth_for_layer_decay():
    model = tiny_vit()
    assert model.get_layer_depth('pos_embed') == (0, 4)
    assert model.get_layer_depth('layers.0.attn.q_bias') == (1, 4)
    assert model.get_layer_depth('layers.1.ffn.layers.0.0.weight') == (2, 4)
    assert model.get_layer_depth('ln1.weight') == (3, 4)


def test_bad_mask_ratio_fails_at_build_time():
    with pytest.raises(ValueError, match='mask_ratio'):
        tiny_vit(mask_ratio=1.0)
    with pytest.raises(ValueError, match='mask_ratio'):
        tiny_vit(mask_ratio=0)
