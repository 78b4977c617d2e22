"""Zero-shot classification and retrieval with any image-text model built from a config.

Both wrappers take ``model=dict(type='RILS' | 'ImageTextPretrainer' | 'OpenCLIPModel', ...)``
(anything with ``encode_image``, ``encode_text`` and ``data_preprocessor``), run under
mmengine's standard ``TestLoop`` and feed registered metrics:

- ``ZeroShotClassifier`` -> ``ZeroShotAccuracy`` (mmpretrain's ``Accuracy``, top-1/top-5);
- ``ZeroShotRetriever`` -> ``ImageTextRetrievalRecall`` (R@1/5/10 both ways).

A pretraining checkpoint loads straight into the wrapper (``tools/test.py CONFIG --checkpoint
epoch_25.pth``): keys without the wrapper's ``model.`` prefix get it, and a checkpoint that
leaves any of the wrapped model's weights missing is an error, not a warning.
"""
import json
import os.path as osp
from typing import List, Optional, Sequence, Union

import torch
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from torch import nn

from ...compat import CheckpointKeysError
from ...datasets.resources import (load_class_subset, load_classnames, load_templates,
                                   resolve_data_file)
from ..utils.zero_shot_weights import build_text_classifier, group_logits

__all__ = ['ZeroShotClassifier', 'ZeroShotRetriever']


