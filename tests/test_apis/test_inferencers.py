"""rils_mm.apis' Inferencers (mmpretrain's ``BaseInferencer``): the same vectors, labels and
rankings as the functions of rils_mm.apis.inference, the figures of ``tools/test.py``, MaMMUT
captions from the demo config, and one-line errors for images that are missing or do not
decode."""
import os
import os.path as osp
import re
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image, ImageDraw

import rils_mm  # noqa: F401
from rils_mm.apis import (CaptionInferencer, EmbeddingInferencer, ImageToTextRetrievalInferencer,
                          TextToImageRetrievalInferencer, ZeroShotInferencer, embed_images,
                          embed_texts, init_model, zero_shot_classify)
from rils_mm.apis.inference import ImageReadError
from rils_mm.compat import safetensors_bytes

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'tests', 'test_tools'))
from tiny_demo import TINY_MODEL  # noqa: E402
from tool_processes import run_python  # noqa: E402

RILS_DEMO = 'rils-mm_rils_vit-demo-p8_1xb64-coslr-6e_demo-shapes'
MAE_DEMO = 'rils-mm_mae_vit-demo-p8_1xb64-coslr-6e_demo-shapes'
MAMMUT_DEMO = 'rils-mm_mammut_vit-demo-p8_1xb64-coslr-6e_demo-shapes'
CAPTIONS = ['a red circle', 'a blue circle', 'a green circle', 'a red square']


def write_images(folder, colours=('red', 'blue', 'green', 'white')):
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(colours):
        image = Image.new('RGB', (64, 64), 'gray')
        ImageDraw.Draw(image).ellipse([8 + 4 * i, 8, 48, 48 - 4 * i], fill=colour)
        image.save(folder / f'{i:02d}_{colour}.png')
    return sorted(str(p) for p in folder.iterdir())


def checkpoint_of(name, path, seed=0):
    torch.manual_seed(seed)
    model = init_model(name)
    torch.save(dict(state_dict=model.state_dict()), path)
    return model


def vectors(results):
    return np.stack([r['embedding'] for r in results])


