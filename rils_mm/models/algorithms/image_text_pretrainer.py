"""Contrastive image-text pretraining (CLIP) on mmpretrain's self-supervised base class.

The other image-text methods of this package (RILS, MAE+CLIP, LiT, MaMMUT) subclass it and add
their objective through ``BaseSelfSupervisor``'s ``neck`` (a decoder) and ``head`` slots;
alone it is the CLIP baseline (Radford et al., ICML 2021).

A training step is written as two methods, so that it can also run in micro-batches with the
loss of the whole batch (``accumulation``, GradCache): :meth:`ImageTextPretrainer.embed` (the
passes over the samples) and :meth:`ImageTextPretrainer.batch_losses` (the losses that couple
the samples, from what ``embed`` returned).
"""
import math
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from mmpretrain.models.selfsup.base import BaseSelfSupervisor
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from torch import nn

from ...datasets.transforms.tokenize import get_clip_tokenizer
from ..backbones.rils_vit import intact_outputs
from ..utils.checkpoint_loading import checked_init_cfg
from ..utils.grad_cache import (Embedded, accumulated_train_step, parse_accumulation,
                                surrogate_loss)
from ..utils.locking import lock_groups, lock_module, set_locked_eval

TOWERS = ('backbone', 'text_encoder', 'image_head')


