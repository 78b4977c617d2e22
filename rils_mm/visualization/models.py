"""Models for the visualization tools: built from a config, loaded with checked weights-only
loading, and read through one interface whatever the method.

Two kinds of model are read:

- this package's algorithms (``ImageTextPretrainer`` = CLIP, ``RILS``, ``MAECLIP``, ``LiT``,
  ``MaMMUT``, and mmpretrain's ``MAE``/``MILAN`` with our encoder): the image tower is
  ``model.backbone`` (a ``RILSViT``: class token first, then the patches); the image-text
  ones add ``image_head`` (the projection into the joint space) and a text tower;
- ``OpenCLIPModel``: any open_clip CLIP; the image tower is ``model.clip.visual``.

A config whose model is a zero-shot wrapper (``ZeroShotClassifier``/``ZeroShotRetriever``) is
read as the model it wraps.
"""
import os.path as osp
import re
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..datasets import resources

__all__ = ['VisualizationInputError', 'load_model', 'load_image', 'input_size',
           'patch_grid', 'is_open_clip', 'intact_tokens', 'encode_captions', 'seeded']


class VisualizationInputError(ValueError):
    """Bad input to a visualization (a file, a config, a model that lacks what is asked for);
    the message is written for the user, in one line."""


def load_model(cfg, checkpoint: str, device: str = 'cpu') -> nn.Module:
    """Build ``cfg.model`` and load ``checkpoint`` into it, in eval mode without gradients.

    The loading is :func:`rils_mm.models.utils.build_and_load`, which checks that the file is
    read weights-only, that every weight of the model is in it with its shape, and that every
    weight in it has a place in the model. Our algorithms load through
    :func:`rils_mm.models.utils.load_checked`; an ``OpenCLIPModel`` loads ``checkpoint`` as its
    ``pretrained`` file (weights-only; TorchScript archives without running them). Nothing
    is left out: MILAN keeps its teacher (its masks need the teacher's attention), so the file
    must hold the teacher's weights too.

    Args:
        cfg (mmengine.Config): A config with a ``model`` entry (a zero-shot wrapper is read as
            the model it wraps); built in the config's ``default_scope`` (else mmpretrain's).
        checkpoint (str): Local checkpoint file.
        device (str): Where the model runs. Defaults to ``'cpu'``.

    Returns:
        nn.Module: The model.

    Raises:
        VisualizationInputError: No ``model`` in the config, or a missing checkpoint file.
        rils_mm.compat.CheckpointLoadError: The file was refused or damaged;
            ``CheckpointKeysError`` (one line) when its keys or shapes do not fit the model.
    """
    from ..models.utils import build_and_load

    if not isinstance(cfg.get('model'), dict):
        raise VisualizationInputError('the config has no model')
    if not osp.isfile(checkpoint):
        raise VisualizationInputError(f'checkpoint not found: {checkpoint}')
    model = build_and_load(cfg.model, checkpoint,
                           default_scope=cfg.get('default_scope') or 'mmpretrain')
    model.requires_grad_(False)
    return model.to(device).eval()


def is_open_clip(model: nn.Module) -> bool:
    """Whether ``model`` is an ``OpenCLIPModel`` (its image tower is ``model.clip.visual``)."""
    return hasattr(model, 'clip') and hasattr(model.clip, 'visual')


def _vit(model: nn.Module) -> nn.Module:
    backbone = getattr(model, 'backbone', None)
    if backbone is None or not hasattr(backbone, 'patch_resolution'):
        raise VisualizationInputError(f'{type(model).__name__} has no ViT image tower '
                                      f'(model.backbone with patches)')
    if getattr(backbone, 'grid_tokens', False):
        raise VisualizationInputError('the ViT drops its class token (windowed or relative-'
                                      'position blocks); use a pretraining config')
    return backbone


def input_size(model: nn.Module) -> Tuple[int, int]:
    """(H, W) of the images the image tower was built for."""
    if is_open_clip(model):
        size = model.clip.visual.image_size
    else:
        size = _vit(model).img_size
    return (size, size) if isinstance(size, int) else tuple(size)


def patch_grid(model: nn.Module) -> Tuple[int, int]:
    """(h, w) patches of an image of :func:`input_size`."""
    if is_open_clip(model):
        return tuple(model.clip.visual.grid_size)
    return tuple(_vit(model).patch_resolution)


def _normalisation(model: nn.Module) -> Tuple[np.ndarray, np.ndarray]:
    preprocessor = getattr(model, 'data_preprocessor', None)
    if preprocessor is not None and getattr(preprocessor, '_enable_normalize', False):
        return (preprocessor.mean.flatten().cpu().numpy(),
                preprocessor.std.flatten().cpu().numpy())
    return np.zeros(3), np.ones(3)


