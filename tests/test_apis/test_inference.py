"""rils_mm.apis and the model index: mmpretrain's list_models/get_model find this package's
configs and load local checkpoints weights-only with every key matched; init_model,
embed_images, embed_texts and zero_shot_classify; the examples of docs/usage.md."""
import argparse
import doctest
import os.path as osp

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

import rils_mm  # noqa: F401  (registers the model index)
from rils_mm.apis import (MODEL_INDEX, embed_images, embed_texts, init_model, list_images,
                          zero_shot_classify)
from rils_mm.compat import CheckpointKeysError, UnsafeCheckpointError

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
RILS_DEMO = 'rils-mm_rils_vit-demo-p8_1xb64-coslr-6e_demo-shapes'
CLIP_DEMO = 'rils-mm_clip_vit-demo-p8_1xb64-coslr-6e_demo-shapes'
MAE_DEMO = 'rils-mm_mae_vit-demo-p8_1xb64-coslr-6e_demo-shapes'
MILAN_DEMO = 'rils-mm_milan_vit-demo-p8_1xb64-coslr-6e_demo-shapes'
METHOD_FOLDERS = {'rils', 'clip', 'mae', 'mae_clip', 'milan', 'lit', 'mammut'}


def metafile_models():
    """``{name: (config path, metadata)}`` of every model the index imports."""
    with open(MODEL_INDEX) as f:
        imports = yaml.safe_load(f)['Import']
    assert {osp.basename(osp.dirname(path)) for path in imports} == METHOD_FOLDERS
    models = {}
    for path in imports:
        with open(osp.join(REPO, path)) as f:
            for model in yaml.safe_load(f)['Models']:
                assert model['Name'] not in models
                models[model['Name']] = (model['Config'], model['Metadata'])
                assert 'Weights' not in model  # nothing is published
    return models


def save_checkpoint(model, path, **extra_state):
    state_dict = dict(model.state_dict(), **extra_state)
    torch.save(dict(state_dict=state_dict, meta=dict(epoch=1)), path)
    return state_dict


def random_model(name, seed=0):
    torch.manual_seed(seed)
    return init_model(name)


def write_images(folder, colours=('red', 'blue', 'green')):
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(colours):
        image = Image.new('RGB', (64, 64), 'white')
        ImageDraw.Draw(image).ellipse([8 + 4 * i, 8, 48, 48 - 4 * i], fill=colour)
        image.save(folder / f'{i:02d}_{colour}.png')
    return sorted(str(p) for p in folder.iterdir())


def test_list_models_finds_every_config_of_the_index():
    from mmpretrain import list_models
    from mmpretrain.apis.model import ModelHub
    models = metafile_models()
    assert len(models) == 38
    assert list_models('rils-mm_*') == sorted(models)
    assert set(list_models('*rils*')) >= set(models)
    rils = list_models('rils-mm_rils*')
    assert RILS_DEMO in rils and all(models[n][0].startswith('configs/rils/') for n in rils)
    for name, (config, metadata) in models.items():
        assert name == name.lower() and osp.isfile(osp.join(REPO, config)), name
        assert metadata['Epochs'] > 0 and metadata['Batch Size'] > 0
        info = ModelHub.get(name)
        assert info.weights is None and info.results is None
        assert osp.samefile(info.config.filename, osp.join(REPO, config))
    # mmpretrain's own models are still there (its MILAN has the recipe name of ours).
    assert 'milan_vit-base-p16_16xb256-amp-coslr-400e_in1k' in list_models('milan')


def test_import_registers_lazily():
    """``import rils_mm`` parses no YAML; the first list_models reads mmpretrain's index and
    ours (a fresh process)."""
    import subprocess
    import sys
    code = ('import rils_mm; from mmpretrain.apis.model import ModelHub; '
            'print(len(ModelHub._models_dict)); from mmpretrain import list_models; '
            'print(len(list_models("rils-mm_*")), len(list_models("resnet50_8xb32_in1k")))')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['0', '38', '1']


def test_metafile_parameter_counts():
    """``Parameters`` is the count of the model as get_model builds it, the frozen teacher
    (MILAN's target_generator) left out; checked on the demo configs (the B/16 and L/16 ones
    take minutes to build on 2 cores: counted the same way when the metafiles were written)."""
    from mmengine.registry import DefaultScope
    from mmpretrain.apis.model import ModelHub
    from mmpretrain.registry import MODELS
    demos = 0
    for name, (config, metadata) in metafile_models().items():
        assert isinstance(metadata['Parameters'], int) and metadata['Parameters'] > 0, name
        if not name.endswith('_demo-shapes'):
            continue
        model_cfg = ModelHub.get(name).config.model
        model_cfg.pop('target_generator', None)
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            model = MODELS.build(model_cfg)
        assert metadata['Parameters'] == sum(p.numel() for p in model.parameters()), name
        demos += 1
    assert demos == 15


