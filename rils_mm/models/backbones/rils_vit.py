"""The RILS vision encoder: a plain ViT with an intact and a masked pass.

One class serves pretraining (``forward(x, mask=True)`` for the masked pass, ``mask=False`` for
the intact pass) and transfer (mmpretrain classifiers, mmdet and mmseg take the intact pass with
``out_indices``/``out_type`` as in mmpretrain's ``VisionTransformer``; position embeddings are
interpolated to any input size).
"""
from typing import Optional, Sequence, Tuple, Union

import torch
from mmengine.model import ModuleList
from mmpretrain.models.selfsup.mae import MAEViT
from mmpretrain.registry import MODELS

from ..utils import QVBiasTransformerLayer


@MODELS.register_module()
class RILSViT(MAEViT):
    """ViT with BEiT-form q/v attention bias, fixed 2-D sin-cos positions and MAE masking.

    Differences from mmpretrain's ``MAEViT``: attention has q/v bias and no k bias; the masked
    pass keeps exactly ``round(L * (1 - mask_ratio))`` patches; ``forward`` defaults to the
    intact pass (so the class can be dropped into classifiers and detectors); optional gradient
    checkpointing per block.

    Args:
        arch (str | dict): ViT size, as in ``VisionTransformer`` ('b', 'l', ... or a dict with
            embed_dims, num_layers, num_heads, feedforward_channels).
        img_size (int | tuple): Pretraining image size; the fixed position table is built for
            it and interpolated for other sizes.
        patch_size (int): Patch size. Defaults to 16.
        out_indices (Sequence[int] | int): Blocks whose output the intact pass returns.
        drop_path_rate (float): Stochastic depth rate. Defaults to 0.
        norm_cfg (dict): Norm layer config. Defaults to LayerNorm with eps 1e-6.
        final_norm (bool): Apply the final LayerNorm after the last block. Defaults to True.
        out_type (str): Intact-pass output format ('raw', 'cls_token', 'featmap',
            'avg_featmap'), as in ``VisionTransformer``. Defaults to 'raw'.
        mask_ratio (float): Fraction of patches removed in the masked pass, in (0, 1).
        qv_bias (bool): Learn q and v attention biases. Defaults to True.
        with_cp (bool): Gradient checkpointing in every block. Defaults to False.
        layer_cfgs (dict | Sequence[dict]): Extra per-block arguments.
        init_cfg (dict | list, optional): Initialisation config.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'b',
                 img_size: Union[int, Tuple[int, int]] = 224,
                 patch_size: int = 16,
                 out_indices: Union[Sequence[int], int] = -1,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 final_norm: bool = True,
                 out_type: str = 'raw',
                 interpolate_mode: str = 'bicubic',
                 patch_cfg: dict = dict(),
                 layer_cfgs: Union[dict, Sequence[dict]] = dict(),
                 mask_ratio: float = 0.75,
                 qv_bias: bool = True,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = None) -> None:
        if not 0 < mask_ratio < 1:
            raise ValueError(f'RILSViT: mask_ratio must be in (0, 1), got {mask_ratio}')
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        super().__init__(
            arch=arch,
            img_size=img_size,
            patch_size=patch_size,
            out_indices=list(out_indices),
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            norm_cfg=norm_cfg,
            final_norm=final_norm,
            out_type=out_type,
            interpolate_mode=interpolate_mode,
            patch_cfg=patch_cfg,
            mask_ratio=mask_ratio,
            init_cfg=init_cfg)
        # Rebuild the blocks with q/v-bias attention (VisionTransformer hard-codes its layer
        # class); same stochastic-depth schedule.
        if isinstance(layer_cfgs, dict):
            layer_cfgs = [layer_cfgs] * self.num_layers
        drop_path_rates = torch.linspace(0, drop_path_rate, self.num_layers).tolist()
        self.layers = ModuleList([
            QVBiasTransformerLayer(
                embed_dims=self.embed_dims,
                num_heads=self.arch_settings['num_heads'],
                feedforward_channels=self.arch_settings['feedforward_channels'],
                drop_rate=drop_rate,
                drop_path_rate=drop_path_rates[i],
                norm_cfg=norm_cfg,
                qv_bias=qv_bias,
                with_cp=with_cp,
                **layer_cfgs[i]) for i in range(self.num_layers)
        ])

    def random_masking(self, x: torch.Tensor, mask_ratio: float,
                       noise: Optional[torch.Tensor] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking by sorting random noise (as in MAE).

        Args:
            x (torch.Tensor): Patch tokens, B x L x C.
            mask_ratio (float): Fraction of patches to remove.
            noise (torch.Tensor, optional): B x L scores; the lowest are kept. Random if None.

        Returns:
            tuple: ``x_kept`` (B x L_keep x C, L_keep = round(L * (1 - mask_ratio))),
            ``mask`` (B x L, 1 = removed, in the original patch order) and ``ids_restore``
            (B x L, the inverse of the shuffle).
        """
        B, L, C = x.shape
        num_keep = round(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(B, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :num_keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, C))
        mask = torch.ones(B, L, device=x.device)
        mask[:, :num_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    def forward(self, x: torch.Tensor, mask: bool = False, noise: Optional[torch.Tensor] = None):
        """Intact or masked pass.

        Args:
            x (torch.Tensor): Images, B x 3 x H x W.
            mask (bool): False: the intact pass on all patches, returning a tuple of the
                ``out_indices`` outputs formatted by ``out_type`` (for 'raw': B x (1 + L) x C,
                class token first). True: the masked pass at the pretraining size.
            noise (torch.Tensor, optional): B x L masking scores for the masked pass.

        Returns:
            tuple: For the masked pass ``(latent, mask, ids_restore)``: latent is
            B x (1 + L_keep) x C after the final norm, mask and ids_restore are B x L.
        """
        if not mask:
            return super(MAEViT, self).forward(x)
        B = x.shape[0]
        x = self.patch_embed(x)[0] + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, self.mask_ratio, noise)
        cls_token = (self.cls_token + self.pos_embed[:, :1, :]).expand(B, -1, -1)
        x = torch.cat((cls_token, x), dim=1)
        for layer in self.layers:
            x = layer(x)
        if self.final_norm:
            x = self.ln1(x)
        return x, mask, ids_restore
