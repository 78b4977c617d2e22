"""The image side of the joint image-text space: pooling of encoder tokens and a projection
(or none: big_vision's LiT form)."""
from typing import Optional, Union

import torch
from mmengine.model import BaseModule
from mmpretrain.models.utils import build_norm_layer
from mmpretrain.registry import MODELS
from open_clip.transformer import AttentionalPooler
from torch import nn

from ..utils.checkpoint_loading import checked_init_cfg, loads_pretrained

POOLINGS = ('mean', 'cls_token', 'attention')


@MODELS.register_module()
class ImageEmbeddingHead(BaseModule):
    """Pool the encoder's tokens into one vector and project it into the joint space.

    Poolings:
    - ``'mean'``: the average of the patch tokens, class token dropped (RILS, and the
      mean-pooled ViTs of SLIP and MaMMUT);
    - ``'cls_token'``: the class token (OpenAI's and open_clip's CLIP);
    - ``'attention'``: one learned query attending over all tokens (open_clip's
      ``AttentionalPooler``, as in CoCa).

    The projection also embeds single patches (:meth:`project`), with the same weights, so the
    patch features of the reconstruction objectives live in the same space as the image
    embedding (RILS's shared projection).

    With ``projection=False`` there is none: the image embedding is the pooled (and normed)
    encoder output, the joint width is the encoder's (``embed_dims`` must equal
    ``in_channels``) and the text tower's projection maps to it. This is big_vision's LiT,
    whose image tower has no head (``configs/proj/image_text/lit_coco.py`` at commit
    430df79cd16dd6f7f882fd8c0ed2e7c9ea4c1db8: ``out_dim = (None, dim)`` with ``dim`` the
    ViT's width, ``pool_type='tok'``).

    Args:
        in_channels (int): Encoder width C.
        embed_dims (int): Joint embedding width D.
        pooling (str): One of ``'mean'``, ``'cls_token'``, ``'attention'``. Defaults to
            ``'mean'``.
        norm_cfg (dict, optional): A norm layer on the pooled vector before the projection
            (MaMMUT's image side; open_clip's ``ln_post`` when the encoder has no final norm).
            Defaults to None (none).
        projection_bias (bool): A bias in the projection (CLIP has none). Defaults to False.
        projection (bool): A projection to ``embed_dims``; False: none (``nn.Identity``,
            ``embed_dims == in_channels``). Defaults to True.
        attention_heads (int): Heads of the attention pool. Defaults to 8.
        init_cfg (dict | list, optional): Initialisation; ``Pretrained`` loads through the
            checked loader.
    """

    def __init__(self,
                 in_channels: int,
                 embed_dims: int,
                 pooling: str = 'mean',
                 norm_cfg: Optional[dict] = None,
                 projection_bias: bool = False,
                 attention_heads: int = 8,
                 projection: bool = True,
                 init_cfg: Optional[Union[dict, list]] = None) -> None:
        super().__init__(init_cfg=checked_init_cfg(init_cfg))
        if pooling not in POOLINGS:
            raise ValueError(f'ImageEmbeddingHead: pooling must be one of {POOLINGS}, '
                             f'got {pooling!r}')
        self.in_channels = in_channels
        self.embed_dims = embed_dims
        self.pooling = pooling
        if pooling == 'attention':
            if in_channels % attention_heads:
                raise ValueError(f'ImageEmbeddingHead: in_channels={in_channels} is not '
                                 f'divisible by attention_heads={attention_heads}')
            self.attention_pool = AttentionalPooler(
                in_channels, in_channels, n_head=attention_heads, n_queries=1)
        self.norm = build_norm_layer(norm_cfg, in_channels) if norm_cfg else nn.Identity()
        if projection:
            self.projection = nn.Linear(in_channels, embed_dims, bias=projection_bias)
        elif embed_dims != in_channels or projection_bias:
            raise ValueError(
                f'ImageEmbeddingHead: projection=False makes the joint width the encoder '
                f'width {in_channels} with no bias; got embed_dims={embed_dims}, '
                f'projection_bias={projection_bias} (set the model\'s embed_dims={in_channels})')
        else:
            self.projection = nn.Identity()

    def init_weights(self) -> None:
        super().init_weights()
        if not loads_pretrained(self.init_cfg) and isinstance(self.projection, nn.Linear):
            # CLIP's initialisation of the projection (open_clip's and the RILS authors').
            nn.init.normal_(self.projection.weight, std=self.in_channels**-0.5)
            if self.projection.bias is not None:
                nn.init.zeros_(self.projection.bias)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x (1 + L) x C tokens, class token first -> B x C pooled (before the norm)."""
        if self.pooling == 'mean':
            return tokens[:, 1:].mean(dim=1)
        if self.pooling == 'cls_token':
            return tokens[:, 0]
        return self.attention_pool(tokens)[:, 0]

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Norm and projection of any ... x C features -> ... x D (not normalised)."""
        return self.projection(self.norm(features))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image embeddings, not normalised.

        Args:
            tokens (torch.Tensor): Encoder output, B x (1 + L) x C, class token first.

        Returns:
            torch.Tensor: B x D.
        """
        return self.project(self.pool(tokens))
