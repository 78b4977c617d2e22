"""The RILS decoder: fills masked positions and predicts encoder-space features."""
from typing import Optional, Union

import torch
from mmengine.model import ModuleList
from mmpretrain.models.necks import MAEPretrainDecoder
from mmpretrain.registry import MODELS

from ..utils.qv_bias_layer import QVBiasDecoderLayer, take_rows


@MODELS.register_module()
class RILSDecoder(MAEPretrainDecoder):
    """MAE-style decoder whose output is an encoder feature per patch, not pixels.

    An input Linear (encoder width -> decoder width), a learned mask token at the masked
    positions, fixed sin-cos positions, ``decoder_depth`` q/v-bias blocks
    (``QVBiasDecoderLayer``: read at the scored patches only), a final LayerNorm and a Linear
    back to the encoder width. RILS uses one block of the encoder's width.

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
            QVBiasDecoderLayer(
                decoder_embed_dim,
                decoder_num_heads,
                int(mlp_ratio * decoder_embed_dim),
                qv_bias=qv_bias,
                with_cp=with_cp,
                norm_cfg=norm_cfg) for _ in range(decoder_depth)
        ])

    def forward(self, x: torch.Tensor, ids_restore: torch.Tensor,
                target_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decode.

        Args:
            x (torch.Tensor): Masked-pass encoder output, B x (1 + L_keep) x C.
            ids_restore (torch.Tensor): B x L, from the encoder's masking.
            target_index (torch.Tensor, optional): B x M indices (long) of masked patches
                to predict.
                The loss reads the predictions at the masked patches only, so the last
                block, the norm and the output Linear run only there (the result equals the
                full output gathered at these patches).

        Returns:
            torch.Tensor: Predicted encoder features, B x L x C for every patch, or
            B x M x C at ``target_index``.
        """
        if target_index is None:
            return super().forward(x, ids_restore)
        if len(self.decoder_blocks) == 1:
            return self._decode_one_block(x, ids_restore, target_index)
        # MAE's input assembly (mmpretrain's MAEPretrainDecoder.forward).
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.expand(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1],
                                             -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1,
                               ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks[:-1]:
            x = block(x)
        x = self.decoder_blocks[-1](x, query_index=target_index + 1)  # after the class token
        return self.decoder_pred(self.decoder_norm(x))

    def _decode_one_block(self, x: torch.Tensor, ids_restore: torch.Tensor,
                          target_index: torch.Tensor) -> torch.Tensor:
        """The one-block decoder read at hidden patches, sharing what does not depend on the
        image.

        The block's input at a hidden patch is the mask token plus that patch's position,
        the same in every sample, so its norm and its q, k and v are computed once per
        position (L rows) rather than once per sample and patch; attention does not depend
        on the order of the tokens, so the sequence is kept in the masked pass's order
        (class, visible, hidden) instead of being unshuffled. Equal to the full decoder's
        output gathered at ``target_index``, which must index hidden patches.

        Args:
            x (torch.Tensor): B x (1 + K) x C_enc masked-pass output.
            ids_restore (torch.Tensor): B x L.
            target_index (torch.Tensor): B x M hidden patch indices.

        Returns:
            torch.Tensor: B x M x C_enc predictions.
        """
        positions = self.decoder_pos_embed[0]  # (1 + L) x C
        ids_shuffle = torch.argsort(ids_restore, dim=1)  # visible patches first
        num_visible = x.shape[1] - 1
        visible = self.decoder_embed(x) + torch.cat(
            [positions[:1].expand(x.shape[0], 1, -1),
             take_rows(positions[1:], ids_shuffle[:, :num_visible])], dim=1)
        y = self.decoder_blocks[0](
            visible, query_index=target_index,
            shared=self.mask_token[0] + positions[1:],  # L x C: the input at each position
            shared_index=ids_shuffle[:, num_visible:])
        return self.decoder_pred(self.decoder_norm(y))