@MODELS.register_module()
class ImageTextPretrainer(BaseSelfSupervisor):
    """Image tower + image head + text tower + learnable logit scale, trained contrastively.

    ``embed_dims`` is the one place that sets the joint width: the image head projects into it
    and the text tower's ``output_dim`` defaults to it.

    Args:
        backbone (dict): Image tower (``RILSMaskedViT``, or another form of ``RILSViT``, with
            ``out_type='raw'``).
        text_encoder (dict): Text tower (``CLIPTextEncoder``).
        image_head (dict): Pooling and projection (``ImageEmbeddingHead``); ``in_channels``
            and ``embed_dims`` are filled in. Defaults to mean pooling, bias-free projection.
        embed_dims (int): Joint embedding width D.
        loss_contrastive (dict): Contrastive loss config.
        logit_scale_init (float): Initial log logit scale. Defaults to ln(1 / 0.07).
        logit_scale_max (float): The log logit scale is clamped to at most this.
            Defaults to ln(100).
        neck (dict, optional): A decoder, for subclasses that reconstruct.
        head (dict, optional): The reconstruction objective, for subclasses.
        target_generator (dict, optional): A target generator, for subclasses.
        lock_cfg (dict, optional): Towers to lock, by attribute name (``backbone``,
            ``text_encoder``, ``image_head``): ``True`` locks all of that module, ``dict(
            unlocked_groups=N)`` keeps its last N parameter groups (blocks, counted from the
            output) trainable, as open_clip 3.3's ``lock_image_tower(unlocked_groups=N)`` /
            ``lock_text_tower(unlocked_layers=N)`` do: for ``backbone`` the groups are those
            of the image side, the encoder's (stem, blocks, the last block with the final
            norm) and then the image head (open_clip's ``proj``), so N=0 locks the head too
            and N=1 trains only the head (``backbone=True`` locks the encoder alone and leaves
            the head to ``lock_cfg.image_head``; naming both with the dict form is an error);
            for ``text_encoder`` the groups end with the text projection on its own. A locked
            part has ``requires_grad=False``, stays in eval mode (norm statistics, dropout and
            stochastic depth fixed) and never gets a gradient, so the optimizer keeps no state
            for it. LiT (Zhai et al., CVPR 2022) locks the image
            tower.
        accumulation (dict, optional): ``dict(micro_batches=K)``: each training step takes
            the dataloader's batch (K x B samples per device: ``train_dataloader.batch_size``
            is K x B, so samplers, epochs and resuming are unchanged), splits it into K
            micro-batches of B, and makes ONE optimizer step whose loss and gradients are
            those of the whole batch (K x B x world size for the losses that gather across
            devices), exactly, holding the activations of one micro-batch at a time (GradCache,
            Gao et al., 2021; ``rils_mm.models.utils.grad_cache``). It costs a second
            forward pass of every micro-batch. mmengine's ``accumulative_counts``, which
            averages the losses of K small batches, is another objective for these losses
            and cannot be combined with it. Distributed runs use the model wrapper
            ``GradCacheDistributedDataParallel`` (``tools/train.py`` selects it). Random draws
            (masks, dropout, stochastic depth) repeat in the second pass from the saved
            generator states. Defaults to None (K = 1: one pass on the batch).
        zero_shot (dict, optional): Zero-shot classification for validation during
            training (mmengine's ``ValLoop`` with ``val_dataloader`` of labelled images and
            ``val_evaluator=dict(type='ZeroShotAccuracy', topk=(1, 5))``): the arguments of
            :class:`~rils_mm.models.algorithms.zero_shot.ZeroShotClassifier` but ``model``
            (``classnames``, ``templates``, ...). ``predict`` (hence ``val_step``) then scores
            images as that classifier does on this model, with the class embeddings built
            once per validation from the current weights, so the figures are those of
            ``tools/test.py`` with the zero-shot config on the checkpoint of that epoch.
            Defaults to None (no ``predict``).
        data_preprocessor (dict, optional): Defaults to ``ImageTextDataPreprocessor``.
        init_cfg (dict | list, optional): Initialisation config.
    """

    def __init__(self,
                 backbone: dict,
                 text_encoder: dict,
                 image_head: dict = dict(type='ImageEmbeddingHead'),
                 embed_dims: int = 512,
                 loss_contrastive: dict = dict(type='ContrastiveLoss'),
                 logit_scale_init: float = math.log(1 / 0.07),
                 logit_scale_max: float = math.log(100),
                 neck: Optional[dict] = None,
                 head: Optional[dict] = None,
                 target_generator: Optional[dict] = None,
                 lock_cfg: Optional[dict] = None,
                 accumulation: Optional[dict] = None,
                 zero_shot: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        name = type(self).__name__
        if zero_shot is not None and (not isinstance(zero_shot, dict) or 'model' in zero_shot):
            raise ValueError(f'{name}: zero_shot must be a dict of ZeroShotClassifier '
                             f'arguments other than model, got {zero_shot!r}')
        micro_batches = parse_accumulation(accumulation, name)
        if micro_batches > 1 and type(self).loss is not ImageTextPretrainer.loss:
            raise ValueError(f'{name}: accumulation needs the step as embed() and '
                             f'batch_losses(); {name} overrides loss()')
        data_preprocessor = dict(data_preprocessor or {})
        data_preprocessor.setdefault('type', 'ImageTextDataPreprocessor')
        super().__init__(backbone=backbone, neck=neck, head=head,
                         target_generator=target_generator,
                         data_preprocessor=data_preprocessor,
                         init_cfg=checked_init_cfg(init_cfg))
        self.micro_batches = micro_batches
        if getattr(self.backbone, 'out_type', 'raw') != 'raw':
            raise ValueError(f'{name}: backbone.out_type must be "raw" (the class and patch '
                             f'tokens), got "{self.backbone.out_type}"')
        self.text_encoder = MODELS.build(dict(dict(output_dim=embed_dims), **text_encoder))
        text_dims = getattr(self.text_encoder, 'output_dim', embed_dims)
        if text_dims != embed_dims:
            raise ValueError(f'{name}: embed_dims={embed_dims} does not match '
                             f'text_encoder.output_dim={text_dims}')
        self.embed_dims = embed_dims
        self.image_head = MODELS.build(
            dict(dict(in_channels=self.backbone.embed_dims, embed_dims=embed_dims),
                 **image_head))
        if self.image_head.embed_dims != embed_dims:
            raise ValueError(f'{name}: image_head.embed_dims={self.image_head.embed_dims} '
                             f'does not match embed_dims={embed_dims}')
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.logit_scale_max = logit_scale_max
        self.loss_contrastive = MODELS.build(loss_contrastive)
        self._register_load_state_dict_pre_hook(self._rename_legacy_keys)
        self.locked_parameters = self._lock(lock_cfg or {})
        self.zero_shot_cfg = zero_shot
        # Built at the first prediction (the class-name file may be written by the training
        # dataset, built after the model). Kept out of the module tree: it wraps this model.
        object.__setattr__(self, '_zero_shot', None)

    @staticmethod
    def _rename_legacy_keys(state_dict: dict, prefix: str, *args) -> None:
        """Checkpoints of the first version kept the projection as ``image_projection``."""
        old = prefix + 'image_projection.weight'
        if old in state_dict:
            state_dict[prefix + 'image_head.projection.weight'] = state_dict.pop(old)

    def _lock(self, lock_cfg: dict) -> Dict[str, List[str]]:
        """Freeze the towers ``lock_cfg`` names; returns their frozen parameter names."""
        name = type(self).__name__
        locked = {}
        for tower, cfg in lock_cfg.items():
            if tower not in TOWERS:
                raise ValueError(f'{name}: lock_cfg names "{tower}"; lockable '
                                 f'towers are {TOWERS}')
        image_side = isinstance(lock_cfg.get('backbone'), dict)
        if image_side and lock_cfg.get('image_head') not in (None, False):
            raise ValueError(f'{name}: lock_cfg.backbone=dict(unlocked_groups=N) locks the '
                             'image head as its last group (open_clip\'s lock_image_tower); '
                             'drop lock_cfg.image_head')
        for tower, cfg in lock_cfg.items():
            if cfg is False or cfg is None:
                continue
            if cfg is not True and not isinstance(cfg, dict):
                raise ValueError(f'{name}: lock_cfg.{tower} must be True, False or '
                                 f'dict(unlocked_groups=N), got {cfg!r}')
            cfg = {} if cfg is True else dict(cfg)
            unlocked_groups = cfg.pop('unlocked_groups', 0)
            if cfg:
                raise ValueError(f'{name}: lock_cfg.{tower} takes only '
                                 f'unlocked_groups, got {sorted(cfg)}')
            if tower == 'backbone' and image_side:
                locked.update(self._lock_image_side(unlocked_groups))
            else:
                locked[tower] = lock_module(getattr(self, tower), unlocked_groups)
        return locked

    def _lock_image_side(self, unlocked_groups: int) -> Dict[str, List[str]]:
        """open_clip's ``lock_image_tower(unlocked_groups)`` on the encoder and the image head:
        the encoder's groups (stem, blocks, last block with the final norm), then the head
        (pooling, norm, projection; open_clip's ``proj``) as the last group, counted even when
        it has no parameters."""
        backbone_names = [n for n, _ in self.backbone.named_parameters()]
        groups = (self.backbone.lock_groups() if hasattr(self.backbone, 'lock_groups')
                  else [backbone_names])
        grouped = {n for group in groups for n in group}
        groups = [[n for n in backbone_names if n not in grouped] + list(groups[0])
                  ] + list(groups[1:])
        groups = [[f'backbone.{n}' for n in group] for group in groups]
        groups.append([f'image_head.{n}' for n, _ in self.image_head.named_parameters()])
        frozen = lock_groups(self, groups, unlocked_groups, f'{type(self).__name__}: '
                             'lock_cfg.backbone')
        return {tower: [n[len(tower) + 1:] for n in frozen if n.startswith(tower + '.')]
                for tower in ('backbone', 'image_head')}

    def train(self, mode: bool = True) -> 'ImageTextPretrainer':
        """As ``nn.Module.train``, but locked parts stay in eval mode. Entering eval mode
        (mmengine's ``ValLoop`` starts so) drops the zero-shot class embeddings of the
        previous weights."""
        super().train(mode)
        if not mode and getattr(self, '_zero_shot', None) is not None:
            self._zero_shot._on_weights_loaded()
        for tower in self.locked_parameters:
            set_locked_eval(getattr(self, tower))
        return self

    def get_logit_scale(self) -> torch.Tensor:
        """exp of the learnable log scale, clamped to at most ``exp(logit_scale_max)``."""
        return self.logit_scale.clamp(max=self.logit_scale_max).exp()

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Intact pass. images: B x 3 x H x W -> B x (1 + L) x C, class token first."""
        return intact_outputs(self.backbone, images)[-1]

    def embed_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image head, normalised: B x (1 + L) x C -> B x D."""
        return F.normalize(self.image_head(tokens), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised joint image embeddings. images: B x 3 x H x W (normalised) -> B x D."""
        return self.embed_image_tokens(self.image_tokens(images))

    def encode_text(self, texts: torch.Tensor) -> torch.Tensor:
        """Normalised joint text embeddings. texts: B x 77 token ids -> B x D."""
        return F.normalize(self.text_encoder(texts), dim=-1)

    def tokenize(self, texts: List[str]) -> torch.Tensor:
        """Token ids ``N x context_length`` (long) of ``N`` captions: the CLIP BPE the text
        tower is trained with (``CLIPTokenize`` in the pipelines), at its context length."""
        context_length = getattr(self.text_encoder, 'context_length', 77)
        return get_clip_tokenizer()(list(texts), context_length=context_length)

    def extract_feat(self, inputs: Union[torch.Tensor, dict]):
        """Intact-pass encoder outputs (mmpretrain's convention), from images or a dict."""
        images = inputs['images'] if isinstance(inputs, dict) else inputs
        return intact_outputs(self.backbone, images)

    def contrastive_step(self, tokens: torch.Tensor, texts: torch.Tensor):
        """Contrastive loss and its logged values from intact-pass tokens and caption ids.

        Returns:
            tuple: the ``ContrastiveOutput``, the local image->text top-1 hits (B bools) and
            the dict of losses and metrics to log.
        """
        return self.contrastive_losses(self.embed_image_tokens(tokens), self.encode_text(texts))

    def contrastive_losses(self, image_embeddings: torch.Tensor,
                           text_embeddings: torch.Tensor):
        """:meth:`contrastive_step` from normalised B x D image and text embeddings."""
        logit_scale = self.get_logit_scale()
        out = self.loss_contrastive(image_embeddings, text_embeddings, logit_scale)
        correct = out.logits_per_image.argmax(dim=-1) == out.labels
        log = dict(loss_contrastive=out.loss,
                   i2t_acc=correct.float().mean().detach(),
                   logit_scale=logit_scale.detach())
        return out, correct, log

    def embed(self, inputs: dict) -> Embedded:
        """The passes over a batch's samples: everything but the losses that couple them.

        Args:
            inputs (dict): ``images`` B x 3 x H x W (normalised), ``texts`` B x 77 ids.

        Returns:
            Embedded: ``image_embeddings`` and ``text_embeddings`` (B x D, normalised); no
            local losses.
        """
        return Embedded(dict(image_embeddings=self.encode_image(inputs['images']),
                             text_embeddings=self.encode_text(inputs['texts'])), {})

    def batch_losses(self, representations: Dict[str, torch.Tensor]
                     ) -> Dict[str, torch.Tensor]:
        """The losses over the whole (per-device) batch, from :meth:`embed`'s
        representations (concatenated over micro-batches when accumulating).

        Returns:
            dict: ``loss_contrastive`` and the logged ``i2t_acc`` and ``logit_scale``.
        """
        return self.contrastive_losses(representations['image_embeddings'],
                                       representations['text_embeddings'])[2]

    def loss(self, inputs: dict, data_samples: Optional[List[DataSample]] = None
             ) -> Dict[str, torch.Tensor]:
        """The losses of a batch in one pass: :meth:`batch_losses` of :meth:`embed`, then
        the local losses (each a mean over the batch's items).

        Args:
            inputs (dict): See :meth:`embed` (of the subclass).
            data_samples (list, optional): Unused.

        Returns:
            dict: The losses and logged metrics.
        """
        if self.micro_batches > 1 and self.training and torch.is_grad_enabled():
            raise RuntimeError(
                f'{type(self).__name__} has accumulation=dict(micro_batches='
                f'{self.micro_batches}) but a training loss was asked of the whole batch in '
                f'one pass: train it through its train_step (under DDP: the model wrapper '
                f'GradCacheDistributedDataParallel)')
        embedded = self.embed(inputs)
        log = self.batch_losses(embedded.representations)
        log.update({name: mean for name, (mean, _) in embedded.local_losses.items()})
        return log

    def recompute_inputs(self, inputs: dict, representations: Dict[str, torch.Tensor]
                         ) -> dict:
        """What the accumulated step's second pass over a micro-batch reads: ``inputs``
        (a subclass may substitute what the first pass computed and cannot change)."""
        return inputs

    def forward(self, inputs, data_samples: Optional[List[DataSample]] = None,
                mode: str = 'tensor', **kwargs: Any):
        """mmpretrain's modes, and ``'surrogate'``: the accumulated step's second pass over a
        micro-batch (through ``forward`` so that DDP sees it), returning
        :func:`~rils_mm.models.utils.grad_cache.surrogate_loss` of :meth:`embed` with
        ``kwargs``."""
        if mode == 'surrogate':
            return surrogate_loss(self.embed(inputs), module=self, **kwargs)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        return super().forward(inputs, data_samples, mode)

    @property
    def zero_shot_classifier(self):
        """The ``ZeroShotClassifier`` wrapping this model (``zero_shot`` config)."""
        if self.zero_shot_cfg is None:
            raise RuntimeError(
                f'{type(self).__name__} has no zero_shot config: set model.zero_shot=dict('
                f'classnames=..., templates=...) to validate zero-shot during training')
        if self._zero_shot is None:
            from .zero_shot import ZeroShotClassifier
            object.__setattr__(self, '_zero_shot',
                               ZeroShotClassifier(model=self, **self.zero_shot_cfg))
        return self._zero_shot

    @torch.no_grad()
    def predict(self, inputs, data_samples: Optional[List[DataSample]] = None
                ) -> List[DataSample]:
        """Zero-shot class scores of a batch of images (``val_step``): see
        :meth:`ZeroShotClassifier.predict <rils_mm.models.algorithms.zero_shot.
        ZeroShotClassifier.predict>`."""
        return self.zero_shot_classifier.predict(inputs, data_samples)

    def train_step(self, data: Union[dict, tuple, list], optim_wrapper) -> Dict[str, Any]:
        """mmengine's step, or with ``accumulation`` the accumulated one."""
        if self.micro_batches == 1:
            return super().train_step(data, optim_wrapper)
        return self.accumulated_train_step(data, optim_wrapper)

    def accumulated_train_step(self, data: dict, optim_wrapper, ddp=None) -> Dict[str, Any]:
        """One optimizer step on the batch in ``micro_batches`` micro-batches, with the whole
        batch's loss (:func:`~rils_mm.models.utils.grad_cache.accumulated_train_step`).

        Args:
            data (dict): The dataloader's batch (K x B samples).
            optim_wrapper (OptimWrapper): The run's optimizer wrapper.
            ddp (nn.Module, optional): The DDP wrapper holding this model.

        Returns:
            dict: The logged values.
        """
        return accumulated_train_step(self, data, optim_wrapper, self.micro_batches, ddp)
