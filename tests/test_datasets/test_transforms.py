"""CLIPTokenize matches open_clip; PackImageText + default_collate give the data contract."""
import numpy as np
import open_clip
import pytest
import torch
from mmengine.dataset import default_collate
from mmpretrain.registry import TRANSFORMS
from mmpretrain.structures import DataSample

import rils_mm.datasets  # noqa: F401  (registers the transforms)

CAPTIONS = ['a large red circle on the left', 'A PHOTO of  two   dogs!', 'café crème, 2 €',
            'x']


@pytest.mark.parametrize('caption', CAPTIONS)
def test_tokens_equal_open_clip(caption):
    results = TRANSFORMS.build(dict(type='CLIPTokenize'))(dict(text=caption))
    tokens = results['text_tokens']
    assert tokens.dtype == torch.long and tokens.shape == (77, )
    assert torch.equal(tokens, open_clip.tokenize([caption])[0])
    assert torch.equal(tokens, open_clip.tokenizer.SimpleTokenizer()(caption)[0])


def test_truncation_keeps_end_of_text_last():
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    caption = ' '.join(f'word{i}' for i in range(120))
    assert len(tokenizer.encode(caption)) > 75
    tokens = TRANSFORMS.build(dict(type='CLIPTokenize'))(dict(text=caption))['text_tokens']
    assert tokens[0] == tokenizer.sot_token_id
    assert tokens[-1] == tokenizer.eot_token_id and (tokens != 0).all()
    assert torch.equal(tokens[1:-1], torch.tensor(tokenizer.encode(caption)[:75]))
    short = TRANSFORMS.build(dict(type='CLIPTokenize', context_length=8))(dict(text=caption))
    assert short['text_tokens'].shape == (8, ) and short['text_tokens'][-1] == \
        tokenizer.eot_token_id


def test_pack_and_collate_give_the_contract():
    rng = np.random.default_rng(0)
    pipeline = [TRANSFORMS.build(t) for t in [
        dict(type='RandomResizedCrop', scale=24, crop_ratio_range=(0.5, 1.0),
             interpolation='bicubic', backend='pillow'),
        dict(type='CLIPTokenize'),
        dict(type='PackImageText')]]
    samples = []
    for index in range(3):
        results = dict(img=rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),
                       text=f'caption {index}', key=f'k{index}', img_mode='L')
        for transform in pipeline:
            results = transform(results)
        samples.append(results)
    batch = default_collate(samples)
    images, texts = batch['inputs']['images'], batch['inputs']['texts']
    assert images.shape == (3, 3, 24, 24) and images.dtype == torch.uint8
    assert texts.shape == (3, 77) and texts.dtype == torch.long
    assert all(isinstance(s, DataSample) for s in batch['data_samples'])
    meta = batch['data_samples'][1].metainfo
    assert meta['key'] == 'k1' and meta['caption'] == 'caption 1' and meta['img_mode'] == 'L'


def test_pack_rejects_non_rgb_arrays():
    pack = TRANSFORMS.build(dict(type='PackImageText'))
    with pytest.raises(TypeError, match='float32'):
        pack(dict(img=np.zeros((4, 4, 3), np.float32), key='k'))
