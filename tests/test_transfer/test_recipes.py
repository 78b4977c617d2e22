"""The transfer configs against the reference recipes: every config builds at full size (on the
meta device: shapes only), its optimizer groups exempt what the recipe exempts, the detection
batches are padded to the 1024 square at test time,
``tools/analysis_tools/compare_recipes.py --check`` finds every differing row explained, and
``tools/dataset_converters/coco_subset.py`` writes the label-efficient configs' subsets. (The
train -> test runs of the shrunk configs are in test_toolbox_runs.py: the ViT-L and
label-efficient configs differ from the ViT-B ones there only in what shrinking replaces, the
encoder's size, and in the annotation file, which is loaded here.)"""
import importlib
import json
import os.path as osp
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

import rils_mm  # noqa: F401
from rils_mm.tools import compare_recipes

from transfer_helpers import CLASSES, cpu_optim_wrapper, write_coco
from tool_processes import run_python  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MASK_RCNN = 'configs/mask_rcnn/rils_vit-{}16_mask-rcnn_vitdet-lsj-100e_{}.py'
UPERNET = 'configs/upernet/rils_vit-{}16_upernet_8xb2-160k_ade20k-512x512{}.py'
# config -> (toolbox, blocks, global blocks, classifier outputs, layer decay)
CONFIGS = {
    MASK_RCNN.format('b', 'coco'): ('mmdet', 12, [2, 5, 8, 11], 81, 0.7),
    MASK_RCNN.format('b', 'lvis-v1'): ('mmdet', 12, [2, 5, 8, 11], 1203, 0.7),
    UPERNET.format('b', ''): ('mmseg', 12, list(range(12)), 150, 0.65),
    UPERNET.format('b', '-ms'): ('mmseg', 12, list(range(12)), 150, 0.65),
    MASK_RCNN.format('l', 'coco'): ('mmdet', 24, [5, 11, 17, 23], 81, 0.8),
    MASK_RCNN.format('l', 'lvis-v1'): ('mmdet', 24, [5, 11, 17, 23], 1203, 0.8),
    UPERNET.format('l', ''): ('mmseg', 24, list(range(24)), 150, 0.75),
    UPERNET.format('l', '-ms'): ('mmseg', 24, list(range(24)), 150, 0.75),
    MASK_RCNN.format('b', 'coco-2pct'): ('mmdet', 12, [2, 5, 8, 11], 81, 0.7),
}


def build_meta(cfg, toolbox):
    """The config's model on the meta device, in its toolbox's scope (no memory, no init)."""
    registry = importlib.import_module(f'{toolbox}.registry').MODELS
    importlib.import_module(f'{toolbox}.models')  # registers the toolbox's modules
    loss = cfg.model.get('roi_head', {}).get('bbox_head', {}).get('loss_cls', {})
    if loss.get('type') == 'FederatedLoss':  # its ann_file is the full LVIS training file
        loss.pop('ann_file')
        loss.image_counts = list(range(1, loss.num_classes + 1))
    with DefaultScope.overwrite_default_scope(toolbox), torch.device('meta'):
        return registry.build(cfg.model)


@pytest.mark.parametrize('config', sorted(CONFIGS))
def test_full_size_builds_and_decays_as_the_recipe(config):
    toolbox, blocks, global_blocks, classes, decay = CONFIGS[config]
    cfg = Config.fromfile(osp.join(ROOT, config))
    model = build_meta(cfg, toolbox)
    segmentor = getattr(model, 'module', model)  # the -ms config's TTA model wraps it
    backbone = segmentor.backbone
    assert len(backbone.layers) == blocks
    assert [i for i, layer in enumerate(backbone.layers) if not layer.window_size] == global_blocks
    head = getattr(segmentor, 'roi_head', None)
    outputs = (head.bbox_head.fc_cls.out_features if head
               else segmentor.decode_head.conv_seg.out_channels)
    assert outputs == classes  # COCO: 80 + background; LVIS: one sigmoid per class

    cpu_optim_wrapper(cfg)
    with DefaultScope.overwrite_default_scope(toolbox):
        groups = build_optim_wrapper(segmentor, cfg.optim_wrapper).optimizer.param_groups
    base_wd = cfg.optim_wrapper.optimizer.weight_decay
    for group in groups:
        (param,), name = group['params'], group['param_name']
        exempt = param.ndim == 1 or name.endswith(('.pos_embed', '.cls_token'))
        assert group['weight_decay'] == (0 if exempt else base_wd), name
    # Layer-wise decay from the stem (depth 0 of blocks + 2) to the heads (scale 1).
    scales = {group['param_name']: group['lr_scale'] for group in groups}
    assert scales['backbone.patch_embed.projection.weight'] == pytest.approx(decay**(blocks + 1))
    assert max(scales.values()) == 1


def test_detection_batches_are_padded_to_the_square_at_test_time():
    """As ViTDet's square_pad: an image fitted in 1024 x 1024 (here 768 x 1024) becomes a
    1024 x 1024 input, zero after normalisation outside the image, whose img_shape (where boxes
    are clipped) stays the image's."""
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    cfg = Config.fromfile(osp.join(ROOT, MASK_RCNN.format('b', 'coco')))
    with DefaultScope.overwrite_default_scope('mmdet'):
        preprocessor = MODELS.build(cfg.model.data_preprocessor)
    sample = DetDataSample(metainfo=dict(img_shape=(768, 1024), ori_shape=(480, 640)))
    image = torch.full((3, 768, 1024), 200, dtype=torch.uint8)
    batch = preprocessor(dict(inputs=[image], data_samples=[sample]), training=False)
    assert batch['inputs'].shape == (1, 3, 1024, 1024)
    assert (batch['inputs'][0, :, 768:] == 0).all() and (batch['inputs'][0, :, :768] != 0).all()
    assert batch['data_samples'][0].img_shape == (768, 1024)
    assert batch['data_samples'][0].pad_shape == (1024, 1024)


