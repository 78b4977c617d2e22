"""Round trips as a user runs them: each step is a new process of a command-line tool
(``tools/train.py``, ``tools/test.py``, ``tools/model_converters/rils_to_toolbox.py``) that
reads the files an earlier process wrote.

- RILS pretraining (``configs/rils/demo_cpu.py``) -> zero-shot test of its checkpoint and
  conversion of its encoder for mmdet and mmseg;
- the converted encoder -> Mask R-CNN (mmdet) and UperNet (mmseg) training -> test of the
  checkpoints those runs wrote;
- the pretraining checkpoint -> fine-tuning with a classification benchmark config -> test;
- ``--resume`` in a new process for the RILS, mmdet and mmseg configs.

No checkpoint is loaded by the process that wrote it, and this process loads none: it writes
data and configs, starts the tools and reads what they print. All runs are shrunk to a 4-block,
32-wide ViT with 16 px patches, the same in pretraining and transfer.
"""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'tests', 'test_transfer'))
from transfer_helpers import (CLASSES, TINY_ARCH, cpu_optim_wrapper, shrink_sizes,  # noqa: E402
                              tiny_loader, tiny_mask_rcnn, write_ade, write_coco)
from tool_processes import run_python  # noqa: E402

DEMO = 'configs/rils/demo_cpu.py'
DEMO_ZERO_SHOT = 'configs/rils/demo_cpu_zeroshot.py'
CONVERTER = 'tools/model_converters/rils_to_toolbox.py'
COCO_CONFIG = 'configs/mask_rcnn/rils_vit-b16_mask-rcnn_vitdet-lsj-100e_coco.py'
ADE_CONFIG = 'configs/upernet/rils_vit-b16_upernet_8xb2-160k_ade20k-512x512.py'
FINETUNE_CONFIG = 'configs/benchmarks/classification/rils_vit-b16_finetune-100e_in1k.py'

# The tiny RILS: TINY_ARCH encoder on 64 px images in 16 px patches (4 x 4 patches, as the
# transfer backbones expect), one-block decoder and text tower of width 32, joint space 16.
IMG = 64
RILS_MODEL = [f'backbone.arch.{key}={value}' for key, value in TINY_ARCH.items()] + [
    f'backbone.img_size={IMG}', 'backbone.patch_size=16', 'neck.num_patches=16',
    'neck.embed_dim=32', 'neck.decoder_embed_dim=32', 'neck.decoder_num_heads=2',
    'text_encoder.width=32', 'text_encoder.layers=1', 'text_encoder.heads=2',
    'text_encoder.output_dim=16', 'embed_dims=16']
EPOCH_ITERS = 4  # 64 generated pairs in batches of 16


def rils_train_options(data_root, max_epochs=1):
    """--cfg-options of a demo pretraining run shrunk to seconds."""
    return [*(f'model.{option}' for option in RILS_MODEL),
            f'train_cfg.max_epochs={max_epochs}', 'default_hooks.checkpoint.interval=1',
            'default_hooks.logger.interval=1', 'train_dataloader.batch_size=16',
            'train_dataloader.dataset.batch_size=16',
            'train_dataloader.dataset.samples_per_epoch=64', 'train_dataloader.num_workers=0',
            f'train_dataloader.dataset.data_root={data_root}',
            'train_dataloader.dataset.generate_cfg.num_train=64',
            'train_dataloader.dataset.generate_cfg.num_val=8',
            'train_dataloader.dataset.generate_cfg.num_heldout=8',
            f'train_dataloader.dataset.generate_cfg.image_size={IMG}',
            f'train_dataloader.dataset.pipeline.1.scale={IMG}']