def test_get_model_loads_a_local_checkpoint_weights_only(tmp_path):
    from mmpretrain import get_model
    source = random_model(RILS_DEMO, seed=0)
    path = str(tmp_path / 'epoch_1.pth')
    saved = save_checkpoint(source, path)
    torch.manual_seed(1)  # other random weights before loading
    model = get_model(RILS_DEMO, pretrained=path)
    assert type(model).__name__ == 'RILS' and not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(saved)  # every key matched
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert not all(torch.equal(random_model(RILS_DEMO, seed=1).state_dict()[k], saved[k])
                   for k in saved)  # the check can fail
    # The file is read weights-only: a pickled Python object is refused, nothing runs.
    unsafe = str(tmp_path / 'unsafe.pth')
    torch.save(dict(state_dict=saved, meta=dict(args=argparse.Namespace(lr=1))), unsafe)
    with pytest.raises(UnsafeCheckpointError, match='argparse.Namespace'):
        get_model(RILS_DEMO, pretrained=unsafe)


def test_init_model_checks_every_key(tmp_path):
    source = random_model(CLIP_DEMO, seed=0)
    path = str(tmp_path / 'clip.pth')
    saved = save_checkpoint(source, path)
    for model in (init_model(CLIP_DEMO, path),
                  init_model(osp.join(REPO, 'configs/clip/demo_cpu.py'), path)):
        assert not model.training and model._config.model.type == 'ImageTextPretrainer'
        assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    missing = str(tmp_path / 'missing.pth')
    torch.save(dict(state_dict={k: v for k, v in saved.items() if k != 'logit_scale'}), missing)
    with pytest.raises(CheckpointKeysError, match=r"1 keys .* missing .*\['logit_scale'\]"):
        init_model(CLIP_DEMO, missing)
    extra = str(tmp_path / 'extra.pth')
    save_checkpoint(source, extra, **{'neck.decoder.weight': torch.zeros(1)})
    with pytest.raises(CheckpointKeysError, match="no place for .*'neck.decoder.weight'"):
        init_model(CLIP_DEMO, extra)

    # MILAN: the frozen teacher is training-only; its weights in the file are left aside.
    from mmengine.registry import DefaultScope
    from mmpretrain.apis.model import ModelHub
    from mmpretrain.registry import MODELS
    cfg = ModelHub.get(MILAN_DEMO).config
    cfg.model.target_generator.checkpoint = path  # the demo CLIP teaches
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        milan = MODELS.build(cfg.model)
    milan_path = str(tmp_path / 'milan.pth')
    milan_saved = save_checkpoint(milan, milan_path)
    assert any(k.startswith('target_generator.') for k in milan_saved)
    student = init_model(MILAN_DEMO, milan_path)
    assert student.target_generator is None
    assert all(torch.equal(v, milan_saved[k]) for k, v in student.state_dict().items())


def test_embeddings_have_the_documented_shapes(tmp_path):
    files = write_images(tmp_path / 'images')
    model = random_model(RILS_DEMO)
    images = embed_images(model, str(tmp_path / 'images'))
    assert images.shape == (3, 128)
    torch.testing.assert_close(images.norm(dim=1), torch.ones(3))
    # Arrays, PIL images and tensors go through the same pipeline as the files.
    pil = Image.open(files[1])
    array = np.array(pil.convert('RGB'))
    for given in (pil, array, torch.from_numpy(array).permute(2, 0, 1), files[1]):
        torch.testing.assert_close(embed_images(model, given)[0], images[1])
    assert embed_images(model, [files[2], array], batch_size=1).shape == (2, 128)
    texts = embed_texts(model, ['a red circle', 'a blue circle'])
    assert texts.shape == (2, 128) and embed_texts(model, 'a red circle').shape == (1, 128)
    torch.testing.assert_close(texts.norm(dim=1), torch.ones(2))
    # Image-only models: the mean of the encoder's patch tokens; no text tower.
    mae = random_model(MAE_DEMO)
    assert embed_images(mae, files).shape == (3, 192)
    with pytest.raises(TypeError, match='MAE has no text tower'):
        embed_texts(mae, ['a red circle'])
    assert list_images(str(tmp_path)) == files  # sub-folders too
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no image file .* in .*empty'):
        embed_images(model, str(tmp_path / 'empty'))


