"""Helpers for the transfer tests: tiny data in COCO, LVIS v1 and ADE20K layouts, a tiny RILS
pretraining model, and shrinking of the full-size transfer configs."""
import copy
import json
import os
import os.path as osp

import cv2
import numpy as np
import torch
from mmpretrain.registry import MODELS

import rils_mm  # noqa: F401  (registers in mmdet's and mmseg's registries too)

TINY_ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64)
PRETRAIN_SIZE = 64  # pretraining image size; transfer runs at other sizes (pos-embed resize)
XAVIER_INIT = [dict(type='Xavier', layer='Linear', distribution='uniform'),
               dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)]
TINY_RILS = dict(
    type='RILS',
    backbone=dict(type='RILSViT', arch=TINY_ARCH, img_size=PRETRAIN_SIZE, patch_size=16,
                  mask_ratio=0.75, init_cfg=XAVIER_INIT),
    neck=dict(type='RILSDecoder', num_patches=(PRETRAIN_SIZE // 16)**2, embed_dim=32,
              decoder_embed_dim=32, decoder_num_heads=2, init_cfg=XAVIER_INIT),
    text_encoder=dict(type='CLIPTextEncoder', vocab_size=64, width=32, heads=2, layers=1,
                      output_dim=16),
    embed_dims=16)
CLASSES = ('square', 'disc')


def build_pretrainer(cfg=TINY_RILS, seed=0):
    torch.manual_seed(seed)
    model = MODELS.build(copy.deepcopy(cfg))
    model.init_weights()
    # Non-trivial values everywhere (the q/v biases start at zero).
    with torch.no_grad():
        for name, param in model.backbone.named_parameters():
            if name.endswith(('q_bias', 'v_bias')) or name == 'cls_token':
                param.normal_(std=0.2)
    return model.eval()


# --- data ---------------------------------------------------------------------------------------
def _draw_scene(rng, height, width):
    """An image with a square and a disc; returns the image, (category, box, polygon) list and
    a label map (0 background, 1 square, 2 disc)."""
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    label = np.zeros((height, width), np.uint8)
    objects = []
    size = int(rng.integers(height // 4, height // 2))
    x0, y0 = int(rng.integers(0, width - size)), int(rng.integers(0, height // 2 - 1))
    image[y0:y0 + size, x0:x0 + size] = (200, 60, 60)
    label[y0:y0 + size, x0:x0 + size] = 1
    objects.append((1, [x0, y0, size, size],
                    [x0, y0, x0 + size, y0, x0 + size, y0 + size, x0, y0 + size]))
    radius = int(rng.integers(height // 8, height // 4))
    cx, cy = int(rng.integers(radius, width - radius)), height - radius - 1
    cv2.circle(image, (cx, cy), radius, (60, 200, 60), -1)
    cv2.circle(label, (cx, cy), radius, 2, -1)
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    polygon = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
    objects.append((2, [cx - radius, cy - radius, 2 * radius, 2 * radius],
                    polygon.round(1).ravel().tolist()))
    return image, objects, label


def write_coco(root, num_images=4, size=(96, 128), lvis=False, seed=0):
    """COCO instances json (or LVIS v1 json) plus jpgs under ``root``.

    Returns:
        str: The annotation file path.
    """
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image, objects, _ = _draw_scene(rng, *size)
        file_name = f'{image_id:012d}.jpg'
        subdir = 'train2017' if lvis else 'images'
        cv2.imwrite(osp.join(_mkdir(osp.join(root, subdir)), file_name), image)
        info = dict(id=image_id, file_name=file_name, height=size[0], width=size[1])
        if lvis:  # LVIS v1: file names come from the COCO url; federated-label fields
            info.update(coco_url=f'http://images.cocodataset.org/train2017/{file_name}',
                        neg_category_ids=[], not_exhaustive_category_ids=[])
            del info['file_name']
        images.append(info)
        for category, box, polygon in objects:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id,
                                    category_id=category, bbox=box, area=box[2] * box[3],
                                    segmentation=[polygon], iscrowd=0))
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(CLASSES)]
    if lvis:
        for category, frequency in zip(categories, ('f', 'c')):
            category.update(frequency=frequency, synset=f'{category["name"]}.n.01',
                            synonyms=[category['name']], def_='', image_count=num_images,
                            instance_count=num_images)
    path = osp.join(_mkdir(osp.join(root, 'annotations')), 'lvis_v1.json' if lvis else
                    'instances.json')
    with open(path, 'w') as file:
        json.dump(dict(images=images, annotations=annotations, categories=categories), file)
    return path


def write_ade(root, num_images=3, size=(64, 80), seed=0):
    """ADE20K layout: images/{training,validation}/*.jpg and annotations/*.png (0 = ignore,
    1..150 = classes; here background is class 1, squares 2, discs 3)."""
    rng = np.random.default_rng(seed)
    for split in ('training', 'validation'):
        for index in range(num_images):
            image, _, label = _draw_scene(rng, *size)
            name = f'ADE_{split}_{index:08d}'
            cv2.imwrite(osp.join(_mkdir(osp.join(root, 'images', split)), name + '.jpg'), image)
            cv2.imwrite(osp.join(_mkdir(osp.join(root, 'annotations', split)), name + '.png'),
                        label + 1)
    return root


def _mkdir(path):
    os.makedirs(path, exist_ok=True)
    return path


# --- config shrinking ---------------------------------------------------------------------------
TINY_SIZES = {(1024, 1024): (128, 128), (1333, 800): (128, 128), (512, 512): (64, 64),
              (2048, 512): (128, 64)}


def shrink_sizes(node):
    """Replace the full-size image scales/crops anywhere in a config by tiny ones."""
    node = getattr(node, '_cfg_dict', node)  # a Config holds its ConfigDict
    if isinstance(node, dict):
        for key, value in dict.items(node):  # the stored objects (ConfigDict.items copies)
            if (isinstance(value, (tuple, list)) and len(value) == 2
                    and all(isinstance(v, int) for v in value) and tuple(value) in TINY_SIZES):
                node[key] = TINY_SIZES[tuple(value)]
            else:
                shrink_sizes(value)
    elif isinstance(node, list):
        for item in node:
            shrink_sizes(item)


def tiny_loader(loader):
    loader.update(batch_size=2, num_workers=0, persistent_workers=False)


def tiny_mask_rcnn(cfg, checkpoint):
    """ViTDet Mask R-CNN with a 4-block, 32-wide ViT (windows of 4 patches, block 2 global),
    32-channel pyramid and heads, few proposals, 128 px inputs, 2 iterations (validated and
    saved after the second) in fp32."""
    shrink_sizes(cfg)
    cfg.model.data_preprocessor.pad_size_divisor = TINY_SIZES[(1024, 1024)][0]  # the square
    cfg.model.backbone.update(arch=TINY_ARCH, window_size=4, window_block_indexes=[0, 1, 3],
                              out_indices=[3])
    cfg.model.backbone.init_cfg.checkpoint = checkpoint
    cfg.model.neck.update(in_channels=32, out_channels=32)
    cfg.model.rpn_head.update(in_channels=32, feat_channels=32)
    roi = cfg.model.roi_head
    roi.bbox_roi_extractor.out_channels = roi.mask_roi_extractor.out_channels = 32
    roi.bbox_head.update(in_channels=32, conv_out_channels=32, fc_out_channels=32,
                         num_classes=len(CLASSES))
    roi.mask_head.update(in_channels=32, conv_out_channels=32, num_classes=len(CLASSES))
    cfg.model.train_cfg.rpn_proposal.max_per_img = 64
    cfg.model.train_cfg.rcnn.sampler.num = 32
    cfg.model.test_cfg.rpn.update(nms_pre=100, max_per_img=50)
    if roi.bbox_head.loss_cls.type == 'FederatedLoss':
        roi.bbox_head.loss_cls.num_classes = len(CLASSES)
    cfg.train_cfg.update(max_iters=2, val_interval=2)
    cfg.default_hooks.checkpoint.interval = 2
    cfg.default_hooks.logger.interval = 1
    cpu_optim_wrapper(cfg)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        tiny_loader(loader)


def cpu_optim_wrapper(cfg):
    """The config's mixed-precision wrapper as the plain one (mmengine's AmpOptimWrapper
    needs a GPU), as ``--cfg-options optim_wrapper.type=OptimWrapper`` does (``loss_scale``,
    which the plain wrapper does not take, is dropped if a config sets it)."""
    if cfg.optim_wrapper.get('type') == 'AmpOptimWrapper':
        cfg.optim_wrapper.type = 'OptimWrapper'
        cfg.optim_wrapper.pop('loss_scale', None)


def pretrainer_cfg(arch):
    """``TINY_RILS`` with another ViT ``arch`` (e.g. a few blocks at ViT-B's width); the
    decoder, text tower and projections stay tiny."""
    cfg = copy.deepcopy(TINY_RILS)
    cfg['backbone']['arch'] = dict(arch)
    cfg['neck']['embed_dim'] = arch['embed_dims']
    return cfg


def shrink_sizes_but_backbone(cfg):
    """``shrink_sizes`` everywhere except ``model.backbone`` (whose ``img_size`` only sets the
    position table, which is interpolated to the input's grid)."""
    backbone = cfg.model.pop('backbone')
    shrink_sizes(cfg)
    cfg.model.backbone = backbone
