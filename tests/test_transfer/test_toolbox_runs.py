"""The transfer configs, shrunk to a tiny ViT and tiny images, train 2 iterations with
``tools/train.py`` and test the checkpoint with ``tools/test.py``, each in its own process, on
generated COCO, LVIS v1 and ADE20K data, starting from a converted pretraining checkpoint: the
COCO test pipeline pads to the (shrunk) square, LVIS trains with the federated loss, and ADE20K
is also tested with multi-scale + flip (the -ms config)."""
import json
import os.path as osp
import sys

import pytest
from mmengine.config import Config

from rils_mm.tools.model_converters import rils_to_toolbox_main

from transfer_helpers import (CLASSES, TINY_ARCH, shrink_sizes, tiny_loader, tiny_mask_rcnn,
                              write_ade, write_coco)
from tool_processes import run_python  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
COCO_CONFIG = osp.join(ROOT, 'configs/mask_rcnn/rils_vit-b16_mask-rcnn_vitdet-lsj-100e_coco.py')
LVIS_CONFIG = osp.join(ROOT, 'configs/mask_rcnn/rils_vit-b16_mask-rcnn_vitdet-lsj-100e_lvis-v1.py')
ADE_CONFIG = osp.join(ROOT, 'configs/upernet/rils_vit-b16_upernet_8xb2-160k_ade20k-512x512.py')
ADE_MS_CONFIG = ADE_CONFIG[:-len('.py')] + '-ms.py'
TOOL_TIMEOUT = 300


@pytest.fixture(scope='module')
def encoder_checkpoint(pretrain_checkpoint, tmp_path_factory):
    src, pretrainer = pretrain_checkpoint
    dst = str(tmp_path_factory.mktemp('encoder') / 'encoder.pth')
    rils_to_toolbox_main([src, dst, '--format', 'mmdet'])
    return dst, len(pretrainer.backbone.state_dict())


def set_coco_data(dataset, root, ann_file, image_dir):
    dataset.update(data_root=root, ann_file=ann_file, data_prefix=dict(img=image_dir),
                   metainfo=dict(classes=CLASSES))


