"""A frozen CLIP image tower as a target generator: MILAN's targets and masking weights."""
import copy
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from torch import nn

from ..utils.checkpoint_loading import load_checked


@MODELS.register_module()
class CLIPTeacher(BaseModule):
    """The image tower of a trained CLIP, frozen, giving per-token targets and attention.

    For MILAN (Hou et al., 2022, arXiv:2208.06049): the targets are the teacher's output tokens
    projected into its joint image-text space, and the masking weights are the last block's
    attention from the class token to the patches. The teacher is any local CLIP:

    - an open_clip / OpenAI checkpoint through ``OpenCLIPModel`` (``model=dict(type=
      'OpenCLIPModel', arch='ViT-B-16', pretrained=PATH)``; ViT towers without attention
      pooling);
    - an image-text model of this package (``model`` its config, ``checkpoint`` its file,
      loaded with every key checked).

    Nothing is downloaded; a missing file fails naming it. Only the image tower is kept (in
    ``image_tower``: open_clip's ``visual``, or our ``backbone`` and ``image_head``). The teacher
    is frozen, stays in eval mode and runs without gradient (in the autocast dtype under AMP).
    Its weights are loaded when it is built and loaded again by :meth:`init_weights`, which
    MMEngine calls after the algorithm's own ``init_cfg`` has been applied to every sub-module
    (an algorithm-level Xavier init would otherwise overwrite the teacher).

    Args:
        model (dict): The CLIP model config.
        checkpoint (str, optional): Checkpoint of ``model`` (this package's models); an
            ``OpenCLIPModel`` loads its own ``pretrained`` file instead.
        masking (str): ``'attention'``: the class-token attention weighs the patches (MILAN's
            semantic-aware masking). ``'uniform'``: equal weights, so the kept patches are a
            uniform random draw (MAE's masking; the paper's ablation). Defaults to
            ``'attention'``.
        init_cfg (dict, optional): Unused.
    """

    def __init__(self, model: dict, checkpoint: Optional[str] = None,
                 masking: str = 'attention',
                 init_cfg: Optional[Union[dict, list]] = None) -> None:
        super().__init__(init_cfg=None)
        if masking not in ('attention', 'uniform'):
            raise ValueError(f"CLIPTeacher: masking must be 'attention' or 'uniform', got "
                             f'{masking!r}')
        self.masking = masking
        self.model_cfg = copy.deepcopy(model)
        self.checkpoint = checkpoint
        if checkpoint is None and not (model.get('type') == 'OpenCLIPModel' and
                                       model.get('pretrained')):
            raise ValueError('CLIPTeacher: the teacher has no weights; give `checkpoint` (or '
                             '`pretrained` of an OpenCLIPModel)')
        # Only the image tower is kept: the text tower would cost memory and checkpoint space.
        self.image_tower = self._load_image_tower(logger='current')
        self.requires_grad_(False)
        self.eval()

    def _load_image_tower(self, logger: Optional[str] = None) -> nn.Module:
        """Build the CLIP, load its weights (checked), and return its image tower."""
        clip = MODELS.build(self.model_cfg)
        if self.checkpoint is not None:
            load_checked(clip, self.checkpoint, prefix='', logger=logger)
        if hasattr(clip, 'clip'):  # an OpenCLIPModel, loaded from its own file
            visual = clip.clip.visual
            if getattr(visual, 'attn_pool', None) is not None or not hasattr(
                    visual, 'class_embedding'):
                raise ValueError('CLIPTeacher: the open_clip image tower must be a ViT with a '
                                 'class token and no attention pooling')
            if not visual.transformer.batch_first:
                raise ValueError('CLIPTeacher: open_clip towers with batch_first=False are not '
                                 'supported')
            return nn.ModuleDict(dict(visual=visual))
        return nn.ModuleDict(dict(backbone=clip.backbone, image_head=clip.image_head))

    def init_weights(self) -> None:
        """Load the teacher's weights again, in place (see the class docstring)."""
        self.image_tower.load_state_dict(self._load_image_tower().state_dict())
        self._is_init = True

    def train(self, mode: bool = True) -> 'CLIPTeacher':
        """Always in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Targets and class-token attention.

        Args:
            images (torch.Tensor): B x 3 x H x W, normalised as the teacher was trained (CLIP's
                statistics), at the teacher's input size.

        Returns:
            tuple: ``features`` B x (1 + L) x D, the output tokens in the joint space (class
            token first), and ``attention`` B x 1 x (1 + L), the last block's attention of the
            class token (mean over heads; ``attention[:, 0, 1:]`` weighs the patches, as
            mmpretrain's ``MILAN`` reads it).
        """
        features, attention = (self._open_clip(images) if 'visual' in self.image_tower else
                               self._ours(images))
        if self.masking == 'uniform':
            attention = torch.full_like(attention, 1.0 / attention.shape[-1])
        return features, attention

    def _open_clip(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        visual = self.image_tower['visual']
        x = visual._embeds(images.to(visual.conv1.weight.dtype))
        blocks = visual.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        last = blocks[-1]
        if not isinstance(getattr(last, 'attn', None), nn.MultiheadAttention):
            raise ValueError('CLIPTeacher: the last open_clip block has no '
                             'nn.MultiheadAttention to read the attention from')
        normed = last.ln_1(x)
        out, attention = last.attn(normed, normed, normed, need_weights=True,
                                   average_attn_weights=True)
        x = x + last.ls_1(out)
        x = x + last.ls_2(last.mlp(last.ln_2(x)))
        features = visual.ln_post(x) @ visual.proj
        return features.float(), attention[:, :1].float()

    def _ours(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        vit = self.image_tower['backbone']
        x = vit.patch_embed(images)[0]
        cls_token = vit.cls_token.expand(x.shape[0], -1, -1)
        x = vit.pre_norm(torch.cat((cls_token, x), dim=1) + vit.pos_embed)
        for layer in vit.layers[:-1]:
            x = layer(x)
        last = vit.layers[-1]
        attn = last.attn
        normed = last.ln1(x)
        B, N, _ = normed.shape
        qkv = F.linear(normed, attn.qkv.weight, attn.qkv_bias())
        q, k, _ = qkv.reshape(B, N, 3, attn.num_heads, attn.head_dims).permute(2, 0, 3, 1, 4)
        attention = ((q[:, :, :1] * attn.head_dims**-0.5) @ k.transpose(-2, -1)).softmax(-1)
        attention = attention.mean(1)  # B x 1 x N, the mean over heads
        x = last(x)
        if vit.final_norm:
            x = vit.ln1(x)
        return self.image_tower['image_head'].project(x).float(), attention.float()
