"""Contrastive image-text pretraining (CLIP) on mmpretrain's self-supervised base class.

The other image-text methods of this package (RILS, MAE+CLIP) subclass it and add their
objective through ``BaseSelfSupervisor``'s ``neck`` (a decoder) and ``head`` slots; alone it is
the CLIP baseline (Radford et al., ICML 2021).
"""
import math
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from mmpretrain.models.selfsup.base import BaseSelfSupervisor
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from torch import nn

from ...datasets.transforms.tokenize import get_clip_tokenizer
from ..utils.checkpoint_loading import checked_init_cfg
from ..utils.locking import lock_module, set_locked_eval

TOWERS = ('backbone', 'text_encoder', 'image_head')


@MODELS.register_module()
class ImageTextPretrainer(BaseSelfSupervisor):
    """Image tower + image head + text tower + learnable logit scale, trained contrastively.

    ``embed_dims`` is the one place that sets the joint width: the image head projects into it
    and the text tower's ``output_dim`` defaults to it.

    Args:
        backbone (dict): Image tower (``RILSPretrainViT`` with ``out_type='raw'``).
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
            ``text_encoder``, ``image_head``): ``True`` locks all of it, ``dict(
            unlocked_groups=N)`` keeps its last N parameter groups (blocks, counted from the
            output) trainable. A locked part has ``requires_grad=False``, stays in eval mode
            (norm statistics, dropout and stochastic depth fixed) and never gets a gradient, so
            the optimizer keeps no state for it. LiT (Zhai et al., CVPR 2022) locks the image
            tower.
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
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        data_preprocessor = dict(data_preprocessor or {})
        data_preprocessor.setdefault('type', 'ImageTextDataPreprocessor')
        super().__init__(backbone=backbone, neck=neck, head=head,
                         target_generator=target_generator,
                         data_preprocessor=data_preprocessor,
                         init_cfg=checked_init_cfg(init_cfg))
        name = type(self).__name__
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

    @staticmethod
    def _rename_legacy_keys(state_dict: dict, prefix: str, *args) -> None:
        """Checkpoints of the first version kept the projection as ``image_projection``."""
        old = prefix + 'image_projection.weight'
        if old in state_dict:
            state_dict[prefix + 'image_head.projection.weight'] = state_dict.pop(old)

    def _lock(self, lock_cfg: dict) -> Dict[str, List[str]]:
        """Freeze the towers ``lock_cfg`` names; returns their frozen parameter names."""
        locked = {}
        for tower, cfg in lock_cfg.items():
            if tower not in TOWERS:
                raise ValueError(f'{type(self).__name__}: lock_cfg names "{tower}"; lockable '
                                 f'towers are {TOWERS}')
            if cfg is False or cfg is None:
                continue
            cfg = {} if cfg is True else dict(cfg)
            unlocked_groups = cfg.pop('unlocked_groups', 0)
            if cfg:
                raise ValueError(f'{type(self).__name__}: lock_cfg.{tower} takes only '
                                 f'unlocked_groups, got {sorted(cfg)}')
            locked[tower] = lock_module(getattr(self, tower), unlocked_groups)
        return locked

    def train(self, mode: bool = True) -> 'ImageTextPretrainer':
        """As ``nn.Module.train``, but locked parts stay in eval mode."""
        super().train(mode)
        for tower in self.locked_parameters:
            set_locked_eval(getattr(self, tower))
        return self

    def get_logit_scale(self) -> torch.Tensor:
        """exp of the learnable log scale, clamped to at most ``exp(logit_scale_max)``."""
        return self.logit_scale.clamp(max=self.logit_scale_max).exp()

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Intact pass. images: B x 3 x H x W -> B x (1 + L) x C, class token first."""
        return self.backbone(images, mask=False)[-1]

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
        return self.backbone(images, mask=False)

    def contrastive_step(self, tokens: torch.Tensor, texts: torch.Tensor):
        """Contrastive loss and its logged values from intact-pass tokens and caption ids.

        Returns:
            tuple: the ``ContrastiveOutput``, the local image->text top-1 hits (B bools) and
            the dict of losses and metrics to log.
        """
        return self.contrastive_step_from_embeddings(self.embed_image_tokens(tokens), texts)

    def contrastive_step_from_embeddings(self, image_embeddings: torch.Tensor,
                                         texts: torch.Tensor):
        """:meth:`contrastive_step` from normalised B x D image embeddings."""
        logit_scale = self.get_logit_scale()
        out = self.loss_contrastive(image_embeddings, self.encode_text(texts), logit_scale)
        correct = out.logits_per_image.argmax(dim=-1) == out.labels
        log = dict(loss_contrastive=out.loss,
                   i2t_acc=correct.float().mean().detach(),
                   logit_scale=logit_scale.detach())
        return out, correct, log

    def loss(self, inputs: dict, data_samples: Optional[List[DataSample]] = None
             ) -> Dict[str, torch.Tensor]:
        """Contrastive loss on a batch. inputs: dict(images=B x 3 x H x W, texts=B x 77)."""
        _, _, log = self.contrastive_step(self.image_tokens(inputs['images']), inputs['texts'])
        return log