def test_inferencers_give_the_functions_results(tmp_path):
    files = write_images(tmp_path / 'images')
    folder = str(tmp_path / 'images')
    model = checkpoint_of(RILS_DEMO, str(tmp_path / 'rils.pth'))
    # A name + a .pth, the config file + a .safetensors, a built model: the same weights.
    (tmp_path / 'rils.safetensors').write_bytes(safetensors_bytes(model.state_dict()))
    embedders = [EmbeddingInferencer(RILS_DEMO, str(tmp_path / 'rils.pth')),
                 EmbeddingInferencer(osp.join(REPO, 'configs/rils/demo_cpu.py'),
                                     str(tmp_path / 'rils.safetensors')),
                 EmbeddingInferencer(model, pretrained=None)]
    expected = embed_images(model, folder, batch_size=2).numpy()
    for embedder in embedders:
        results = embedder(folder, batch_size=2)
        assert [r['img_path'] for r in results] == files
        np.testing.assert_array_equal(vectors(results), expected)
    with pytest.warns(UserWarning, match=f'^{RILS_DEMO} has no published weights'):
        EmbeddingInferencer(RILS_DEMO)  # pretrained=True, as mmpretrain's
    # Arrays and PIL images go through the same pipeline; their img_path is None.
    array = np.array(Image.open(files[1]).convert('RGB'))
    results = embedders[0]([array, Image.open(files[1]), files[1]], batch_size=3)
    assert [r['img_path'] for r in results] == [None, None, files[1]]
    np.testing.assert_allclose(vectors(results), expected[[1, 1, 1]], atol=1e-6)
    texts = embedders[0].embed_texts(CAPTIONS)
    assert [t['text'] for t in texts] == CAPTIONS
    np.testing.assert_array_equal(vectors(texts), embed_texts(model, CAPTIONS).numpy())
    # Image-only models: the mean patch token, as embed_images; no zero-shot.
    mae = checkpoint_of(MAE_DEMO, str(tmp_path / 'mae.pth'))
    np.testing.assert_array_equal(
        vectors(EmbeddingInferencer(MAE_DEMO, str(tmp_path / 'mae.pth'))(files, batch_size=4)),
        embed_images(mae, files, batch_size=4).numpy())
    with pytest.raises(TypeError, match='^MAE has no text tower'):
        ZeroShotInferencer(mae, None, classes=['a'])

    # Zero-shot labels: zero_shot_classify's, with class names and templates as files too.
    classes = ['red circle', 'blue circle', 'green circle', 'white circle', 'red square']
    templates = ['a photo of a {}.', 'a {} on the left']
    (tmp_path / 'classes.txt').write_text('\n'.join(classes) + '\n')
    zero_shot = ZeroShotInferencer(RILS_DEMO, str(tmp_path / 'rils.pth'),
                                   classes=str(tmp_path / 'classes.txt'), templates=templates)
    labels = zero_shot(folder, batch_size=4)
    reference = zero_shot_classify(model, folder, classes, templates, batch_size=4)
    for got, want in zip(labels, reference):
        assert {k: v for k, v in got.items() if k != 'pred_scores'} == \
            {k: v for k, v in want.items() if k != 'pred_scores'}
        np.testing.assert_array_equal(got['pred_scores'], want['pred_scores'])
    # Drawn as mmpretrain's ImageClassificationInferencer draws (file names from the inputs).
    drawn = zero_shot(files[:2], show_dir=str(tmp_path / 'drawn'), resize=128)
    assert [r['pred_class'] for r in drawn] == [r['pred_class'] for r in labels[:2]]
    assert sorted(os.listdir(tmp_path / 'drawn')) == ['00_red.png', '01_blue.png']
    assert Image.open(tmp_path / 'drawn' / '00_red.png').size == (128, 128)

    # Retrieval: the ranking of cosine similarities of embed_images and embed_texts.
    similarity = embed_images(model, files, batch_size=4) @ embed_texts(model, CAPTIONS).T
    to_text = ImageToTextRetrievalInferencer(model, None, gallery=CAPTIONS)(folder,
                                                                            batch_size=4, topk=3)
    for row, result in zip(similarity, to_text):
        assert [m['index'] for m in result['matches']] == row.argsort(descending=True)[:3].tolist()
        assert [m['item'] for m in result['matches']] == \
            [CAPTIONS[m['index']] for m in result['matches']]
        assert result['matches'][0]['score'] == pytest.approx(float(row.max()), abs=1e-6)
    to_image = TextToImageRetrievalInferencer(model, None, gallery=folder)(CAPTIONS, topk=2)
    for column, text, result in zip(similarity.T, CAPTIONS, to_image):
        assert result['text'] == text
        assert [m['item'] for m in result['matches']] == \
            [files[i] for i in column.argsort(descending=True)[:2].tolist()]

    # A missing file is one line before any batch runs; one that does not decode, one line.
    (tmp_path / 'broken.png').write_bytes(b'not an image')
    with pytest.raises(FileNotFoundError) as missing:
        zero_shot([files[0], str(tmp_path / 'nope.png')])
    assert str(missing.value) == f'image file not found: {tmp_path / "nope.png"}'
    with pytest.raises(ImageReadError) as broken:
        embedders[0]([files[0], str(tmp_path / 'broken.png')])
    assert str(broken.value) == (f'cannot read image {tmp_path / "broken.png"}: cannot '
                                 f'identify image file')
    with pytest.raises(FileNotFoundError, match='^image file not found: .*nope.png$'):
        TextToImageRetrievalInferencer(model, None, gallery=[str(tmp_path / 'nope.png')])


def test_captions_of_the_demo_mammut_config(tmp_path):
    from mmpretrain.apis import ImageCaptionInferencer
    files = write_images(tmp_path / 'images')
    model = checkpoint_of(MAMMUT_DEMO, str(tmp_path / 'mammut.pth'))
    assert 'test_dataloader' not in model._config
    with pytest.raises(AttributeError, match='test_dataloader'):  # why ours reads test_pipeline
        ImageCaptionInferencer(MAMMUT_DEMO, pretrained=str(tmp_path / 'mammut.pth'))
    captioner = CaptionInferencer(osp.join(REPO, 'configs/mammut/demo_cpu.py'),
                                  str(tmp_path / 'mammut.pth'))
    results = captioner(str(tmp_path / 'images'), batch_size=2, max_length=6)
    assert [r['img_path'] for r in results] == files
    # The model's own predict (what the test loop runs) on the same images.
    from rils_mm.apis.inference import ImagePreparer, image_test_pipeline
    prepare = ImagePreparer(image_test_pipeline(model))
    inputs = model.data_preprocessor(dict(inputs=torch.stack([prepare(f) for f in files])),
                                     False)['inputs']
    model.max_caption_length = 6
    predicted = model.predict(inputs)
    assert [r['pred_caption'] for r in results] == [s.pred_caption for s in predicted]
    assert [r['pred_caption_ids'] for r in results] == [s.pred_caption_ids for s in predicted]
    assert all(0 < len(r['pred_caption_ids']) <= 6 for r in results)
    beams = captioner(files[:1], max_length=4, beam_size=2)
    images = inputs['images'] if isinstance(inputs, dict) else inputs
    assert beams[0]['pred_caption_ids'] == model.generate(images[:1], 4, 2)[0]
    array = np.array(Image.open(files[0]).convert('RGB'))
    drawn = captioner([array], max_length=6, show_dir=str(tmp_path / 'drawn'))
    assert drawn[0]['pred_caption'] == results[0]['pred_caption']
    assert os.listdir(tmp_path / 'drawn') == ['0.png']
    with pytest.raises(TypeError, match='^RILS does not generate captions'):
        CaptionInferencer(RILS_DEMO, None)


