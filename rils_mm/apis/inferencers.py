"""mmpretrain-style Inferencers for the image-text models of this package.

Built on mmpretrain's ``BaseInferencer`` (its ``__call__``: inputs to a list, batches through
``preprocess`` and ``forward`` under a progress bar, ``postprocess`` to plain results), with
what differs here:

- the model: a config file, a ``Config``, a model-index name (``list_models('rils-mm_*')``)
  or a built model, with ``pretrained`` a checkpoint path (``.pth`` or ``.safetensors``),
  ``True`` (the index's published ``Weights``, or a config's ``load_from``) or ``None``;
  loaded by :func:`~.inference.init_model`, every key checked (mmpretrain's Inferencers load
  with ``strict=False``);
- the images: the config's ``test_pipeline`` (:class:`~.inference.ImagePreparer`), not
  ``test_dataloader``'s, which our pretraining configs (MaMMUT's demo among them) do not have;
  files, folders (their image files, sorted), PIL images, H x W x 3 RGB arrays, 3 x H x W
  tensors; a missing file or one that does not decode is one line naming it, raised before
  (missing) or when (undecodable) its batch runs;
- the results: lists of dicts of Python numbers and strings (and numpy vectors), in input
  order, each with ``img_path`` (None for in-memory images) or ``text``.

- :class:`EmbeddingInferencer`: image embeddings (and text ones, ``embed_texts``);
- :class:`ZeroShotInferencer`: labels among given class names (prompt ensembling);
- :class:`ImageToTextRetrievalInferencer`: the gallery captions nearest each image;
- :class:`TextToImageRetrievalInferencer`: the gallery images nearest each caption;
- :class:`CaptionInferencer`: MaMMUT's generated captions.
"""
import os
import os.path as osp
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.config import Config
from mmpretrain.apis.base import BaseInferencer
from torch import nn

from ..datasets.resources import load_classnames, load_templates
from ..models.utils.zero_shot_weights import build_text_classifier
from .inference import (ImagePreparer, embed_texts, image_encoder, image_inputs,
                        image_test_pipeline, init_model, load_config, text_model, to_rgb_array)

__all__ = ['ImageTextInferencer', 'EmbeddingInferencer', 'ZeroShotInferencer',
           'ImageToTextRetrievalInferencer', 'TextToImageRetrievalInferencer',
           'CaptionInferencer']

ModelType = Union[str, Path, Config, nn.Module]


def _checkpoint(model, pretrained) -> Optional[str]:
    """The file ``pretrained`` names: a path itself; ``True`` the index's ``Weights`` for a
    name, a config's ``load_from`` (None, with a warning, when there is neither)."""
    if pretrained is not True:
        return str(pretrained) if pretrained else None
    if isinstance(model, (str, Path)) and not str(model).endswith('.py'):
        from mmpretrain.apis.model import ModelHub
        found = ModelHub.get(str(model)).weights
    else:
        found = load_config(model).get('load_from')
    if not found:
        warnings.warn(f'{getattr(model, "filename", model)} has no published weights (no '
                      f'Weights in the model index, no load_from): the weights are random; '
                      f'pass pretrained=PATH')
    return found or None


def _path(image) -> Optional[str]:
    return str(image) if isinstance(image, (str, Path)) else None


