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


TINY_MAMMUT = dict(
    type='MaMMUT',
    backbone=dict(type='RILSPretrainViT', arch=dict(embed_dims=32, num_layers=2, num_heads=4,
                                                    feedforward_channels=64),
                  img_size=32, patch_size=8, out_type='raw'),
    image_head=dict(type='ImageEmbeddingHead', pooling='mean', norm_cfg=dict(type='LN')),
    text_encoder=dict(type='MaMMUTTextDecoder', context_length=16, width=32, heads=4,
                      layers=2),
    embed_dims=16,
    loss_contrastive=dict(type='FocalContrastiveLoss'),
    max_caption_length=12)
CAPTIONS = ['a red circle', 'a blue square on the left', 'two green stars', 'a big dog',
            'a small yellow triangle', 'the sky at night', 'a purple line', 'an orange']


def tokens(captions, length=16):
    from rils_mm.datasets.transforms.tokenize import get_clip_tokenizer
    return get_clip_tokenizer()(captions, context_length=length)


def test_a_tiny_mammut_overfits_eight_captions():
    torch.manual_seed(0)
    model = MODELS.build(TINY_MAMMUT)
    model.init_weights()
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    data = model.data_preprocessor(dict(inputs=dict(images=images, texts=tokens(CAPTIONS))),
                                   True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(100):
        losses = model(**data, mode='loss')
        loss = losses['loss_contrastive'] + losses['loss_caption']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses['loss_caption'] < 0.05, losses
    model.eval()
    samples = model(data['inputs'], mode='predict')
    assert [s.pred_caption for s in samples] == CAPTIONS
    # Beam search with one beam is greedy decoding; wider beams find the captions too.
    images_only = data['inputs']['images']
    greedy = model.generate(images_only, beam_size=1)
    assert model.generate(images_only, beam_size=3) == greedy
    assert [model._beam(model.decoder_image_tokens(model.image_tokens(images_only[i:i + 1])),
                        12, 1) for i in range(8)] == greedy


def test_caption_loss_is_the_cross_entropy_of_the_non_padding_targets():
    torch.manual_seed(0)
    model = MODELS.build(TINY_MAMMUT)
    model.init_weights()
    images = torch.randn(2, 3, 32, 32)
    texts = tokens(CAPTIONS[:2])
    image_tokens = model.image_tokens(images)
    # The whole sequence through the decoder, padding included, scored where the target is
    # not padding.
    logits = model.text_encoder.caption_logits(texts[:, :-1],
                                               model.decoder_image_tokens(image_tokens))
    targets = texts[:, 1:]
    expected = torch.nn.functional.cross_entropy(logits[targets != 0], targets[targets != 0])
    torch.testing.assert_close(model.caption_loss(image_tokens, texts), expected)


def test_zero_shot_config_makes_val_step_score_classes_as_the_zero_shot_classifier(tmp_path):
    """With ``zero_shot``, validation during training scores classes (not captions), exactly
    as a ``ZeroShotClassifier`` around the same model."""
    from rils_mm.models.algorithms.zero_shot import ZeroShotClassifier
    (tmp_path / 'names.txt').write_text('red circle\nblue square\ngreen star\n')
    (tmp_path / 'templates.txt').write_text('a photo of a {}.\n{}\n')
    zero_shot = dict(classnames=str(tmp_path / 'names.txt'),
                     templates=str(tmp_path / 'templates.txt'))
    torch.manual_seed(0)
    model = MODELS.build(dict(TINY_MAMMUT, zero_shot=zero_shot))
    model.init_weights()
    model.eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    data = dict(inputs=dict(images=list(images)), data_samples=None)
    scores = torch.stack([s.pred_score for s in model.val_step(data)])
    assert scores.shape == (4, 3) and not scores.isnan().any()
    reference = ZeroShotClassifier(model=model, **zero_shot)
    expected = torch.stack([s.pred_score for s in reference.predict(
        model.data_preprocessor(data, False)['inputs'])])
    assert torch.equal(scores, expected)