def run_tool(*args):
    """A tool of the repository in its own process; returns its stdout + stderr."""
    proc = run_python([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                      text=True, timeout=TOOL_TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{args[0]} exited with {proc.returncode}:\n{output[-4000:]}'
    return output


def run_train_and_test(cfg, tmp_path, test_configs=(), train_options=()):
    """Train ``cfg`` (dumped to a file) 2 iterations, then test ``iter_2.pth`` with it and with
    each of ``test_configs`` (Config objects, e.g. the -ms variant shrunk alike).
    ``train_options``: more ``tools/train.py`` arguments.

    Returns:
        tuple: The training output and the list of metric dicts, one per test.
    """
    config = str(tmp_path / 'tiny_config.py')
    cfg.dump(config)
    work_dir = str(tmp_path / 'work')
    log = run_tool('tools/train.py', config, '--work-dir', work_dir, *train_options)
    checkpoint = osp.join(work_dir, 'iter_2.pth')
    assert osp.isfile(checkpoint), log[-2000:]
    configs = [config]
    for index, extra in enumerate(test_configs):
        configs.append(str(tmp_path / f'tiny_test_config{index}.py'))
        extra.dump(configs[-1])
    metrics = []
    for index, test_config in enumerate(configs):
        out = str(tmp_path / f'metrics{index}.json')
        output = run_tool('tools/test.py', test_config, checkpoint, '--work-dir',
                          str(tmp_path / f'test{index}'), '--out', out)
        assert f'Load checkpoint from {checkpoint}' in output
        with open(out) as file:
            metrics.append(json.load(file))
    return log, metrics


def assert_checked_load(log, num_keys):
    assert f'{num_keys} matched' in log  # CheckedPretrained loaded every pretrained key
    assert 'loss:' in log


def test_mask_rcnn_coco_trains_and_tests_padded(encoder_checkpoint, tmp_path):
    checkpoint, num_keys = encoder_checkpoint
    root = str(tmp_path / 'coco')
    ann_file = write_coco(root)  # 96 x 128 images
    cfg = Config.fromfile(COCO_CONFIG)
    tiny_mask_rcnn(cfg, checkpoint)
    # The shrunk test pipeline fits the images in 128 x 128; the model pads to that square.
    assert cfg.test_dataloader.dataset.pipeline[1]['scale'] == (128, 128)
    assert cfg.model.data_preprocessor.pad_size_divisor == 128
    cfg.train_dataloader.dataset.times = 1
    set_coco_data(cfg.train_dataloader.dataset.dataset, root, ann_file, 'images/')
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        set_coco_data(loader.dataset, root, ann_file, 'images/')
    cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file = ann_file

    log, (metrics,) = run_train_and_test(cfg, tmp_path)
    assert_checked_load(log, num_keys)
    assert 'coco/bbox_mAP' in log  # validation after the 2nd iteration
    # ViTDet's fp16 gradient compression is on; a one-process run has nothing to compress.
    assert 'Fp16GradCompressionHook: MaskRCNN is not DDP' in log, log[-3000:]
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert key in metrics and metrics[key] >= 0


def test_mask_rcnn_lvis_trains_with_the_federated_loss_and_tests(encoder_checkpoint, tmp_path):
    checkpoint, num_keys = encoder_checkpoint
    root = str(tmp_path / 'lvis')
    ann_file = write_coco(root, lvis=True)
    cfg = Config.fromfile(LVIS_CONFIG)
    assert cfg.train_dataloader.dataset.type == 'ClassBalancedDataset'
    tiny_mask_rcnn(cfg, checkpoint)
    loss_cls = cfg.model.roi_head.bbox_head.loss_cls
    assert loss_cls.type == 'FederatedLoss' and loss_cls.num_fed_loss_classes == 50
    loss_cls.ann_file = ann_file  # the class image counts of the generated LVIS file
    set_coco_data(cfg.train_dataloader.dataset.dataset, root, ann_file, '')
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        set_coco_data(loader.dataset, root, ann_file, '')
    cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file = ann_file

    log, (metrics,) = run_train_and_test(cfg, tmp_path)
    assert_checked_load(log, num_keys)
    # FederatedLoss's accuracy ('acc', background below probability 0.5) and its loss_cls.
    assert 'loss_cls:' in log and ' acc:' in log, log[-3000:]
    for key in ('lvis/bbox_AP', 'lvis/bbox_APr', 'lvis/segm_AP', 'lvis/segm_APf'):
        assert key in metrics, sorted(metrics)


def tiny_upernet(cfg, checkpoint, root):
    shrink_sizes(cfg)
    segmentor = cfg.model.get('module') or cfg.model  # the -ms config wraps it for TTA
    segmentor.backbone.update(arch=TINY_ARCH, out_indices=[0, 1, 2, 3])
    segmentor.backbone.init_cfg.checkpoint = checkpoint
    segmentor.neck.embed_dim = 32
    segmentor.decode_head.update(in_channels=[32] * 4, channels=32)
    segmentor.auxiliary_head.update(in_channels=32, channels=16)
    segmentor.test_cfg.stride = (43, 43)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        tiny_loader(loader)
        loader.dataset.data_root = root
    cfg.train_cfg.update(max_iters=2, val_interval=2)
    cfg.default_hooks.checkpoint.interval = 2
    cfg.default_hooks.logger.interval = 1


def test_upernet_ade20k_trains_and_tests_single_and_multi_scale(encoder_checkpoint, tmp_path):
    checkpoint, num_keys = encoder_checkpoint
    root = write_ade(str(tmp_path / 'ade'))
    cfg, ms_cfg = Config.fromfile(ADE_CONFIG), Config.fromfile(ADE_MS_CONFIG)
    for config in (cfg, ms_cfg):
        tiny_upernet(config, checkpoint, root)
    assert ms_cfg.model.type == 'SegTTAModel'
    aug = ms_cfg.test_dataloader.dataset.pipeline[1]
    assert aug['type'] == 'TestTimeAug' and len(aug['transforms'][0]) == 6  # 6 scales
    assert len(aug['transforms'][1]) == 2  # without and with a flip

    # On a CPU the mixed-precision config trains with docs/transfer.md's override.
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    log, metrics = run_train_and_test(
        cfg, tmp_path, test_configs=[ms_cfg],
        train_options=['--cfg-options', 'optim_wrapper.type=OptimWrapper'])
    assert_checked_load(log, num_keys)
    for single_or_multi in metrics:
        for key in ('aAcc', 'mIoU', 'mAcc'):
            assert key in single_or_multi and 0 <= single_or_multi[key] <= 100
