"""The transfer configs, shrunk to a tiny ViT and tiny images, train and test through
``tools/train.py``/``tools/test.py`` (their library entry points, in-process) on generated COCO,
LVIS v1 and ADE20K data, starting from a converted pretraining checkpoint."""
import glob
import json
import os.path as osp

import pytest
from mmengine.config import Config

from rils_mm.tools import cli  # (not importing test_main: pytest would collect it)
from rils_mm.tools.model_converters import rils_to_toolbox_main

from transfer_helpers import (CLASSES, TINY_ARCH, shrink_sizes, tiny_loader, tiny_mask_rcnn,
                              write_ade, write_coco)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
COCO_CONFIG = osp.join(ROOT, 'configs/mask_rcnn/rils_vit-b16_mask-rcnn_vitdet-lsj-100e_coco.py')
LVIS_CONFIG = osp.join(ROOT, 'configs/mask_rcnn/rils_vit-b16_mask-rcnn_vitdet-lsj-100e_lvis-v1.py')
ADE_CONFIG = osp.join(ROOT, 'configs/upernet/rils_vit-b16_upernet_8xb2-160k_ade20k-512x512.py')


@pytest.fixture(scope='module')
def encoder_checkpoint(pretrain_checkpoint, tmp_path_factory):
    src, pretrainer = pretrain_checkpoint
    dst = str(tmp_path_factory.mktemp('encoder') / 'encoder.pth')
    rils_to_toolbox_main([src, dst, '--format', 'mmdet'])
    return dst, len(pretrainer.backbone.state_dict())


def set_coco_data(dataset, root, ann_file, image_dir):
    dataset.update(data_root=root, ann_file=ann_file, data_prefix=dict(img=image_dir),
                   metainfo=dict(classes=CLASSES))


def run_train_and_test(cfg, tmp_path, checkpoint_name):
    config = str(tmp_path / 'tiny_config.py')
    cfg.dump(config)
    work_dir = str(tmp_path / 'work')
    cli.train_main([config, '--work-dir', work_dir])
    log = open(sorted(glob.glob(osp.join(work_dir, '*', '*.log')))[-1]).read()
    checkpoint = osp.join(work_dir, checkpoint_name)
    assert osp.isfile(checkpoint), log[-2000:]
    out = str(tmp_path / 'metrics.json')
    cli.test_main([config, checkpoint, '--work-dir', work_dir, '--out', out])
    with open(out) as file:
        return log, json.load(file)


def assert_checked_load(log, num_keys):
    assert f'{num_keys} matched' in log  # CheckedPretrained loaded every pretrained key
    assert 'loss:' in log


def test_mask_rcnn_coco_trains_and_tests(encoder_checkpoint, tmp_path):
    checkpoint, num_keys = encoder_checkpoint
    root = str(tmp_path / 'coco')
    ann_file = write_coco(root)
    cfg = Config.fromfile(COCO_CONFIG)
    tiny_mask_rcnn(cfg, checkpoint)
    cfg.train_dataloader.dataset.times = 1
    set_coco_data(cfg.train_dataloader.dataset.dataset, root, ann_file, 'images/')
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        set_coco_data(loader.dataset, root, ann_file, 'images/')
    cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file = ann_file

    log, metrics = run_train_and_test(cfg, tmp_path, 'epoch_1.pth')
    assert_checked_load(log, num_keys)
    assert 'coco/bbox_mAP' in log  # validation after the training epoch
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert key in metrics and metrics[key] >= 0


def test_mask_rcnn_lvis_trains_and_tests(encoder_checkpoint, tmp_path):
    checkpoint, num_keys = encoder_checkpoint
    root = str(tmp_path / 'lvis')
    ann_file = write_coco(root, lvis=True)
    cfg = Config.fromfile(LVIS_CONFIG)
    assert cfg.train_dataloader.dataset.dataset.type == 'ClassBalancedDataset'
    tiny_mask_rcnn(cfg, checkpoint)
    cfg.train_dataloader.dataset.times = 1
    set_coco_data(cfg.train_dataloader.dataset.dataset.dataset, root, ann_file, '')
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        set_coco_data(loader.dataset, root, ann_file, '')
    cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file = ann_file

    log, metrics = run_train_and_test(cfg, tmp_path, 'epoch_1.pth')
    assert_checked_load(log, num_keys)
    for key in ('lvis/bbox_AP', 'lvis/bbox_APr', 'lvis/segm_AP', 'lvis/segm_APf'):
        assert key in metrics, sorted(metrics)


def test_upernet_ade20k_trains_and_tests(encoder_checkpoint, tmp_path):
    checkpoint, num_keys = encoder_checkpoint
    root = write_ade(str(tmp_path / 'ade'))
    cfg = Config.fromfile(ADE_CONFIG)
    shrink_sizes(cfg)
    cfg.model.backbone.update(arch=TINY_ARCH, out_indices=[0, 1, 2, 3])
    cfg.model.backbone.init_cfg.checkpoint = checkpoint
    cfg.model.neck.embed_dim = 32
    cfg.model.decode_head.update(in_channels=[32] * 4, channels=32)
    cfg.model.auxiliary_head.update(in_channels=32, channels=16)
    cfg.model.test_cfg.stride = (43, 43)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        tiny_loader(loader)
        loader.dataset.data_root = root
    cfg.train_cfg.update(max_iters=2, val_interval=2)
    cfg.default_hooks.checkpoint.interval = 2
    cfg.default_hooks.logger.interval = 1

    log, metrics = run_train_and_test(cfg, tmp_path, 'iter_2.pth')
    assert_checked_load(log, num_keys)
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert key in metrics and 0 <= metrics[key] <= 100
