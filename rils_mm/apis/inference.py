"""Build a trained model and use it from Python: image and text embeddings, zero-shot labels.

Every function takes a model from :func:`init_model` (or from mmpretrain's ``get_model``):
images go through the config's test pipeline (``test_pipeline``; without one, a bicubic resize
of the short side and a centre crop to the encoder's input size) and the model's own data
preprocessor (CLIP's normalisation), captions through the CLIP tokenizer the towers were trained
with. Zero-shot classification is the evaluation's (``ZeroShotClassifier``): open_clip's prompt
ensembling over the templates, scores ``100 * cos``.
"""
import copy
import os
import os.path as osp
import re
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image

from ..datasets.resources import load_classnames, load_templates
from ..models.backbones.rils_vit import intact_outputs
from ..models.utils.inference_loading import build_and_load
from ..models.utils.zero_shot_weights import build_text_classifier

__all__ = ['init_model', 'embed_images', 'embed_texts', 'zero_shot_classify', 'list_images',
           'IMAGE_EXTENSIONS', 'ImageReadError', 'ImagePreparer', 'image_test_pipeline',
           'image_inputs', 'image_encoder', 'text_model', 'load_config', 'to_rgb_array']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.gif', '.tif', '.tiff')
# Transforms that read the image file: skipped for images given as arrays.
_LOADERS = ('LoadImageRGB', 'LoadImageFromFile')
# Training-only parts that need files of their own and play no part in inference.
_TRAINING_ONLY = ('target_generator', )

ImageInput = Union[str, Path, np.ndarray, Image.Image, torch.Tensor]


def load_config(model: Union[str, Path, Config]) -> Config:
    """A copy of the config of ``model``: a ``Config``, a config file or a model-index name.

    Raises:
        FileNotFoundError: A ``.py`` path that is no file.
    """
    if isinstance(model, Config):
        return copy.deepcopy(model)
    model = str(model)
    if model.endswith('.py'):
        if not osp.isfile(model):
            raise FileNotFoundError(f'config file not found: {model}')
        return Config.fromfile(model)
    from mmpretrain.apis.model import ModelHub
    return copy.deepcopy(ModelHub.get(model).config)  # a name from list_models()


def init_model(model: Union[str, Path, Config],
               checkpoint: Optional[str] = None,
               device: Union[str, torch.device] = 'cpu',
               cfg_options: Optional[dict] = None) -> torch.nn.Module:
    """Build a model from a config or a model-index name and load a checkpoint, checked.

    Every weight of the model must be in the checkpoint, with its shape (or this raises,
    naming the missing keys), and every weight of the checkpoint must have a place in the
    model, except those of the training-only teacher (MILAN's ``target_generator``, which is
    not built). The file is read weights-only. An evaluation config (a ``ZeroShotClassifier``
    or ``ZeroShotRetriever``) gives the model it wraps; an ``OpenCLIPModel`` loads the file as
    its ``pretrained`` weights. The loading is :func:`rils_mm.models.utils.build_and_load`.

    Args:
        model (str | Path | Config): A config file, a ``Config``, or a name from
            ``mmpretrain.list_models('rils-mm_*')``.
        checkpoint (str, optional): A local checkpoint (a training run's ``epoch_N.pth``).
            Without it the weights are as built (random).
        device (str | torch.device): Where the model goes. Defaults to ``'cpu'``.
        cfg_options (dict, optional): Overrides of the config (``{'model.embed_dims': 256}``).

    Returns:
        nn.Module: The model in eval mode, its config in ``model._config`` (as mmpretrain's
        ``get_model`` keeps it).

    Raises:
        CheckpointKeysError: The checkpoint lacks weights of the model, holds others, or holds
            weights of another shape.
        CheckpointLoadError: The file is missing, damaged or holds non-tensor Python objects.
    """
    cfg = load_config(model)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    net = build_and_load(cfg.model, checkpoint, drop=_TRAINING_ONLY)
    net._config = cfg
    return net.to(device).eval()


