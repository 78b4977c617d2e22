"""MaMMUT's text decoder: what each pass may and may not depend on."""
import pytest
import torch
from mmpretrain.registry import MODELS

import rils_mm  # noqa: F401

TINY_DECODER = dict(type='MaMMUTTextDecoder', context_length=12, vocab_size=50, width=32,
                    heads=4, layers=4, output_dim=16, cross_attention_every=2)


@pytest.fixture(scope='module')
def decoder():
    torch.manual_seed(0)
    module = MODELS.build(TINY_DECODER)
    module.init_weights()
    return module.eval()


def captions():
    """Two captions: start 48, words, end 49, padding 0."""
    return torch.tensor([[48, 5, 6, 7, 49, 0, 0, 0, 0, 0, 0, 0],
                         [48, 9, 10, 11, 12, 13, 49, 0, 0, 0, 0, 0]])


def test_cross_attention_follows_every_second_block(decoder):
    assert sorted(decoder.cross_blocks) == ['1', '3'] and len(decoder.resblocks) == 4


@torch.no_grad()
def test_contrastive_embedding_reads_every_valid_token_and_no_padding(decoder):
    texts = captions()
    embedding = decoder(texts)
    assert embedding.shape == (2, 16)
    for row, length in ((0, 5), (1, 7)):
        for position in range(length):  # every valid token, first ones included
            changed = texts.clone()
            changed[row, position] = 20 + position
            moved = decoder(changed)
            assert not torch.allclose(moved[row], embedding[row]), (row, position)
            torch.testing.assert_close(moved[1 - row], embedding[1 - row])
    # Neither the padding token's embedding nor the amount of padding enters: the caption
    # padded to 12 or to 8 tokens embeds the same.
    original = decoder.token_embedding.weight[0].clone()
    decoder.token_embedding.weight[0].normal_()
    torch.testing.assert_close(decoder(texts), embedding)
    decoder.token_embedding.weight[0].copy_(original)
    torch.testing.assert_close(decoder(texts[:, :8]), embedding, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_caption_logits_are_causal_and_read_the_image(decoder):
    texts = captions()[:, :-1]
    image = torch.randn(2, 5, 32)
    logits = decoder.caption_logits(texts, image)
    assert logits.shape == (2, 11, 50)
    for t in range(10):
        changed = texts.clone()
        changed[:, t + 1:] = 3  # every later token
        torch.testing.assert_close(decoder.caption_logits(changed, image)[:, :t + 1],
                                   logits[:, :t + 1])
    other = decoder.caption_logits(texts, torch.randn(2, 5, 32))
    assert not torch.allclose(other[:, 0], logits[:, 0])  # even the first position