def test_compare_recipes_explains_every_difference():
    """The tool in its own process: the tables, every row equal or carrying its reason."""
    proc = run_python([sys.executable, 'tools/analysis_tools/compare_recipes.py', '--check'],
                      cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert 'UNEXPLAINED' not in proc.stdout
    for recipe in compare_recipes.RECIPES:
        assert f'### {recipe}: ' in proc.stdout
    assert '| lr (AdamW) | 0.0002 | 0.0002 | equal |' in proc.stdout  # LVIS beside detectron2
    assert '| test size / pad | fit 1024x1024, pad 1024x1024 |' in proc.stdout

    proc = run_python([sys.executable, 'tools/analysis_tools/compare_recipes.py', 'cocoo'],
                      cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "tools/analysis_tools/compare_recipes.py: error: unknown recipe 'cocoo'; choose from "
        + ', '.join(compare_recipes.RECIPES)]


def test_a_difference_without_a_reason_is_reported(tmp_path, monkeypatch):
    coco = osp.join(ROOT, MASK_RCNN.format('b', 'coco'))
    config = tmp_path / 'changed.py'
    config.write_text(f"_base_ = [{coco!r}]\noptim_wrapper = dict(optimizer=dict(lr=3e-4))\n"
                      "recipe_notes = dict(_delete_=True, layer_decay='unused')\n")
    recipe = compare_recipes.RECIPES['coco']
    monkeypatch.setitem(compare_recipes.RECIPES, 'changed', compare_recipes.Recipe(
        str(config), recipe.rows, recipe.constants))
    result = compare_recipes.compare('changed')
    assert compare_recipes.unexplained(result) == ['lr (AdamW)', 'no weight decay on']
    assert '| lr (AdamW) | 0.0003 | 0.0001 | 0.0001 | UNEXPLAINED |' in compare_recipes.markdown(
        result)

    config.write_text(f"_base_ = [{coco!r}]\nrecipe_notes = dict(learning_rate='typo')\n")
    with pytest.raises(compare_recipes.RecipeError, match='learning_rate.*name no row'):
        compare_recipes.compare('changed')


def test_coco_subset_is_seeded_and_lists_its_images(tmp_path):
    """The subset tool in its own process, twice: the same file both times, 20 % of the
    images drawn with numpy's default_rng(seed), their annotations only, the ids listed; the
    label-efficient config's dataset loads it. Bad input: one line, exit status 2."""
    source = write_coco(str(tmp_path / 'coco'), num_images=10)
    ids = [image['id'] for image in json.load(open(source))['images']]

    def subset(out, *options):
        return run_python(
            [sys.executable, 'tools/dataset_converters/coco_subset.py', source, str(out),
             *options], cwd=ROOT, capture_output=True, text=True, timeout=60)

    outs = [tmp_path / 'coco' / 'annotations' / f'sub{i}.json' for i in range(2)]
    for out in outs:
        proc = subset(out, '--fraction', '0.2', '--seed', '3')
        assert proc.returncode == 0, proc.stderr
        assert f'wrote {out}: 2 images, 4 annotations (fraction 0.2, seed 3)' in proc.stdout
    assert outs[0].read_bytes() == outs[1].read_bytes()
    data = json.loads(outs[0].read_text())
    expected = sorted(int(i) for i in np.random.default_rng(3).choice(ids, 2, replace=False))
    assert [image['id'] for image in data['images']] == expected
    assert sorted({ann['image_id'] for ann in data['annotations']}) == expected
    assert (tmp_path / 'coco' / 'annotations' / 'sub0.json.ids.txt').read_text() == ''.join(
        f'{i}\n' for i in expected)
    assert data['info']['seed'] == 3 and len(data['categories']) == len(CLASSES)

    from mmdet.registry import DATASETS
    cfg = Config.fromfile(osp.join(ROOT, MASK_RCNN.format('b', 'coco-20pct')))
    dataset_cfg = cfg.train_dataloader.dataset.dataset
    assert dataset_cfg.ann_file == 'annotations/instances_train2017_20pct_seed0.json'
    dataset_cfg.update(data_root=str(tmp_path / 'coco'), ann_file=str(outs[0]),
                       data_prefix=dict(img='images/'), metainfo=dict(classes=CLASSES))
    importlib.import_module('mmdet.datasets')
    with DefaultScope.overwrite_default_scope('mmdet'):
        assert len(DATASETS.build(dataset_cfg)) == 2
    assert cfg.train_cfg.max_iters == round(184375 * 0.2)

    proc = subset(tmp_path / 'none.json', '--fraction', '0')
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        'tools/dataset_converters/coco_subset.py: error: --fraction must be in (0, 1], got 0.0']
    proc = subset(tmp_path / 'none.json', '--fraction', '0.01')
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        'tools/dataset_converters/coco_subset.py: error: --fraction 0.01 of 10 images is no '
        'image']