class ImageTextInferencer(BaseInferencer):
    """What the Inferencers here share: the checked model, the image pipeline, the batching.

    ``preprocess`` yields ``(inputs, batch)``: the batch's inputs as given and their
    ``B x 3 x H x W`` pipeline output (not yet normalised); ``forward`` returns one plain
    result per input; ``postprocess`` returns them.

    Args:
        model (str | Path | Config | nn.Module): A config file, a ``Config``, a name from
            ``list_models('rils-mm_*')``, or a built model (from :func:`init_model`).
        pretrained (str | bool | None): A checkpoint (``.pth``/``.safetensors``); ``True``:
            the index's ``Weights`` (a name) or ``load_from`` (a config); None/False: none (a
            built model keeps its weights). Defaults to True.
        device (str | torch.device): Where the model runs. Defaults to ``'cpu'``.
        cfg_options (dict, optional): Overrides of the config (as :func:`init_model`'s).
    """

    def __init__(self,
                 model: ModelType,
                 pretrained: Union[str, bool, None] = True,
                 device: Union[str, torch.device] = 'cpu',
                 cfg_options: Optional[dict] = None) -> None:
        if isinstance(model, nn.Module):
            if isinstance(pretrained, str):
                from ..models.utils.checkpoint_loading import load_checked
                load_checked(model, pretrained, prefix='', logger=None)
            model = model.to(device).eval()
        else:
            model = init_model(model, _checkpoint(model, pretrained), device, cfg_options)
        self.model = model
        self.config = getattr(model, '_config', None)
        self.pipeline = self._init_pipeline(self.config)
        self.visualizer = None

    def _init_pipeline(self, cfg: Optional[Config]) -> Callable:
        return ImagePreparer(image_test_pipeline(self.model))

    def _inputs_to_list(self, inputs) -> list:
        return image_inputs(inputs)

    def preprocess(self, inputs: list, batch_size: int = 1, **kwargs):
        for chunk in self._get_chunk_data(inputs, batch_size):
            yield chunk, torch.stack([self.pipeline(image) for image in chunk])

    def _images(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch through the model's data preprocessor (normalised, on its device)."""
        inputs = self.model.data_preprocessor(dict(inputs=batch), False)['inputs']
        return inputs['images'] if isinstance(inputs, dict) else inputs

    def _embed_images(self, batch: torch.Tensor) -> torch.Tensor:
        return image_encoder(self.model)(self._images(batch))

    def _draw_each(self, inputs: list, preds: List[dict], draw: Callable,
                   show_dir: Optional[str], show: bool) -> Optional[List[np.ndarray]]:
        """mmpretrain's ``UniversalVisualizer`` on each input: ``draw(image, pred, name,
        out_file)``, ``out_file`` being ``show_dir/<file name stem or index>.png``."""
        if not show and show_dir is None:
            return None
        from mmpretrain.visualization import UniversalVisualizer
        if self.visualizer is None:
            self.visualizer = UniversalVisualizer()
        if show_dir is not None:
            os.makedirs(show_dir, exist_ok=True)
        drawn = []
        for index, (image, pred) in enumerate(zip(inputs, preds)):
            if isinstance(image, (str, Path)):
                from PIL import Image
                name = Path(image).stem
                image = np.asarray(Image.open(image).convert('RGB'))
            else:
                name, image = str(index), to_rgb_array(image)
            draw(image, pred, name,
                 osp.join(show_dir, f'{name}.png') if show_dir is not None else None)
            drawn.append(self.visualizer.get_image())
        if show:
            self.visualizer.close()
        return drawn

    def postprocess(self, preds: List[dict], visualization=None,
                    return_datasamples: bool = False, **kwargs) -> List[dict]:
        if return_datasamples:
            raise ValueError(f'{type(self).__name__} returns plain results, not data samples')
        return preds


class EmbeddingInferencer(ImageTextInferencer):
    """Image embeddings: :func:`~.inference.embed_images`'s vectors (joint, unit norm, for
    image-text models; the mean patch token of image-only ones, MAE and MILAN).

    Returns (of a call): per image ``embedding`` (float32 numpy) and ``img_path``;
    :meth:`embed_texts` gives the text side.
    """

    @torch.no_grad()
    def forward(self, data, **kwargs) -> List[dict]:
        images, batch = data
        vectors = self._embed_images(batch).float().cpu().numpy()
        return [dict(embedding=vector, img_path=_path(image))
                for image, vector in zip(images, vectors)]

    def embed_texts(self, texts: Union[str, Sequence[str]], batch_size: int = 256
                    ) -> List[dict]:
        """Joint text embeddings: per caption ``text`` and ``embedding`` (unit norm).

        Raises:
            TypeError: The model has no text tower.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        vectors = embed_texts(self.model, texts, batch_size).float().cpu().numpy()
        return [dict(text=text, embedding=vector) for text, vector in zip(texts, vectors)]


class ZeroShotInferencer(ImageTextInferencer):
    """Zero-shot labels among ``classes``: :func:`~.inference.zero_shot_classify`'s, from a
    classifier built once.

    Args:
        model, pretrained, device, cfg_options: As :class:`ImageTextInferencer`'s.
        classes (str | Sequence[str]): The class names, or a file with one a line.
        templates (str | Sequence[str]): Prompts with one ``{}`` each, or a file with one a
            line (default: OpenAI's 80 ImageNet templates).
        logit_scale (float): Temperature of the scores (open_clip's 100).

    Returns (of a call): per image ``pred_class``, ``pred_label``, ``pred_score``,
    ``pred_scores`` (``C`` probabilities, float64 numpy) and ``img_path``. ``show=True`` or
    ``show_dir=DIR`` draw the labels as mmpretrain's ``ImageClassificationInferencer`` does.

    Raises:
        TypeError: The model has no text tower.
        ValueError: No class names.
    """
    visualize_kwargs = {'show', 'wait_time', 'resize', 'show_dir'}

    def __init__(self, model: ModelType, pretrained: Union[str, bool, None] = True,
                 device: Union[str, torch.device] = 'cpu', cfg_options: Optional[dict] = None,
                 *, classes: Union[str, Sequence[str]],
                 templates: Union[str, Sequence[str]] = 'openai_imagenet_templates.txt',
                 logit_scale: float = 100.) -> None:
        super().__init__(model, pretrained, device, cfg_options)
        inner = text_model(self.model)
        self.classes = load_classnames(classes) if isinstance(classes, str) else list(classes)
        if not self.classes:
            raise ValueError('ZeroShotInferencer: no class names given')
        prompts = load_templates(templates) if isinstance(templates, str) else list(templates)
        with torch.no_grad():
            self.classifier = build_text_classifier(inner.encode_text, inner.tokenize,
                                                    self.classes, prompts,
                                                    next(inner.parameters()).device)
        self.logit_scale = logit_scale

    def visualize(self, inputs: list, preds: List[dict], show: bool = False,
                  wait_time: int = 0, resize: Optional[int] = None,
                  show_dir: Optional[str] = None) -> Optional[List[np.ndarray]]:
        """mmpretrain's classification drawing (``visualize_cls``) of each label, shown or
        written to ``show_dir``; None when neither is asked."""
        from mmpretrain.structures import DataSample

        def draw(image, pred, name, out_file):
            sample = DataSample().set_pred_score(torch.from_numpy(pred['pred_scores']))
            sample.set_pred_label(pred['pred_label'])
            self.visualizer.visualize_cls(image, sample, classes=self.classes, resize=resize,
                                          show=show, wait_time=wait_time, draw_gt=False,
                                          name=name, out_file=out_file)

        return self._draw_each(inputs, preds, draw, show_dir, show)

    @torch.no_grad()
    def forward(self, data, **kwargs) -> List[dict]:
        images, batch = data
        features = self._embed_images(batch)
        logits = self.logit_scale * features @ self.classifier.to(features.dtype)
        results = []
        for image, row in zip(images, logits.double().softmax(dim=1).cpu()):
            label = int(row.argmax())
            results.append(dict(pred_class=self.classes[label], pred_label=label,
                                pred_score=float(row[label]), pred_scores=row.numpy(),
                                img_path=_path(image)))
        return results


class _RetrievalInferencer(ImageTextInferencer):
    """The ``topk`` gallery items nearest each query by cosine similarity."""
    forward_kwargs = {'topk'}

    def _matches(self, queries: torch.Tensor, topk: int) -> List[List[dict]]:
        similarity = queries @ self.gallery.to(queries.dtype).T
        scores, indices = similarity.topk(min(topk, len(self.gallery)), dim=1)
        return [[dict(index=int(i), score=float(s), item=self.gallery_items[int(i)])
                 for i, s in zip(row_indices, row_scores)]
                for row_indices, row_scores in zip(indices.cpu(), scores.float().cpu())]


class ImageToTextRetrievalInferencer(_RetrievalInferencer):
    """The gallery captions nearest each image.

    Args:
        model, pretrained, device, cfg_options: As :class:`ImageTextInferencer`'s.
        gallery (str | Sequence[str]): The captions, or a file with one a line; embedded once.

    Returns (of a call, ``topk=5`` by default): per image ``img_path`` and ``matches``, best
    first: ``index`` (into the gallery), ``score`` (cosine similarity) and ``item`` (the
    caption).
    """

    def __init__(self, model: ModelType, pretrained: Union[str, bool, None] = True,
                 device: Union[str, torch.device] = 'cpu', cfg_options: Optional[dict] = None,
                 *, gallery: Union[str, Sequence[str]]) -> None:
        super().__init__(model, pretrained, device, cfg_options)
        self.gallery_items = load_classnames(gallery) if isinstance(gallery, str) \
            else list(gallery)
        if not self.gallery_items:
            raise ValueError('ImageToTextRetrievalInferencer: the gallery has no caption')
        self.gallery = embed_texts(self.model, self.gallery_items)

    @torch.no_grad()
    def forward(self, data, topk: int = 5, **kwargs) -> List[dict]:
        images, batch = data
        return [dict(img_path=_path(image), matches=matches) for image, matches in
                zip(images, self._matches(self._embed_images(batch), topk))]


class TextToImageRetrievalInferencer(_RetrievalInferencer):
    """The gallery images nearest each caption.

    Args:
        model, pretrained, device, cfg_options: As :class:`ImageTextInferencer`'s.
        gallery: Images as the Inferencers take them (a folder: its image files, sorted);
            embedded once, in batches of ``gallery_batch_size``.

    Returns (of a call on captions, ``topk=5`` by default): per caption ``text`` and
    ``matches``, best first: ``index`` (into the gallery), ``score`` (cosine similarity) and
    ``item`` (the image's path, or its index for an in-memory image).
    """

    def __init__(self, model: ModelType, pretrained: Union[str, bool, None] = True,
                 device: Union[str, torch.device] = 'cpu', cfg_options: Optional[dict] = None,
                 *, gallery, gallery_batch_size: int = 64) -> None:
        super().__init__(model, pretrained, device, cfg_options)
        text_model(self.model)  # a model without a text tower fails now, not at the call
        images = image_inputs(gallery)
        with torch.no_grad():
            self.gallery = torch.cat([
                self._embed_images(batch)
                for _, batch in super().preprocess(images, gallery_batch_size)])
        self.gallery_items = [_path(image) or index for index, image in enumerate(images)]

    def _inputs_to_list(self, inputs) -> list:
        return [inputs] if isinstance(inputs, str) else list(inputs)

    def preprocess(self, inputs: list, batch_size: int = 1, **kwargs):
        for chunk in self._get_chunk_data(inputs, batch_size):
            yield chunk

    @torch.no_grad()
    def forward(self, texts: List[str], topk: int = 5, **kwargs) -> List[dict]:
        return [dict(text=text, matches=matches) for text, matches in
                zip(texts, self._matches(embed_texts(self.model, texts), topk))]


class CaptionInferencer(ImageTextInferencer):
    """MaMMUT's generated captions (its ``generate``: greedy, or beam search).

    mmpretrain's ``ImageCaptionInferencer`` reads ``test_dataloader``'s pipeline, which a
    pretraining config such as ``configs/mammut/demo_cpu.py`` does not have; this one reads
    ``test_pipeline``.

    Returns (of a call; ``max_length`` and ``beam_size`` default to the model's): per image
    ``pred_caption`` (text), ``pred_caption_ids`` (token ids) and ``img_path``. ``show=True``
    or ``show_dir=DIR`` draw the captions as mmpretrain's ``ImageCaptionInferencer`` does.

    Raises:
        TypeError: The model does not generate captions.
    """
    forward_kwargs = {'max_length', 'beam_size'}
    visualize_kwargs = {'show', 'wait_time', 'resize', 'show_dir'}

    def __init__(self, model: ModelType, pretrained: Union[str, bool, None] = True,
                 device: Union[str, torch.device] = 'cpu',
                 cfg_options: Optional[dict] = None) -> None:
        super().__init__(model, pretrained, device, cfg_options)
        if not hasattr(self.model, 'generate'):
            raise TypeError(f'{type(self.model).__name__} does not generate captions: '
                            f'CaptionInferencer needs a captioning model (MaMMUT)')

    def visualize(self, inputs: list, preds: List[dict], show: bool = False,
                  wait_time: int = 0, resize: Optional[int] = None,
                  show_dir: Optional[str] = None) -> Optional[List[np.ndarray]]:
        """mmpretrain's caption drawing (``visualize_image_caption``), shown or written to
        ``show_dir``; None when neither is asked."""
        from mmpretrain.structures import DataSample

        def draw(image, pred, name, out_file):
            sample = DataSample()
            sample.set_field(pred['pred_caption'], 'pred_caption', field_type='metainfo')
            self.visualizer.visualize_image_caption(image, sample, resize=resize, show=show,
                                                    wait_time=wait_time, name=name,
                                                    out_file=out_file)

        return self._draw_each(inputs, preds, draw, show_dir, show)

    @torch.no_grad()
    def forward(self, data, max_length: Optional[int] = None, beam_size: Optional[int] = None,
                **kwargs) -> List[dict]:
        from ..datasets.transforms.tokenize import get_clip_tokenizer
        images, batch = data
        tokenizer = get_clip_tokenizer()
        ids = self.model.generate(self._images(batch), max_length, beam_size)
        return [dict(pred_caption=tokenizer.decode(row).strip(), pred_caption_ids=list(row),
                     img_path=_path(image)) for image, row in zip(images, ids)]