def _image_text_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model with ``encode_image`` (a zero-shot wrapper's inner model), else ``model``."""
    if not hasattr(model, 'encode_image') and hasattr(getattr(model, 'model', None),
                                                       'encode_image'):
        return model.model
    return model


def image_test_pipeline(model: torch.nn.Module) -> List[dict]:
    """The config's test pipeline without its text steps, or resize + centre crop."""
    cfg = getattr(model, '_config', None)
    steps = cfg.get('test_pipeline') if cfg is not None else None
    if steps:
        return [copy.deepcopy(dict(step)) for step in steps
                if 'Tokenize' not in str(step.get('type', ''))]
    backbone = getattr(_image_text_model(model), 'backbone', None)
    height, width = getattr(backbone, 'img_size', (224, 224))
    return [dict(type='LoadImageRGB', min_size=1),
            dict(type='ResizeEdge', scale=min(height, width), edge='short',
                 interpolation='bicubic', backend='pillow'),
            dict(type='CenterCrop', crop_size=(width, height)),
            dict(type='PackImageText')]


def list_images(folder: str) -> List[str]:
    """The image files of ``folder`` and its sub-folders (by extension), sorted."""
    found = []
    for root, _, files in os.walk(folder):
        found += [osp.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


class ImageReadError(ValueError):
    """An image file that does not decode; the message names it, in one line."""


def image_inputs(images) -> list:
    """Images as a list: a folder gives its image files (sorted, sub-folders included); a
    file, PIL image, array or 3 x H x W tensor gives itself.

    Raises:
        FileNotFoundError: A folder without image files, or a path (given alone or in a list)
            that is no file; one line naming it.
    """
    if isinstance(images, (str, Path)) and osp.isdir(images):
        files = list_images(str(images))
        if not files:
            raise FileNotFoundError(f'no image file ({", ".join(IMAGE_EXTENSIONS)}) in '
                                    f'{images}')
        return files
    if isinstance(images, (str, Path, np.ndarray, Image.Image)) or (
            isinstance(images, torch.Tensor) and images.dim() == 3):
        images = [images]
    images = list(images)
    for image in images:  # before any batch runs
        if isinstance(image, (str, Path)) and not osp.isfile(image):
            raise FileNotFoundError(f'image file not found: {image}')
    return images


def to_rgb_array(image) -> np.ndarray:
    """A PIL image, an H x W x 3 array or a 3 x H x W tensor as an H x W x 3 uint8 RGB array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert('RGB'), dtype=np.uint8).copy()
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise TypeError(f'expected an H x W x 3 uint8 RGB image, got {image.dtype} '
                        f'{image.shape}')
    return image


class ImagePreparer:
    """The test pipeline, built once: files go through all of it, in-memory images through
    the steps after the loader (transforms built in mmpretrain's scope)."""

    def __init__(self, pipeline: List[dict]) -> None:
        from mmcv.transforms import Compose
        from mmpretrain.registry import TRANSFORMS
        loader = pipeline[0] if str(pipeline[0].get('type', '')).split('.')[-1] in _LOADERS \
            else None
        # mmcv's LoadImageFromFile gives BGR unless told otherwise.
        self.to_bgr = loader is not None and \
            loader['type'].split('.')[-1] == 'LoadImageFromFile' and \
            loader.get('channel_order', 'bgr') == 'bgr'
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            self.load = TRANSFORMS.build(loader) if loader is not None else None
            self.from_array = Compose([
                TRANSFORMS.build(step)
                for step in (pipeline[1:] if loader is not None else pipeline)])

    def read(self, path: str) -> dict:
        """The loader's result for one file.

        Raises:
            FileNotFoundError: No such file.
            ImageReadError: The file does not decode as an image (or the config has no
                loader for files).
        """
        if not osp.isfile(path):
            raise FileNotFoundError(f'image file not found: {path}')
        if self.load is None:
            raise ImageReadError(f'{path}: the test pipeline has no loader '
                                 f'({" or ".join(_LOADERS)}) to read files with')
        try:
            loaded = self.load(dict(img_path=path))
        except Exception as error:  # noqa: B902  (decoders raise many kinds)
            detail = str(getattr(error, 'detail', '') or error).replace(f'{path}: ', '')
            detail = re.sub(r' <_io\.BytesIO object at 0x[0-9a-f]+>', '', detail)  # PIL's
            raise ImageReadError(f'cannot read image {path}: '
                                 f'{" ".join(detail.split())[:200]}') from None
        if loaded is None or loaded.get('img') is None:  # mmcv's loader with ignore_empty
            raise ImageReadError(f'cannot read image {path}: it does not decode')
        return loaded

    def __call__(self, image) -> torch.Tensor:
        """One image (a path, PIL image, array or tensor) as the pipeline's C x H x W input.

        Raises:
            FileNotFoundError, ImageReadError: A file that is missing or does not decode.
        """
        if isinstance(image, (str, Path)):
            packed = self.from_array(self.read(str(image)))
        else:
            img = to_rgb_array(image)
            if self.to_bgr:
                img = np.ascontiguousarray(img[..., ::-1])
            packed = self.from_array(dict(img=img, img_shape=img.shape[:2],
                                          ori_shape=img.shape[:2]))
        inputs = packed['inputs']
        return inputs['images'] if isinstance(inputs, dict) else inputs


@torch.no_grad()
def _encode_batches(model, images: list, encode, batch_size: int) -> torch.Tensor:
    prepare = ImagePreparer(image_test_pipeline(model))
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([prepare(image) for image in images[start:start + batch_size]])
        inputs = model.data_preprocessor(dict(inputs=batch), False)['inputs']
        out.append(encode(inputs['images'] if isinstance(inputs, dict) else inputs))
    return torch.cat(out)


def embed_images(model: torch.nn.Module,
                 images: Union[ImageInput, Sequence[ImageInput]],
                 batch_size: int = 64) -> torch.Tensor:
    """Embeddings of images.

    Args:
        model (nn.Module): From :func:`init_model` or ``mmpretrain.get_model``.
        images: A folder (its image files, sorted), a file, a PIL image, an H x W x 3 uint8 RGB
            array, a 3 x H x W uint8 tensor, or a list of these.
        batch_size (int): Images per forward pass.

    Returns:
        Tensor: ``N x D`` unit-norm joint image embeddings for image-text models (the vectors
        that are compared with :func:`embed_texts`); for image-only models (MAE, MILAN) the
        ``N x C`` mean of the encoder's patch tokens (the features of the linear probe).
    """
    return _encode_batches(model, image_inputs(images), image_encoder(model), batch_size)


def image_encoder(model: torch.nn.Module):
    """What :func:`embed_images` computes from a preprocessed ``B x 3 x H x W`` batch:
    ``encode_image`` (``B x D``, unit norm) of an image-text model, or the ``B x C`` mean of
    the encoder's patch tokens of an image-only one (MAE, MILAN)."""
    inner = _image_text_model(model)
    if hasattr(inner, 'encode_image'):
        return inner.encode_image

    def encode(batch):
        return intact_outputs(inner.backbone, batch)[-1][:, 1:].mean(dim=1)

    return encode


def text_model(model: torch.nn.Module) -> torch.nn.Module:
    """The image-text model inside ``model`` (itself, or a zero-shot wrapper's ``model``).

    Raises:
        TypeError: The model has no text tower (MAE, MILAN).
    """
    inner = _image_text_model(model)
    if not hasattr(inner, 'encode_text'):
        raise TypeError(f'{type(inner).__name__} has no text tower: text embeddings and '
                        f'zero-shot classification need an image-text model (RILS, CLIP, '
                        f'MAE+CLIP, LiT, MaMMUT)')
    return inner


@torch.no_grad()
def embed_texts(model: torch.nn.Module, texts: Union[str, Sequence[str]],
                batch_size: int = 256) -> torch.Tensor:
    """Unit-norm joint text embeddings ``N x D`` of ``N`` captions (a string: ``N = 1``).

    Raises:
        TypeError: The model has no text tower (MAE, MILAN).
    """
    inner = text_model(model)
    texts = [texts] if isinstance(texts, str) else list(texts)
    device = next(inner.parameters()).device
    tokens = inner.tokenize(texts)
    return torch.cat([inner.encode_text(tokens[i:i + batch_size].to(device))
                      for i in range(0, len(texts), batch_size)])


@torch.no_grad()
def zero_shot_classify(model: torch.nn.Module,
                       images: Union[ImageInput, Sequence[ImageInput]],
                       class_names: Union[str, Sequence[str]],
                       templates: Union[str, Sequence[str]] = 'openai_imagenet_templates.txt',
                       batch_size: int = 64,
                       logit_scale: float = 100.) -> List[dict]:
    """Zero-shot labels of images among ``class_names``, with prompt ensembling.

    Args:
        model (nn.Module): An image-text model from :func:`init_model` (or ``get_model``).
        images: As for :func:`embed_images` (a folder: its image files, sorted).
        class_names (str | Sequence[str]): The names, or a file with one a line.
        templates (str | Sequence[str]): Prompts with one ``{}`` each, or a file with one a
            line (default: OpenAI's 80 ImageNet templates, shipped in rils_mm/datasets/data).
        batch_size (int): Images per forward pass.
        logit_scale (float): Temperature of the scores (open_clip's 100).

    Returns:
        list[dict]: Per image, in input order: ``pred_class`` (a name from ``class_names``),
        ``pred_label`` (its index), ``pred_score`` (its probability), ``pred_scores`` (the
        ``C`` probabilities, a float numpy array) and ``img_path`` (None for in-memory images).
    """
    inner = text_model(model)
    names = load_classnames(class_names) if isinstance(class_names, str) else list(class_names)
    prompts = load_templates(templates) if isinstance(templates, str) else list(templates)
    if not names:
        raise ValueError('zero_shot_classify: no class names given')
    images = image_inputs(images)
    features = embed_images(model, images, batch_size)
    classifier = build_text_classifier(inner.encode_text, inner.tokenize,
                                       names, prompts, features.device)
    probs = (logit_scale * features @ classifier.to(features.dtype)).double().softmax(dim=1)
    results = []
    for image, row in zip(images, probs.cpu()):
        label = int(row.argmax())
        results.append(dict(pred_class=names[label], pred_label=label,
                            pred_score=float(row[label]), pred_scores=row.numpy(),
                            img_path=str(image) if isinstance(image, (str, Path)) else None))
    return results
