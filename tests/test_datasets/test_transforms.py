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


def _encoded(image, fmt, **save_args):
    import io
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def _test_images():
    """Encoded images of every path through the decoder: plain RGB JPEGs of several shapes
    (one so elongated that the crop falls back to the centre), RGBA, grey, palette with
    transparency, 16-bit, and a JPEG whose EXIF says rotate."""
    from PIL import Image
    rng = np.random.default_rng(0)

    def noise(h, w, c=3):
        return rng.integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    palette = Image.fromarray(noise(40, 30)).convert('P')
    palette.info['transparency'] = 3
    return [
        _encoded(Image.fromarray(noise(240, 320)), 'JPEG', quality=90),
        _encoded(Image.fromarray(noise(97, 61)), 'JPEG'),
        _encoded(Image.fromarray(noise(20, 400)), 'PNG'),
        _encoded(Image.fromarray(noise(64, 48, 4), 'RGBA'), 'PNG'),
        _encoded(Image.fromarray(noise(50, 70, 0), 'L'), 'PNG'),
        _encoded(palette, 'PNG'),
        _encoded(Image.fromarray(noise(30, 30, 0).astype(np.uint16) * 257), 'PNG'),
        _encoded(Image.fromarray(noise(60, 90)), 'JPEG', exif=exif),
    ]


@pytest.mark.parametrize('interpolation', ['bicubic', 'bilinear'])
def test_fused_decode_and_crop_gives_the_two_transforms_result(interpolation):
    """build_pipeline fuses LoadImageRGB + RandomResizedCrop(backend='pillow') into one step
    whose results (array, shapes, mode, random draws) equal the two transforms' for every
    kind of image, and leaves other crops (cv2 backend) as they are."""
    from mmengine.dataset import Compose

    from rils_mm.datasets.image_text_shards import build_pipeline
    from rils_mm.datasets.transforms.loading import LoadImageAndResizedCrop
    config = [dict(type='LoadImageRGB', min_size=8),
              dict(type='RandomResizedCrop', scale=32, crop_ratio_range=(0.08, 1.0),
                   interpolation=interpolation, backend='pillow'),
              dict(type='PackImageText')]
    fused = build_pipeline(config)
    assert isinstance(fused.transforms[0], LoadImageAndResizedCrop)
    assert len(fused.transforms) == 2
    plain = Compose([TRANSFORMS.build(t) for t in config])
    cv2_config = [dict(config[1], backend='cv2') if i == 1 else t for i, t in enumerate(config)]
    assert len(build_pipeline(cv2_config).transforms) == 3
    for index, data in enumerate(_test_images()):
        for draw in range(4):
            outputs = []
            for pipeline in (plain, fused):
                np.random.seed(100 * index + draw)
                result = pipeline(dict(key=f'k{index}', img_bytes=data, text='a'))
                outputs.append((result, np.random.randint(1 << 30)))  # the draws used
            (a, a_next), (b, b_next) = outputs
            assert torch.equal(a['inputs']['images'], b['inputs']['images']), (index, draw)
            assert a['data_samples'].metainfo == b['data_samples'].metainfo, (index, draw)
            assert a_next == b_next