def test_zero_shot_labels_come_from_the_class_list(tmp_path):
    from mmpretrain.registry import MODELS

    from rils_mm.apis.inference import ImagePreparer, image_test_pipeline
    files = write_images(tmp_path / 'images')
    model = random_model(RILS_DEMO)
    classes = ['red circle', 'blue circle', 'green circle', 'red square']
    templates = ['a photo of a {}.', 'a {} on the left']
    results = zero_shot_classify(model, str(tmp_path / 'images'), classes, templates)
    assert [r['img_path'] for r in results] == files
    for r in results:
        assert r['pred_class'] == classes[r['pred_label']] and r['pred_class'] in classes
        assert r['pred_scores'].shape == (4, ) and r['pred_scores'].sum() == pytest.approx(1)
        assert r['pred_score'] == r['pred_scores'].max()
    # The evaluation's ZeroShotClassifier gives the same scores.
    (tmp_path / 'classes.txt').write_text('\n'.join(classes) + '\n')
    (tmp_path / 'templates.txt').write_text('\n'.join(templates) + '\n')
    wrapper = MODELS.build(dict(type='ZeroShotClassifier', model=model._config.model,
                                classnames=str(tmp_path / 'classes.txt'),
                                templates=str(tmp_path / 'templates.txt'))).eval()
    wrapper.load_state_dict(model.state_dict())
    prepare = ImagePreparer(image_test_pipeline(model))
    batch = torch.stack([prepare(f) for f in files])
    inputs = wrapper.data_preprocessor(dict(inputs=batch), False)['inputs']
    expected = [s.pred_score.numpy() for s in wrapper.predict(inputs)]
    np.testing.assert_allclose(np.stack([r['pred_scores'] for r in results]), expected,
                               rtol=1e-9, atol=1e-12)
    # Class names and templates may be files.
    again = zero_shot_classify(model, files[:1], str(tmp_path / 'classes.txt'),
                               str(tmp_path / 'templates.txt'))
    # One image alone and the same image in a batch of four run other kernels (the blocking
    # depends on the batch size, and AVX2 and AVX-512 builds sum in other orders), so the
    # scores agree to float32 rounding, not bitwise: softmax(s * cos) moves by at most
    # 2 * s * |d cos| relative, and a float32 dot product of unit vectors over the joint
    # width D is off by at most D * 2**-24 (Higham, Accuracy and Stability of Numerical
    # Algorithms, 2nd ed., eq. 3.5). s = 100, D = 128: 1.5e-3; seen: 3.5e-7 (AVX-512).
    rtol = 2 * 100 * model.embed_dims * 2.0**-24
    np.testing.assert_allclose(again[0]['pred_scores'], results[0]['pred_scores'], rtol=rtol)
    assert again[0]['pred_label'] == results[0]['pred_label']
    # The tolerance is far below what another image would give.
    assert np.abs(results[1]['pred_scores'] / results[0]['pred_scores'] - 1).max() > 10 * rtol


def test_usage_examples_run(tmp_path, monkeypatch):
    """docs/usage.md's Python examples, on generated demo data and a demo checkpoint of random
    weights where make demo would leave them."""
    from rils_mm.datasets.demo_shapes import generate_demo_shapes
    generate_demo_shapes(str(tmp_path / 'data' / 'demo_shapes'), num_train=64, num_val=8,
                         num_heldout=8)
    (tmp_path / 'work_dirs' / 'demo_cpu').mkdir(parents=True)
    save_checkpoint(random_model(RILS_DEMO),
                    str(tmp_path / 'work_dirs' / 'demo_cpu' / 'epoch_6.pth'))
    monkeypatch.chdir(tmp_path)
    # The Inferencers' progress bar draws on the console (whether it shows depends on the
    # terminal), not into the examples' printed results.
    import mmpretrain.utils.progress
    monkeypatch.setattr(mmpretrain.utils.progress, 'disable_progress_bar', True)
    # mmengine's log lines (init_model's "Loads checkpoint ...") go to the logger's stream,
    # created here, not into the examples' printed output.
    from mmengine.logging import MMLogger
    MMLogger.get_current_instance()
    result = doctest.testfile(osp.join(REPO, 'docs', 'usage.md'), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                              verbose=False)
    assert result.attempted > 10 and result.failed == 0