def load_image(path: str, model: nn.Module) -> Tuple[np.ndarray, torch.Tensor]:
    """Read an image as the model's test pipelines do: RGB, the short edge resized to the
    model's input size (bicubic), centre-cropped; then normalised with the model's data
    preprocessor's mean and std (0-255 scale).

    Args:
        path (str): Image file.
        model (nn.Module): From :func:`load_model`.

    Returns:
        tuple: the cropped image (H x W x 3 uint8, RGB, for drawing) and the model input
        (1 x 3 x H x W float, normalised, on the model's device).
    """
    import warnings

    from PIL import Image, UnidentifiedImageError
    if not osp.isfile(path):
        raise VisualizationInputError(f'image not found: {path}')
    try:
        # PIL warns above Image.MAX_IMAGE_PIXELS and refuses above twice that; both are
        # refused here, from the header, before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(path) as file:
                image = file.convert('RGB')
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        size = re.search(r'\((\d+) pixels\)', str(error))
        raise VisualizationInputError(
            f'image {path} has {size.group(1) if size else "too many"} pixels, more than the '
            f'{Image.MAX_IMAGE_PIXELS} PIL decodes without a decompression-bomb warning; '
            f'refused without decoding it (downscale it first if it is genuine)') from None
    except (UnidentifiedImageError, OSError) as error:
        raise VisualizationInputError(f'cannot read image {path}: {error}') from None
    height, width = input_size(model)
    scale = max(height / image.height, width / image.width)
    resized = image.resize((max(width, round(image.width * scale)),
                            max(height, round(image.height * scale))), Image.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    pixels = np.asarray(resized.crop((left, top, left + width, top + height)), dtype=np.uint8)
    mean, std = _normalisation(model)
    normalised = (pixels.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)
    tensor = torch.from_numpy(normalised.transpose(2, 0, 1).copy())[None]
    return pixels, tensor.to(_device(model))


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device('cpu')


def _open_clip_tokens(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    visual = model.clip.visual
    if getattr(visual, 'attn_pool', None) is not None or not hasattr(visual, 'class_embedding'):
        raise VisualizationInputError('the open_clip image tower must be a ViT with a class '
                                      'token and no attention pooling')
    x = visual.transformer(visual._embeds(images.to(visual.conv1.weight.dtype)))
    return visual.ln_post(x)


def intact_tokens(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Output tokens of the image tower's intact pass, class token first: B x (1 + L) x C.

    Ours: the backbone's last output (after its final norm). open_clip: the transformer's
    output through ``ln_post`` (the norm its pooled token gets).
    """
    if is_open_clip(model):
        return _open_clip_tokens(model, images)
    from ..models.backbones.rils_vit import intact_outputs
    tokens = intact_outputs(_vit(model), images)[-1]
    if tokens.dim() != 3:
        raise VisualizationInputError(f'the backbone returns {tokens.dim()}-d outputs; '
                                      f"visualizations need out_type='raw' tokens")
    return tokens


def project_patches(model: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """Patch features into the joint image-text space, L2-normalised: ... x C -> ... x D.

    Ours: the image head's norm and projection (``ImageEmbeddingHead.project``, the one RILS's
    reconstruction objective uses). open_clip: the image projection ``visual.proj``.
    """
    if is_open_clip(model):
        projection = model.clip.visual.proj
        projected = patches @ projection if projection is not None else patches
    else:
        if not hasattr(model, 'image_head'):
            raise VisualizationInputError(f'{type(model).__name__} has no image head (no '
                                          f'joint image-text space)')
        projected = model.image_head.project(patches)
    return F.normalize(projected.float(), dim=-1)


def encode_captions(model: nn.Module, captions: Sequence[str]) -> torch.Tensor:
    """Normalised caption embeddings, K x D, with the model's tokenizer (open_clip's own, or
    the CLIP BPE every text tower of this package is trained with)."""
    if not hasattr(model, 'encode_text'):
        raise VisualizationInputError(f'{type(model).__name__} has no text tower')
    if not captions:
        raise VisualizationInputError('no captions given')
    from ..models.algorithms.loss_maps import encode_captions as encode
    return encode(model, captions)  # every text model here has its tokenizer


def logit_temperature(model: nn.Module) -> float:
    """1 / the model's learned logit scale (CLIP's temperature)."""
    if is_open_clip(model):
        return float(1 / model.clip.logit_scale.exp())
    if hasattr(model, 'get_logit_scale'):
        return float(1 / model.get_logit_scale())
    raise VisualizationInputError(f'{type(model).__name__} has no logit scale')


class seeded:
    """Context manager: torch's global generators forked and seeded, restored on exit.

    The masked passes draw their masks from torch's global generator (as in training), so a
    seed fixes the mask and the same seed gives the same mask in every tool.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def read_lines(path: str) -> List[str]:
    """Non-empty stripped lines of a text file (or of a file shipped with the package)."""
    try:
        return resources.read_lines(path)
    except FileNotFoundError as error:
        raise VisualizationInputError(str(error)) from None
