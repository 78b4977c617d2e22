"""Zero-shot ImageNet validation in the image-text pretraining recipes
(``configs/_base_/datasets/imagenet_zero_shot_val.py``).

Every image-text recipe carries it (MAE and MILAN, which have no text tower, do not); each
image-text method validates through it, on a small ImageNet-layout folder written here, with
the figures a direct computation from the model's embeddings gives; and a recipe run without
the folder stops in one line before training.
"""
import glob
import io
import os
import os.path as osp
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner
from PIL import Image

import rils_mm  # noqa: F401
from rils_mm.datasets import ShardWriter
from rils_mm.datasets.resources import load_classnames, load_templates, read_lines
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
IMAGE_TEXT_RECIPES = sorted(
    glob.glob('configs/clip/pretrain_b16*.py', root_dir=REPO)
    + glob.glob('configs/rils/pretrain_*.py', root_dir=REPO)
    + glob.glob('configs/mae_clip/pretrain_*.py', root_dir=REPO)
    + glob.glob('configs/mammut/pretrain_*.py', root_dir=REPO)
    + glob.glob('configs/lit/lit_b16_*.py', root_dir=REPO)
    + ['configs/two_stage/clip_from_mim_b16.py'])
IMAGE_ONLY_RECIPES = sorted(glob.glob('configs/mae/pretrain_*.py', root_dir=REPO)
                            + glob.glob('configs/milan/pretrain_*.py', root_dir=REPO))
NUM_CLASSES = 6  # ImageNet-1k classes 0..5 in the folder below (top-5 needs at least 5)
TEMPLATES = load_templates('openai_imagenet_templates.txt')[:4]


def test_every_image_text_recipe_validates_zero_shot_on_imagenet():
    assert len(IMAGE_TEXT_RECIPES) >= 15
    for name in IMAGE_TEXT_RECIPES:
        cfg = Config.fromfile(osp.join(REPO, name))
        assert cfg.model.zero_shot == dict(classnames='imagenet_classnames.txt',
                                           templates='openai_imagenet_templates.txt'), name
        dataset = cfg.val_dataloader.dataset
        assert (dataset.type, dataset.data_root, dataset.data_prefix) == (
            'ImageNetFolder', 'data/imagenet', 'val'), name
        assert cfg.val_dataloader.sampler == dict(type='DefaultSampler', shuffle=False), name
        assert cfg.val_evaluator == dict(type='ZeroShotAccuracy', topk=(1, 5)), name
        assert cfg.val_cfg.type == 'ValLoop' and cfg.train_cfg.get('val_interval', 1) == 1
        assert cfg.default_hooks.checkpoint.save_best == 'accuracy/top1', name
        # tools/test.py on the recipe and a checkpoint gives the validation's figures.
        assert cfg.test_dataloader == cfg.val_dataloader, name
    for name in IMAGE_ONLY_RECIPES:
        cfg = Config.fromfile(osp.join(REPO, name))
        assert 'zero_shot' not in cfg.model and not cfg.get('val_dataloader'), name


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
    """An ImageNet-layout val folder: classes 0..5 (their wnids), 3 JPEGs each; and 4 of the
    80 OpenAI templates (the prompt encoding of all 80 would dominate the test's time)."""
    root = tmp_path_factory.mktemp('imagenet')
    (root / 'templates.txt').write_text('\n'.join(TEMPLATES) + '\n')
    rng = np.random.default_rng(0)
    for wnid in read_lines('imagenet_wnids.txt')[:NUM_CLASSES]:
        os.makedirs(root / 'val' / wnid)
        for i in range(3):
            pixels = rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / 'val' / wnid / f'{i}.JPEG', quality=90)
    return str(root)


def validation_config(demo_config, imagenet_root, work_dir):
    """A method's demo config with the recipes' ImageNet validation at the demo's 64 px."""
    path = osp.join(work_dir, 'with_val.py')
    with open(path, 'w') as f:
        f.write(f"_base_ = ['{REPO}/configs/{demo_config}',\n"
                f"          '{REPO}/configs/_base_/datasets/imagenet_zero_shot_val.py']\n"
                "model = dict(zero_shot={{_base_.imagenet_zero_shot}})\n")
    cfg = Config.fromfile(path)
    cfg.work_dir = work_dir
    cfg.model.zero_shot.class_subset = list(range(NUM_CLASSES))
    cfg.model.zero_shot.templates = osp.join(imagenet_root, 'templates.txt')
    cfg.model.zero_shot.num_classes_per_batch = NUM_CLASSES
    val = cfg.val_dataloader
    val.update(batch_size=5, num_workers=0, persistent_workers=False)  # 18 images: 4 batches
    val.dataset.update(data_root=imagenet_root, class_subset=list(range(NUM_CLASSES)))
    val.dataset.pipeline[1].scale = val.dataset.pipeline[2].crop_size = 64
    cfg.train_dataloader = cfg.train_cfg = cfg.optim_wrapper = cfg.param_scheduler = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    return cfg


