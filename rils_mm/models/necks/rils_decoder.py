"""The RILS decoder: fills masked positions and predicts encoder-space features."""
from typing import Optional, Union

import torch
from mmengine.model import ModuleList
from mmpretrain.models.necks import MAEPretrainDecoder
from mmpretrain.registry import MODELS

from ..utils import QVBiasTransformerLayer


@MODELS.register_module()
class RILSDecoder(MAEPretrainDecoder):
    """MAE-style decoder whose output is an encoder feature per patch, not pixels.

    An input Linear (encoder width -> decoder width), a learned mask token at the masked
    positions, fixed sin-cos positions, ``decoder_depth`` q/v-bias blocks, a final LayerNorm
    and a Linear back to the encoder width. RILS uses one block of the encoder's width.

    Args:
        num_patches (int): L, patches per image at the pretraining size.
        embed_dim (int): Encoder width C; also the output width.
        decoder_embed_dim (int): Decoder width.
        decoder_depth (int): Number of blocks. Defaults to 1.
        decoder_num_heads (int): Heads; must divide ``decoder_embed_dim``.
        mlp_ratio (float): MLP width ratio. Defaults to 4.
        qv_bias (bool): q/v attention bias, as in the encoder. Defaults to True.
        with_cp (bool): Gradient checkpointing per block.
    """

    def __init__(self,
                 num_patches: int = 196,
                 embed_dim: int = 768,
                 decoder_embed_dim: int = 768,
                 decoder_depth: int = 1,
                 decoder_num_heads: int = 12,
                 mlp_ratio: float = 4.,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 qv_bias: bool = True,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = None) -> None:
        if decoder_embed_dim % decoder_num_heads:
            raise ValueError(f'RILSDecoder: decoder_embed_dim={decoder_embed_dim} is not '
                             f'divisible by decoder_num_heads={decoder_num_heads}')
        super().__init__(
            num_patches=num_patches,
            embed_dim=embed_dim,
            decoder_embed_dim=decoder_embed_dim,
            decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads,
            mlp_ratio=mlp_ratio,
            norm_cfg=norm_cfg,
            predict_feature_dim=embed_dim,
            init_cfg=init_cfg)
        self.embed_dim = embed_dim
        self.decoder_blocks = ModuleList([
            QVBiasTransformerLayer(
                decoder_embed_dim,
                decoder_num_heads,
                int(mlp_ratio * decoder_embed_dim),
                qv_bias=qv_bias,
                with_cp=with_cp,
                norm_cfg=norm_cfg) for _ in range(decoder_depth)
        ])

    def forward(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Decode.

        Args:
            x (torch.Tensor): Masked-pass encoder output, B x (1 + L_keep) x C.
            ids_restore (torch.Tensor): B x L, from the encoder's masking.

        Returns:
            torch.Tensor: Predicted encoder features for every patch, B x L x C.
        """
        return super().forward(x, ids_restore)
