"""MAE's decoder predicting features: the 'MAE decoder' row of MILAN's decoder ablation."""
from typing import Optional

import torch
from mmpretrain.models.necks import MAEPretrainDecoder
from mmpretrain.registry import MODELS
from torch import nn

from ..utils.activation_checkpointing import run_block


@MODELS.register_module()
class MAEFeatureDecoder(MAEPretrainDecoder):
    """mmpretrain's ``MAEPretrainDecoder`` with MILAN's interface and output.

    In MAE's decoder every token, visible ones included, is updated by every block; in MILAN's
    prompting decoder (mmpretrain ``MILANPretrainDecoder``) only the mask tokens are (Hou et
    al., 2022, arXiv:2208.06049, Table 4 compares the two). This decoder takes the same inputs
    as the prompting one, so mmpretrain's ``MILAN`` algorithm can use either by config, and like
    it returns the class token too and predicts ``predict_feature_dim`` features.

    Args:
        predict_feature_dim (int): Width of the prediction (the teacher's feature width, or
            ``patch_size ** 2 * in_chans`` for pixels). Defaults to 512.
        with_cp (bool): Recompute each block in the backward pass to save activation memory.
            Defaults to False.
        **kwargs: ``MAEPretrainDecoder`` arguments (widths, depth, heads, init).
    """

    def __init__(self, predict_feature_dim: int = 512, with_cp: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.with_cp = with_cp
        self.decoder_pred = nn.Linear(self.decoder_embed.out_features, predict_feature_dim,
                                      bias=True)

    def forward(self, x: torch.Tensor, ids_restore: torch.Tensor,
                ids_keep: Optional[torch.Tensor] = None,
                ids_dump: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decode the visible tokens and mask tokens together.

        Args:
            x (torch.Tensor): B x (1 + L_visible) x C encoder tokens, class token first.
            ids_restore (torch.Tensor): B x L, the order that restores the patches.
            ids_keep (torch.Tensor, optional): Unused (the prompting decoder's interface).
            ids_dump (torch.Tensor, optional): Unused.

        Returns:
            torch.Tensor: B x (1 + L) x ``predict_feature_dim`` predictions, class token first.
        """
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1],
                                             1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1,
                               ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = run_block(block, x, with_cp=self.with_cp)
        return self.decoder_pred(self.decoder_norm(x))