def run_tool(*args):
    result = run_python([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONUNBUFFERED='1'), timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if 'Epoch(test)' in line and '/' in line.split('Epoch(test)')[-1]]
    assert lines, result.stdout[-3000:]
    return dict(re.findall(r'(\S+): ([\d.]+)', lines[-1]))


def test_zero_shot_and_retrieval_figures_equal_the_test_tool(tmp_path):
    """``tools/test.py``'s zero-shot top-1 and retrieval R@1 on the held-out split, from the
    Inferencers' labels and rankings (a tiny model of random weights, 32 px images)."""
    import json

    from rils_mm.datasets.demo_shapes import generate_demo_shapes
    root = tmp_path / 'shapes'
    generate_demo_shapes(str(root), num_train=16, num_val=8, num_heldout=48, image_size=32)
    options = {o.split('=')[0]: int(o.split('=')[1]) for o in TINY_MODEL}
    options.update({'test_pipeline.1.scale': 32, 'test_pipeline.2.crop_size': 32})
    cfg = Config.fromfile(osp.join(REPO, 'configs/rils/demo_cpu.py'))
    cfg.merge_from_dict(options)
    torch.manual_seed(0)
    model = init_model(cfg)
    checkpoint = str(tmp_path / 'tiny.pth')
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    wrapped = [f'model.{o}' for o in TINY_MODEL] + ['test_dataloader.num_workers=0']
    top1 = run_tool('tools/test.py', 'configs/rils/demo_cpu_zeroshot.py', checkpoint,
                    '--work-dir', str(tmp_path / 'zs'), '--cfg-options', *wrapped,
                    f'model.classnames={root}/classnames.txt',
                    f'model.templates={root}/templates.txt',
                    f'test_dataloader.dataset.ann_file={root}/heldout.jsonl',
                    f'test_dataloader.dataset.data_prefix.img_path={root}/heldout',
                    'test_dataloader.dataset.pipeline.1.scale=32',
                    'test_dataloader.dataset.pipeline.2.crop_size=32')['accuracy/top1']
    recall = run_tool('tools/test.py', 'configs/rils/demo_cpu_retrieval.py', checkpoint,
                      '--work-dir', str(tmp_path / 'ret'), '--cfg-options', *wrapped,
                      f'test_dataloader.dataset.data_root={root}')

    records = [json.loads(line) for line in (root / 'heldout.jsonl').read_text().splitlines()]
    files = [str(root / 'heldout' / r['filepath']) for r in records]
    labels = ZeroShotInferencer(osp.join(REPO, 'configs/rils/demo_cpu.py'), checkpoint,
                                cfg_options=options, classes=str(root / 'classnames.txt'),
                                templates=str(root / 'templates.txt'))(files, batch_size=16)
    accuracy = 100 * np.mean([r['pred_label'] == rec['label']
                              for r, rec in zip(labels, records)])
    assert f'{accuracy:.4f}' == top1
    captions = [r['caption'] for r in records]
    to_text = ImageToTextRetrievalInferencer(model, None, gallery=captions)(files, topk=1)
    to_image = TextToImageRetrievalInferencer(model, None, gallery=files)(captions, topk=1)
    # Captions repeat in the split: the same text scores the same, and the metric counts ties
    # in the query's favour.
    image_r1 = 100 * np.mean([r['matches'][0]['item'] == captions[i]
                              for i, r in enumerate(to_text)])
    text_r1 = 100 * np.mean([r['matches'][0]['index'] == i for i, r in enumerate(to_image)])
    assert (f'{image_r1:.4f}', f'{text_r1:.4f}') == (
        recall['retrieval/image_to_text_R@1'], recall['retrieval/text_to_image_R@1'])
