"""Shared tiny models and data for the evaluation tests (CPU, seconds)."""
import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import open_clip  # noqa: E402

import rils_mm  # noqa: E402,F401  (compat fixes, registries)
# Imported by module path until rils_mm's package __init__ files import them.
import rils_mm.datasets.retrieval  # noqa: E402,F401
import rils_mm.datasets.zero_shot  # noqa: E402,F401
import rils_mm.evaluation  # noqa: E402,F401
import rils_mm.models.algorithms.open_clip_wrapper  # noqa: E402,F401
import rils_mm.models.algorithms.zero_shot  # noqa: E402,F401
import rils_mm.models.utils.checkpoint_loading  # noqa: E402,F401

TINY_ARCH = 'rils-test-tiny-clip'
IMG = 32  # image size of every tiny model and generated image


@pytest.fixture(scope='session')
def tiny_arch(tmp_path_factory):
    """A 2-layer open_clip CLIP at 32 px registered under ``TINY_ARCH``; returns the cfg dir."""
    cfg_dir = tmp_path_factory.mktemp('open_clip_cfgs')
    cfg = dict(
        embed_dim=16,
        vision_cfg=dict(image_size=IMG, layers=2, width=32, patch_size=8, head_width=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    with open(cfg_dir / f'{TINY_ARCH}.json', 'w') as f:
        json.dump(cfg, f)
    open_clip.add_model_config(str(cfg_dir))
    return str(cfg_dir)


@pytest.fixture(scope='session')
def tiny_openclip_ckpt(tiny_arch, tmp_path_factory):
    """Path of a seeded random open_clip checkpoint (plain state dict) of ``TINY_ARCH``."""
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH)
    path = tmp_path_factory.mktemp('ckpt') / 'tiny_open_clip.pt'
    torch.save(model.state_dict(), path)
    return str(path)


def write_images(folder, names, seed, sizes=((IMG + 8, IMG + 4), (IMG + 3, IMG + 11))):
    """Random smooth RGB images of varied sizes, format by extension (.png, .jpg)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        h, w = sizes[i % len(sizes)]
        # Smooth images, so that resizing is not dominated by aliasing of pure noise.
        base = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        arr = np.clip(np.asarray(img).astype(int) + rng.integers(-20, 21, (h, w, 3)), 0, 255)
        path = os.path.join(folder, name)
        Image.fromarray(arr.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(name='write_images')
def write_images_fixture():
    """:func:`write_images` for test modules (conftest is not importable under importlib)."""
    return write_images


@pytest.fixture
def imagenet_subset_folder(tmp_path):
    """A folder of 3 ImageNet classes (indices 1, 5, 9) x 2 images; returns (root, indices)."""
    from rils_mm.datasets.resources import read_lines
    wnids = read_lines('imagenet_wnids.txt')
    indices = [1, 5, 9]
    root = tmp_path / 'imagenet_subset'
    for k, idx in enumerate(indices):
        # JPEG, as ImageNet: decoding must match open_clip's (PIL) too.
        write_images(root / wnids[idx], [f'{k}_{j}.JPEG' for j in range(2)], seed=10 + k)
    return str(root), indices


@pytest.fixture
def karpathy_split(tmp_path):
    """Karpathy-format split: 3 test images x 2 captions (+1 train image); returns paths."""
    root = tmp_path / 'flickr'
    write_images(root / 'images', [f'{i}.png' for i in range(4)], seed=3)
    words = ['a red dog', 'a cat on a mat', 'two birds', 'a blue car', 'the sea', 'a tree']
    images = []
    for i in range(3):
        images.append(dict(
            filename=f'{i}.png', imgid=i, split='test',
            sentences=[dict(raw=words[2 * i + j], sentid=2 * i + j) for j in range(2)]))
    images.append(dict(filename='3.png', imgid=3, split='train',
                       sentences=[dict(raw='unused', sentid=6)]))
    ann = root / 'dataset_flickr30k.json'
    with open(ann, 'w') as f:
        json.dump(dict(images=images), f)
    return dict(root=str(root), ann_file=str(ann), captions=words)


def tiny_rils_model_cfg():
    """RILS at toy size: 32 px, patch 8 (16 patches), width 32, 2 layers; joint width 16."""
    return dict(
        type='RILS',
        backbone=dict(
            type='RILSPretrainViT',
            arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
            img_size=IMG,
            patch_size=8,
            mask_ratio=0.75,
            out_type='raw'),
        neck=dict(type='RILSDecoder', num_patches=16, embed_dim=32, decoder_embed_dim=32,
                  decoder_depth=1, decoder_num_heads=2),
        text_encoder=dict(type='CLIPTextEncoder', context_length=77, vocab_size=49408,
                          width=32, heads=2, layers=1, output_dim=16),
        embed_dims=16,
        loss_contrastive=dict(type='ContrastiveLoss'),
        head=dict(type='LanguageReconstructionHead',
                  loss=dict(type='LanguageSpaceReconstructionLoss')),
        data_preprocessor=dict(type='RILSDataPreprocessor'))


@pytest.fixture(name='tiny_rils_model_cfg')
def tiny_rils_model_cfg_fixture():
    return tiny_rils_model_cfg


@pytest.fixture(scope='session')
def tiny_rils_ckpt(tmp_path_factory):
    """A Runner-format checkpoint (``state_dict`` + ``meta``) of the tiny RILS model."""
    from mmpretrain.registry import MODELS
    torch.manual_seed(1)
    model = MODELS.build(tiny_rils_model_cfg())
    model.init_weights()
    path = tmp_path_factory.mktemp('rils_ckpt') / 'rils_tiny_epoch_1.pth'
    torch.save(dict(meta=dict(epoch=1), state_dict=model.state_dict()), path)
    return str(path)