def class_embeddings(model):
    """``C x D`` prompt-averaged class embeddings (open_clip's ensembling), computed here."""
    from open_clip import get_tokenizer
    tokenizer = get_tokenizer('ViT-B-16')
    classes = []
    with torch.no_grad():
        for name in load_classnames('imagenet_classnames.txt')[:NUM_CLASSES]:
            texts = tokenizer([t.format(name) for t in TEMPLATES])
            prompts = F.normalize(model.encode_text(texts), dim=-1).mean(0)
            classes.append(F.normalize(prompts, dim=-1))
    return torch.stack(classes)


def expected_scores(model, classes, image_path):
    """The zero-shot scores of one image computed here: ``softmax(100 cos)`` against
    ``classes``, on the pixels of the val pipeline (PIL decode, bicubic short side to 64,
    centre crop)."""
    image = Image.open(image_path).convert('RGB')
    scale = 64 / min(image.size)  # mmpretrain's ResizeEdge truncates the long side
    size = (int(image.width * scale), int(image.height * scale))
    image = image.resize(size, Image.BICUBIC)
    left, top = (size[0] - 64) // 2, (size[1] - 64) // 2
    image = image.crop((left, top, left + 64, top + 64))
    pixels = torch.tensor(np.array(image)).permute(2, 0, 1)[None]
    with torch.no_grad():
        inputs = model.data_preprocessor(dict(inputs=pixels.float()), False)['inputs']
        cosine = F.normalize(model.encode_image(inputs), dim=-1) @ classes.T
    return (100 * cosine[0]).softmax(-1)


class PredictionRecorder(Hook):

    def __init__(self):
        self.samples = []

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.samples += outputs


@pytest.mark.parametrize('demo_config', [
    'clip/demo_cpu.py', 'rils/demo_cpu_flip.py', 'rils/demo_cpu_vision-space.py',
    'mae_clip/demo_cpu.py', 'lit/demo_cpu_scratch-scratch.py', 'mammut/demo_cpu.py'])
def test_each_image_text_method_validates_with_the_recipe_pipeline(demo_config, imagenet,
                                                                   tmp_path):
    cfg = validation_config(demo_config, imagenet, str(tmp_path))
    runner = Runner.from_cfg(cfg)
    recorder = PredictionRecorder()
    runner.register_hook(recorder)
    torch.manual_seed(0)
    runner.model.init_weights()
    metrics = runner.val_loop.run()
    assert len(recorder.samples) == 3 * NUM_CLASSES
    runner.model.eval()
    classes = class_embeddings(runner.model)
    hits1 = hits5 = 0
    for sample in recorder.samples:
        expected = expected_scores(runner.model, classes, sample.img_path)
        torch.testing.assert_close(sample.pred_score.float(), expected, rtol=1e-4, atol=1e-5)
        label = int(sample.gt_label)
        assert label == read_lines('imagenet_wnids.txt').index(
            osp.basename(osp.dirname(sample.img_path)))
        ranked = sample.pred_score.argsort(descending=True).tolist()
        hits1 += ranked[0] == label
        hits5 += label in ranked[:5]
    total = len(recorder.samples)
    assert metrics['accuracy/top1'] == pytest.approx(100 * hits1 / total, abs=1e-4)
    assert metrics['accuracy/top5'] == pytest.approx(100 * hits5 / total, abs=1e-4)


def write_one_shard(root):
    with ShardWriter(str(root), samples_per_shard=2) as writer:
        for i in range(2):
            buffer = io.BytesIO()
            Image.new('RGB', (32, 32), (i * 90, 40, 200)).save(buffer, format='JPEG')
            writer.write(f'{i:09d}', dict(jpg=buffer.getvalue(), txt=f'a photo number {i}'))
    return osp.join(str(root), '00000.tar')


def test_recipe_without_imagenet_stops_in_one_line_before_training(tmp_path):
    shard = write_one_shard(tmp_path / 'shards')
    result = run_python(
        [sys.executable, 'tools/train.py', 'configs/clip/pretrain_b16.py', '--work-dir',
         str(tmp_path / 'work'), '--cfg-options', f'train_dataloader.dataset.shards={shard}',
         'train_dataloader.num_workers=0', f'val_dataloader.dataset.data_root={tmp_path}/none'],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONUNBUFFERED='1'))
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if 'error:' in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert f'validation data not found' in errors[0] and f'{tmp_path}/none/val' in errors[0]
    assert '--no-validate' in errors[0]
    assert 'Traceback' not in result.stderr
    assert 'Epoch(train)' not in result.stdout + result.stderr
