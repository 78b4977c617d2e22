"""The CLIP text tower, reused from open_clip."""
from typing import List, Optional, Union

import torch
from mmengine.model.weight_init import initialize
from mmpretrain.registry import MODELS
from open_clip.transformer import QuickGELU, TextTransformer
from torch import nn

from ..utils.checkpoint_loading import checked_init_cfg
from ..utils.locking import block_groups


@MODELS.register_module()
class CLIPTextEncoder(TextTransformer):
    """open_clip's ``TextTransformer`` registered as an MMEngine module.

    Causal transformer over CLIP BPE tokens, features taken at the end-of-text token (the
    highest id in each row), then a linear projection. Parameter names are open_clip's
    (``token_embedding``, ``positional_embedding``, ``transformer.resblocks.*``,
    ``ln_final``, ``text_projection``), so OpenAI and open_clip checkpoints load directly.

    Args:
        context_length (int): Token sequence length. Defaults to 77.
        vocab_size (int): CLIP BPE vocabulary size. Defaults to 49408.
        width (int): Transformer width (512 for ViT-B/16 CLIP, 768 for L/16).
        heads (int): Attention heads.
        layers (int): Transformer depth.
        output_dim (int): Joint embedding width D (the projection's output).
        quick_gelu (bool): Use OpenAI's QuickGELU activation, as the RILS authors' and OpenAI's
            text towers do. Defaults to True.
        with_cp (bool): Gradient checkpointing in every block.
        init_cfg (dict | list, optional): Applied after CLIP's own initialisation; a
            ``Pretrained`` / ``CheckedPretrained`` entry loads through the checked loader
            (a missing file, or keys of the tower absent from it, fail and are named), e.g.
            ``dict(type='CheckedPretrained', checkpoint=PATH, prefix='text_encoder.')`` for a
            checkpoint of this package or ``prefix=''`` for an open_clip one.
    """

    def __init__(self,
                 context_length: int = 77,
                 vocab_size: int = 49408,
                 width: int = 512,
                 heads: int = 8,
                 layers: int = 12,
                 output_dim: int = 512,
                 quick_gelu: bool = True,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = None) -> None:
        if width % heads:
            raise ValueError(f'CLIPTextEncoder: width={width} is not divisible by heads={heads}')
        super().__init__(
            context_length=context_length,
            vocab_size=vocab_size,
            width=width,
            heads=heads,
            layers=layers,
            output_dim=output_dim,
            act_layer=QuickGELU if quick_gelu else nn.GELU)
        self.set_grad_checkpointing(with_cp)
        self.init_cfg = checked_init_cfg(init_cfg)
        # MMEngine's flag: a parent's checkpoint load marks it, so init_weights is skipped.
        self._is_init = False

    @property
    def is_init(self) -> bool:
        """Whether the weights are initialised (or loaded) already."""
        return self._is_init

    def init_weights(self) -> None:
        """CLIP's initialisation, then ``init_cfg`` (called by MMEngine's ``init_weights``)."""
        self.init_parameters()
        if self.init_cfg:
            initialize(self, self.init_cfg)
        self._is_init = True

    def lock_groups(self) -> List[List[str]]:
        """Parameter names from input to output, as open_clip's ``lock_text_tower`` groups
        them: embeddings, blocks, the last block with the final norm, the projection."""
        return block_groups(self, 'transformer.resblocks.', len(self.transformer.resblocks),
                            stem=('token_embedding', 'positional_embedding'),
                            separate_tail=('text_projection',))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """Encode tokens.

        Args:
            text (torch.Tensor): B x context_length token ids.

        Returns:
            torch.Tensor: B x output_dim text features (not normalised).
        """
        if text.shape[-1] != self.context_length:
            raise ValueError(f'CLIPTextEncoder: expected tokens of length {self.context_length}, '
                             f'got shape {tuple(text.shape)}')
        return super().forward(text)