def run_tool(*args, timeout=600):
    """Run a repository tool (``tools/...``) in a new Python process; assert exit status 0.

    Returns:
        subprocess.CompletedProcess: With ``output``, stdout and stderr together (mmengine's
        logger prints to stdout, warnings and tracebacks go to stderr).
    """
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    result = run_python([sys.executable, *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
    command = ' '.join(map(str, args))
    assert result.returncode == 0, (
        f'{command}\nexited with {result.returncode}; end of stderr:\n{result.stderr[-4000:]}')
    result.output = result.stdout + result.stderr
    return result


def train_lines(output):
    """The training progress lines: ``Epoch(train) [e][i/n]`` or ``Iter(train) [i/n]``."""
    return re.findall(r'(?:Epoch|Iter)\(train\)\s+(\[[^\n]*?\])\s', output)


def dump(cfg, path):
    cfg.dump(str(path))
    return str(path)


# --- RILS pretraining ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def pretraining(tmp_path_factory):
    """One epoch of the demo pretraining in its own process; returns its work dir, data root,
    output and checkpoint. The resume test later continues this run in the same work dir;
    the other tests read epoch_1.pth, which it leaves as it is."""
    root = tmp_path_factory.mktemp('rils')
    data_root, work_dir = root / 'demo_shapes', root / 'work'
    result = run_tool('tools/train.py', DEMO, '--work-dir', work_dir,
                      '--cfg-options', *rils_train_options(data_root))
    return dict(work_dir=work_dir, data_root=data_root, output=result.output,
                checkpoint=work_dir / 'epoch_1.pth')


def test_rils_pretraining_then_zero_shot_test(pretraining, tmp_path):
    """demo_cpu.py trained by tools/train.py -> its epoch checkpoint evaluated zero-shot by
    tools/test.py demo_cpu_zeroshot.py in a new process."""
    assert pretraining['checkpoint'].is_file(), pretraining['output'][-3000:]
    assert f'Epoch(train) [1][{EPOCH_ITERS}/{EPOCH_ITERS}]' in pretraining['output']
    data_root = pretraining['data_root']
    result = run_tool(
        'tools/test.py', DEMO_ZERO_SHOT, pretraining['checkpoint'], '--work-dir', tmp_path,
        '--cfg-options', *(f'model.model.{option}' for option in RILS_MODEL),
        f'model.classnames={data_root}/classnames.txt',
        f'model.templates={data_root}/templates.txt',
        f'test_dataloader.dataset.ann_file={data_root}/heldout.jsonl',
        f'test_dataloader.dataset.data_prefix.img_path={data_root}/heldout',
        'test_dataloader.num_workers=0')
    assert f'Load checkpoint from {pretraining["checkpoint"]}' in result.output
    top1 = re.search(r'top1: ([\d.]+)', result.output)
    assert top1, result.output[-3000:]
    assert 0 <= float(top1.group(1)) <= 100


@pytest.fixture(scope='module')
def encoders(pretraining, tmp_path_factory):
    """The pretraining checkpoint's encoder converted for mmdet and for mmseg, each by its own
    converter process; returns {format: (path, converter output)}."""
    out_dir = tmp_path_factory.mktemp('encoders')
    converted = {}
    for fmt in ('mmdet', 'mmseg'):
        dst = out_dir / f'rils_tiny_{fmt}.pth'
        result = run_tool(CONVERTER, pretraining['checkpoint'], dst, '--format', fmt)
        converted[fmt] = (dst, result.output)
    return converted


@pytest.mark.parametrize('fmt', ['mmdet', 'mmseg'])
def test_converter_reads_the_pretraining_checkpoint(encoders, fmt):
    """RILS checkpoint -> rils_to_toolbox.py --format mmdet/mmseg in a new process."""
    dst, output = encoders[fmt]
    assert dst.is_file()
    assert f'wrote {dst}' in output


def encoder_keys(converter_output):
    """The number of encoder tensors the converter reported extracting."""
    found = re.search(r'vision encoder \(backbone\.\*\): (\d+)', converter_output)
    assert found, converter_output
    return int(found.group(1))


# --- transfer: mmdet Mask R-CNN and mmseg UperNet -----------------------------------------------
def tiny_mask_rcnn_config(encoder, data_root):
    """The COCO Mask R-CNN config with the tiny encoder (windows of 4 patches, block 2 global),
    32-channel pyramid and heads, 128 px images, 4 generated images: 2 iterations (an epoch)."""
    ann_file = write_coco(str(data_root))
    cfg = Config.fromfile(osp.join(REPO, COCO_CONFIG))
    tiny_mask_rcnn(cfg, str(encoder))
    cfg.train_dataloader.dataset.times = 1
    datasets = (cfg.train_dataloader.dataset.dataset, cfg.val_dataloader.dataset,
                cfg.test_dataloader.dataset)
    for dataset in datasets:
        dataset.update(data_root=str(data_root), ann_file=ann_file,
                       data_prefix=dict(img='images/'), metainfo=dict(classes=CLASSES))
    cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file = ann_file
    return cfg


def tiny_upernet_config(encoder, data_root):
    """The ADE20K UperNet config with the tiny encoder, 64 px crops, 3 generated images,
    2 iterations with a checkpoint and validation after the second."""
    write_ade(str(data_root))
    cfg = Config.fromfile(osp.join(REPO, ADE_CONFIG))
    shrink_sizes(cfg)
    cfg.model.backbone.update(arch=TINY_ARCH, out_indices=[0, 1, 2, 3])
    cfg.model.backbone.init_cfg.checkpoint = str(encoder)
    cfg.model.neck.embed_dim = 32
    cfg.model.decode_head.update(in_channels=[32] * 4, channels=32)
    cfg.model.auxiliary_head.update(in_channels=32, channels=16)
    cfg.model.test_cfg.stride = (43, 43)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        tiny_loader(loader)
        loader.dataset.data_root = str(data_root)
    cfg.train_cfg.update(max_iters=2, val_interval=2)
    cfg.default_hooks.checkpoint.interval = 2
    cfg.default_hooks.logger.interval = 1
    cpu_optim_wrapper(cfg)
    return cfg


TRANSFERS = {
    'mmdet': dict(make_config=tiny_mask_rcnn_config, checkpoint='iter_2.pth',
                  metrics=('coco/bbox_mAP', 'coco/segm_mAP')),
    'mmseg': dict(make_config=tiny_upernet_config, checkpoint='iter_2.pth',
                  metrics=('mIoU', 'aAcc')),
}


@pytest.fixture(scope='module')
def transfer_runs(encoders, tmp_path_factory):
    """``run(toolbox)``: the toolbox's shrunk config, written to a file, trained in its own
    process from the converted encoder (once, on first use); returns dict(config, work_dir,
    output). The resume test continues the run in its work dir, leaving its checkpoint as is."""
    runs = {}

    def run(toolbox):
        if toolbox not in runs:
            root = tmp_path_factory.mktemp(toolbox)
            cfg = TRANSFERS[toolbox]['make_config'](encoders[toolbox][0], root / 'data')
            config = dump(cfg, root / f'tiny_{toolbox}.py')
            work_dir = root / 'work'
            result = run_tool('tools/train.py', config, '--work-dir', work_dir)
            runs[toolbox] = dict(config=config, work_dir=work_dir, output=result.output)
        return runs[toolbox]

    return run


@pytest.mark.parametrize('toolbox', ['mmdet', 'mmseg'])
def test_transfer_train_then_test(toolbox, transfer_runs, encoders, tmp_path):
    """RILS checkpoint -> converted encoder -> loaded by the mmdet/mmseg config in a training
    process (2 iterations) -> that run's checkpoint tested by tools/test.py in a new process."""
    spec = TRANSFERS[toolbox]
    run = transfer_runs(toolbox)
    encoder, converter_output = encoders[toolbox]
    # CheckedPretrained loaded every encoder tensor of the converted file.
    assert (f'Loaded "backbone.*" from {encoder}: {encoder_keys(converter_output)} matched'
            in run['output']), run['output'][-3000:]
    assert 'loss:' in run['output']
    checkpoint = run['work_dir'] / spec['checkpoint']
    assert checkpoint.is_file(), run['output'][-3000:]

    out = tmp_path / 'metrics.json'
    result = run_tool('tools/test.py', run['config'], checkpoint, '--work-dir', tmp_path,
                      '--out', out)
    assert f'Load checkpoint from {checkpoint}' in result.output
    metrics = json.loads(out.read_text())
    for key in spec['metrics']:
        assert re.search(rf'{re.escape(key)}: [\d.]+', result.output), result.output[-3000:]
        assert metrics[key] >= 0


# --- classification benchmark config ------------------------------------------------------------
def write_image_folder(root, classes=('a', 'b', 'c'), per_class=2, seed=0):
    """An image folder (one sub-folder per class) of random smooth RGB images."""
    rng = np.random.default_rng(seed)
    for name in classes:
        os.makedirs(osp.join(root, name), exist_ok=True)
        for index in range(per_class):
            coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            image = cv2.resize(coarse, (IMG + 8, IMG + 4), interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(osp.join(root, name, f'{index}.png'), image)
    return str(root)


def tiny_finetune_config(pretrain_checkpoint, data_root):
    """The ImageNet fine-tuning config with the tiny encoder at 64 px, initialised from the
    pretraining checkpoint, on a 3-class image folder, 1 epoch (3 iterations)."""
    cfg = Config.fromfile(osp.join(REPO, FINETUNE_CONFIG))
    cfg.model.backbone.update(arch=TINY_ARCH, img_size=IMG, patch_size=16)
    cfg.model.backbone.init_cfg.checkpoint = str(pretrain_checkpoint)
    cfg.model.head.update(num_classes=3, in_channels=32)
    cfg.model.data_preprocessor.num_classes = 3
    if cfg.optim_wrapper.get('type') == 'AmpOptimWrapper':
        cfg.optim_wrapper.type = 'OptimWrapper'  # AMP needs CUDA
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        pipeline = loader.dataset.pipeline
        for transform in pipeline:
            if transform.type == 'RandomResizedCrop':
                transform.scale = IMG
            elif transform.type == 'ResizeEdge':
                transform.scale = IMG + 4
            elif transform.type == 'CenterCrop':
                transform.crop_size = IMG
        loader.update(batch_size=2, num_workers=0, persistent_workers=False)
        loader.dataset = dict(type='CustomDataset', data_root=str(data_root),
                              pipeline=pipeline)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator = cfg.test_evaluator = dict(type='Accuracy', topk=(1, 2))
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=1)
    cfg.default_hooks.logger.interval = 1
    return cfg


def test_classification_finetune_then_test(pretraining, tmp_path):
    """RILS checkpoint -> loaded by the fine-tuning benchmark config in a training process ->
    that run's checkpoint tested by tools/test.py in a new process."""
    cfg = tiny_finetune_config(pretraining['checkpoint'],
                               write_image_folder(tmp_path / 'images'))
    config = dump(cfg, tmp_path / 'tiny_finetune.py')
    work_dir = tmp_path / 'work'
    train = run_tool('tools/train.py', config, '--work-dir', work_dir)
    # All of the encoder but the final norm, which fine-tuning replaces by its own (ln2).
    assert re.search(rf'Loaded "backbone\.\*" from {re.escape(str(pretraining["checkpoint"]))}: '
                     r'\d+ matched, 2 missing', train.output), train.output[-3000:]
    assert 'Epoch(train) [1][3/3]' in train.output
    checkpoint = work_dir / 'epoch_1.pth'
    assert checkpoint.is_file()

    result = run_tool('tools/test.py', config, checkpoint, '--work-dir', tmp_path / 'test')
    assert f'Load checkpoint from {checkpoint}' in result.output
    top1 = re.search(r'accuracy/top1: ([\d.]+)', result.output)
    assert top1, result.output[-3000:]
    assert 0 <= float(top1.group(1)) <= 100


# --- resume in a new process --------------------------------------------------------------------
def assert_resumed(output, checkpoint, epoch, iteration):
    assert f'Load checkpoint from {checkpoint}' in output, output[-3000:]
    assert f'resumed epoch: {epoch}, iter: {iteration}' in output, output[-3000:]


def test_rils_pretraining_resumes_in_a_new_process(pretraining):
    """The one-epoch demo pretraining run continued by ``tools/train.py --resume`` with
    max_epochs=2 in a new process, in the same work dir: it trains epoch 2 only."""
    work_dir = pretraining['work_dir']
    result = run_tool('tools/train.py', DEMO, '--work-dir', work_dir, '--resume',
                      '--cfg-options', *rils_train_options(pretraining['data_root'],
                                                           max_epochs=2))
    assert_resumed(result.output, pretraining['checkpoint'], epoch=1, iteration=EPOCH_ITERS)
    assert 'DataResumeHook: data stream resumes at' in result.output
    assert train_lines(result.output) == [f'[2][{i}/{EPOCH_ITERS}]'
                                          for i in range(1, EPOCH_ITERS + 1)]
    assert (work_dir / 'epoch_2.pth').is_file()


# The resumed run of each toolbox: a larger maximum, and the progress lines it must print.
RESUMES = {
    'mmdet': dict(larger_max='train_cfg.max_iters=4', epoch=0, saved='iter_4.pth',
                  lines=['[3/4]', '[4/4]']),
    'mmseg': dict(larger_max='train_cfg.max_iters=4', epoch=0, saved='iter_4.pth',
                  lines=['[3/4]', '[4/4]']),
}


@pytest.mark.parametrize('toolbox', ['mmdet', 'mmseg'])
def test_transfer_resumes_in_a_new_process(toolbox, transfer_runs):
    """The mmdet/mmseg training run (2 iterations) continued by ``tools/train.py --resume``
    with a larger maximum in a new process, in the same work dir: it starts at iteration 3 and
    stops at the new maximum."""
    spec = RESUMES[toolbox]
    run = transfer_runs(toolbox)
    work_dir = run['work_dir']
    result = run_tool('tools/train.py', run['config'], '--work-dir', work_dir, '--resume',
                      '--cfg-options', spec['larger_max'])
    assert_resumed(result.output, work_dir / TRANSFERS[toolbox]['checkpoint'], spec['epoch'],
                   iteration=2)
    assert train_lines(result.output) == spec['lines']
    assert (work_dir / spec['saved']).is_file()