class _ImageTextEvalWrapper(BaseModel):
    """Builds the wrapped image-text model, shares its data preprocessor, owns tokenisation.

    Args:
        model (dict | nn.Module): Config of the image-text model, or the model itself (an
            image-text pretrainer validating itself during training).
        tokenizer (str): open_clip model name whose tokenizer to use when the model has no
            ``tokenize`` method. Defaults to ``'ViT-B-16'`` (CLIP BPE, 77 tokens), which is
            what RILS and CLIP are trained with.
        strict_load (bool): Raise when a loaded checkpoint misses weights of the model.
        data_preprocessor (dict, optional): Overrides the wrapped model's preprocessor.
        init_cfg (dict, optional): Passed to ``BaseModel``.
    """

    def __init__(self,
                 model: Union[dict, nn.Module],
                 tokenizer: str = 'ViT-B-16',
                 strict_load: bool = True,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        inner = model if isinstance(model, nn.Module) else MODELS.build(model)
        if isinstance(data_preprocessor, dict):
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(
            data_preprocessor=data_preprocessor or inner.data_preprocessor, init_cfg=init_cfg)
        self.model = inner
        self.tokenizer_name = tokenizer
        self.strict_load = strict_load
        self._register_load_state_dict_pre_hook(self._add_model_prefix)
        self.register_load_state_dict_post_hook(self._check_loaded)

    @staticmethod
    def _add_model_prefix(state_dict, prefix, *args) -> None:
        """Accept the wrapped model's own checkpoints (``backbone.*``, ``text_encoder.*``)."""
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            if not rest.startswith(('model.', 'data_preprocessor.')):
                state_dict[prefix + 'model.' + rest] = state_dict.pop(key)

    def _check_loaded(self, module, incompatible_keys) -> None:
        self._on_weights_loaded()
        missing = [k for k in incompatible_keys.missing_keys
                   if 'num_batches_tracked' not in k and '.model.' in f'.{k}']
        if missing and self.strict_load:
            raise CheckpointKeysError(
                f'{type(self).__name__}: the checkpoint leaves {len(missing)} weights of the '
                f'{type(self.model).__name__} model missing (first: {missing[:10]}); it was '
                'not saved from this model config. Set strict_load=False to evaluate anyway.')

    def _on_weights_loaded(self) -> None:
        """Drop anything cached from the previous weights."""

    def tokenize(self, texts: List[str]) -> torch.Tensor:
        """Token ids ``B x L`` (long) of ``texts``."""
        if hasattr(self.model, 'tokenize'):
            return self.model.tokenize(texts)
        if not hasattr(self, '_tokenizer'):
            import open_clip
            self._tokenizer = open_clip.get_tokenizer(self.tokenizer_name)
        return self._tokenizer(texts)

    @staticmethod
    def _images(inputs: Union[torch.Tensor, dict]) -> torch.Tensor:
        return inputs['images'] if isinstance(inputs, dict) else inputs

    def forward(self, inputs, data_samples=None, mode: str = 'predict'):
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self.model.encode_image(self._images(inputs))
        raise NotImplementedError(f'{type(self).__name__} evaluates only; mode "{mode}" is '
                                  'not supported.')


@MODELS.register_module()
class ZeroShotClassifier(_ImageTextEvalWrapper):
    """Zero-shot image classification with prompt-ensembled class embeddings.

    Scores are ``logit_scale * cos(image, class)`` as in open_clip's ``zero_shot_eval``;
    ``pred_score`` holds their softmax (same ranking). The class embeddings are computed with
    open_clip's ``build_zero_shot_classifier`` at the first prediction after weights are set.

    Args:
        model (dict | nn.Module): Config of the image-text model, or the model.
        classnames (str): Class-name file (path or shipped name), one a line, in label order.
        templates (str): Prompt-template file, one a line, each with one ``{}``.
        class_subset (str | Sequence[int], optional): Indices into ``classnames`` of the
            dataset's classes (e.g. ``'imagenet_r_indices.txt'``); label ``k`` is the
            ``k``-th index.
        class_groups (str | Sequence[Sequence[int]], optional): Each dataset class scored by
            the best of a group of ``classnames`` indices (ObjectNet). A JSON file of lists, an
            ObjectNet ``mappings`` folder, or the lists.
        logit_scale (float): Temperature of the scores. Defaults to 100 (open_clip's).
        num_classes_per_batch (int): Classes whose prompts are encoded per forward.
        tokenizer (str): See ``_ImageTextEvalWrapper``.
        strict_load (bool): See ``_ImageTextEvalWrapper``.
        data_preprocessor (dict, optional): See ``_ImageTextEvalWrapper``.
        init_cfg (dict, optional): See ``_ImageTextEvalWrapper``.
    """

    def __init__(self,
                 model: Union[dict, nn.Module],
                 classnames: str = 'imagenet_classnames.txt',
                 templates: str = 'openai_imagenet_templates.txt',
                 class_subset: Union[str, Sequence[int], None] = None,
                 class_groups: Union[str, Sequence[Sequence[int]], None] = None,
                 logit_scale: float = 100.,
                 num_classes_per_batch: int = 10,
                 tokenizer: str = 'ViT-B-16',
                 strict_load: bool = True,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(model, tokenizer, strict_load, data_preprocessor, init_cfg)
        self.classnames_file = resolve_data_file(classnames)
        self.templates_file = resolve_data_file(templates)
        self.classnames = load_classnames(classnames)
        self.templates = load_templates(templates)
        if class_subset is not None and class_groups is not None:
            raise ValueError('Give class_subset or class_groups, not both.')
        self.class_subset_file = class_subset if isinstance(class_subset, str) else None
        self.class_subset = load_class_subset(class_subset, len(self.classnames))
        self.class_groups = self._load_groups(class_groups, len(self.classnames))
        self.logit_scale = logit_scale
        self.num_classes_per_batch = num_classes_per_batch
        self._classifier: Optional[torch.Tensor] = None  # D x C, not part of the state dict

    @staticmethod
    def _load_groups(groups, num_classes: int) -> Optional[List[List[int]]]:
        if groups is None:
            return None
        if isinstance(groups, str):
            if osp.isdir(groups):
                from ...datasets.zero_shot import objectnet_class_groups
                groups = objectnet_class_groups(groups)[2]
            else:
                with open(groups) as f:
                    groups = json.load(f)
        groups = [[int(i) for i in g] for g in groups]
        if any(not g or not all(0 <= i < num_classes for i in g) for g in groups):
            raise ValueError(f'class_groups must be non-empty lists of indices in '
                             f'[0, {num_classes})')
        return groups

    def _on_weights_loaded(self) -> None:
        self._classifier = None

    @property
    def num_classes(self) -> int:
        """Number of classes scored (the dataset's)."""
        if self.class_groups is not None:
            return len(self.class_groups)
        return len(self.class_subset) if self.class_subset is not None else len(self.classnames)

    @torch.no_grad()
    def get_classifier(self, device: torch.device) -> torch.Tensor:
        """``D x C'`` class embeddings (``C'`` = classes of the subset, or all classnames)."""
        if self._classifier is None or self._classifier.device != device:
            names = self.classnames
            if self.class_subset is not None:
                names = [names[i] for i in self.class_subset]
            self._classifier = build_text_classifier(
                self.model.encode_text, self.tokenize, names, self.templates, device,
                self.num_classes_per_batch)
        return self._classifier

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """images: B x 3 x H x W (preprocessed) -> B x num_classes scores."""
        feats = self.model.encode_image(images)
        logits = self.logit_scale * feats @ self.get_classifier(feats.device).to(feats.dtype)
        if self.class_groups is not None:
            logits = group_logits(logits, self.class_groups)
        return logits

    @torch.no_grad()
    def predict(self, inputs, data_samples: Optional[List[DataSample]] = None
                ) -> List[DataSample]:
        """Class scores for a batch.

        Args:
            inputs (Tensor | dict): B x 3 x H x W preprocessed images (or ``dict(images=)``).
            data_samples (list[DataSample], optional): With ``gt_label``.

        Returns:
            list[DataSample]: ``pred_score`` (softmax, in float64 so that no score underflows
            to a tie), ``pred_label``, and the class-name file for the metric's checks.
        """
        scores = self.logits(self._images(inputs)).double().softmax(dim=1)
        if data_samples is None:
            data_samples = [DataSample() for _ in range(scores.size(0))]
        for sample, score in zip(data_samples, scores):
            sample.set_pred_score(score)
            sample.set_metainfo(dict(classnames_file=self.classnames_file,
                                     class_subset_file=self.class_subset_file))
        return data_samples

    def forward(self, inputs, data_samples=None, mode: str = 'predict'):
        if mode == 'tensor':
            return self.logits(self._images(inputs))
        return super().forward(inputs, data_samples, mode)


@MODELS.register_module()
class ZeroShotRetriever(_ImageTextEvalWrapper):
    """Zero-shot image<->text retrieval: embeds each test image and its captions.

    Works with ``KarpathyRetrieval`` (or mmpretrain's ``COCORetrieval``/``Flickr30kRetrieval``)
    in test mode and ``PackInputs(algorithm_keys=['text', 'gt_text_id', 'gt_image_id'],
    meta_keys=['image_id'])``; ``ImageTextRetrievalRecall`` ranks all captions against all
    images once every rank's embeddings are gathered.

    Args:
        model (dict): Config of the image-text model.
        text_batch_size (int): Captions encoded per forward. Defaults to 256.
        tokenizer, strict_load, data_preprocessor, init_cfg: See ``_ImageTextEvalWrapper``.
    """

    def __init__(self,
                 model: dict,
                 text_batch_size: int = 256,
                 tokenizer: str = 'ViT-B-16',
                 strict_load: bool = True,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(model, tokenizer, strict_load, data_preprocessor, init_cfg)
        self.text_batch_size = text_batch_size

    @torch.no_grad()
    def encode_captions(self, texts: List[str], device: torch.device) -> torch.Tensor:
        """Captions -> ``M x D`` unit-norm embeddings, ``text_batch_size`` at a time."""
        tokens = self.tokenize(texts)
        return torch.cat([
            self.model.encode_text(tokens[i:i + self.text_batch_size].to(device))
            for i in range(0, len(texts), self.text_batch_size)
        ])

    @torch.no_grad()
    def predict(self, inputs, data_samples: List[BaseDataElement]) -> List[BaseDataElement]:
        """Image embedding and caption embeddings of each test image.

        Args:
            inputs (Tensor | dict): B x 3 x H x W preprocessed images.
            data_samples (list): Each with ``text`` (its captions), ``gt_text_id`` and
                ``image_id``.

        Returns:
            list: The samples with ``image_feat`` (``D``) and ``text_feats`` (``n x D``).
        """
        image_feats = self.model.encode_image(self._images(inputs))
        counts = [len(s.text) for s in data_samples]
        if min(counts) == 0:
            raise ValueError('ZeroShotRetriever: a test image has no captions.')
        text_feats = self.encode_captions([t for s in data_samples for t in s.text],
                                          image_feats.device).split(counts)
        for sample, img, txt in zip(data_samples, image_feats, text_feats):
            sample.set_field(img, 'image_feat')
            sample.set_field(txt, 'text_feats')
        return data_samples
