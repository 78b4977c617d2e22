"""MaMMUT's text decoder: one transformer, a bidirectional contrastive pass and a causal
captioning pass with cross-attention to the image."""
from typing import List, Optional, Union

import torch
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from ..utils.activation_checkpointing import run_block
from ..utils.checkpoint_loading import checked_init_cfg
from ..utils.locking import block_groups


@MODELS.register_module()
class MaMMUTTextDecoder(BaseModule):
    """A CLIP-style text transformer whose weights serve two passes (MaMMUT, Kuo et al., 2023,
    arXiv:2303.16839).

    ``layers`` blocks of self-attention and MLP (open_clip's ``ResidualAttentionBlock``); after
    every ``cross_attention_every``-th block a cross-attention block attends to the image tokens.

    - Contrastive pass (:meth:`forward`): bidirectional self-attention in which no token attends
      to padding, the cross-attention blocks skipped, the final LayerNorm, the mean over the
      valid tokens (never the padding), and the projection to ``output_dim``.
    - Captioning pass (:meth:`caption_logits`): causal self-attention with the cross-attention
      blocks, the final LayerNorm and logits over the vocabulary.

    Valid tokens are those different from ``pad_id`` (open_clip's tokenizer pads with 0, after
    the end-of-text token).

    Args:
        context_length (int): Token sequence length. Defaults to 77.
        vocab_size (int): Vocabulary size. Defaults to 49408 (CLIP's BPE).
        width (int): Transformer width. Defaults to 512.
        heads (int): Attention heads. Defaults to 8.
        layers (int): Self-attention blocks. Defaults to 12.
        output_dim (int): Width of the contrastive embedding. Defaults to 512.
        cross_attention_every (int): A cross-attention block follows every this many
            self-attention blocks. Defaults to 2 (MaMMUT: every second layer).
        mlp_ratio (float): MLP width over ``width``. Defaults to 4.
        pad_id (int): The padding token id. Defaults to 0.
        with_cp (bool): Recompute each block (self- and cross-attention) in the backward pass
            to save activation memory. Defaults to False.
        init_cfg (dict | list, optional): Initialisation; ``Pretrained`` loads through the
            checked loader.
    """

    def __init__(self,
                 context_length: int = 77,
                 vocab_size: int = 49408,
                 width: int = 512,
                 heads: int = 8,
                 layers: int = 12,
                 output_dim: int = 512,
                 cross_attention_every: int = 2,
                 mlp_ratio: float = 4.0,
                 pad_id: int = 0,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = None) -> None:
        super().__init__(init_cfg=checked_init_cfg(init_cfg))
        if width % heads:
            raise ValueError(f'MaMMUTTextDecoder: width={width} is not divisible by '
                             f'heads={heads}')
        if cross_attention_every < 1:
            raise ValueError(f'MaMMUTTextDecoder: cross_attention_every must be >= 1, got '
                             f'{cross_attention_every}')
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.width = width
        self.heads = heads
        self.output_dim = output_dim
        self.pad_id = pad_id
        self.with_cp = with_cp
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.resblocks = nn.ModuleList([
            ResidualAttentionBlock(width, heads, mlp_ratio, batch_first=True)
            for _ in range(layers)])
        # cross_blocks[str(i)] follows self-attention block i.
        self.cross_blocks = nn.ModuleDict({
            str(i): ResidualAttentionBlock(width, heads, mlp_ratio, is_cross_attention=True,
                                           batch_first=True)
            for i in range(layers) if (i + 1) % cross_attention_every == 0})
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Linear(width, output_dim, bias=False)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)

    def init_weights(self) -> None:
        """CLIP's text-tower initialisation (open_clip), then ``init_cfg``."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        num_layers = len(self.resblocks)
        proj_std = (self.width**-0.5) * ((2 * num_layers)**-0.5)
        attn_std = self.width**-0.5
        fc_std = (2 * self.width)**-0.5
        for block in list(self.resblocks) + list(self.cross_blocks.values()):
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection.weight, std=self.width**-0.5)
        nn.init.normal_(self.lm_head.weight, std=self.width**-0.5)
        super().init_weights()

    def lock_groups(self) -> List[List[str]]:
        """Parameter names from input to output (for ``lock_cfg``)."""
        return block_groups(self, 'resblocks.', len(self.resblocks),
                            stem=('token_embedding', 'positional_embedding'),
                            separate_tail=('text_projection', 'lm_head'))

    def _check(self, texts: torch.Tensor) -> None:
        if texts.dim() != 2 or texts.shape[1] > self.context_length:
            raise ValueError(f'MaMMUTTextDecoder: expected B x L token ids with L <= '
                             f'{self.context_length}, got shape {tuple(texts.shape)}')

    def _embed(self, texts: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(texts) + self.positional_embedding[:texts.shape[1]]

    def forward(self, texts: torch.Tensor) -> torch.Tensor:
        """The contrastive pass.

        Args:
            texts (torch.Tensor): B x L token ids, padded with ``pad_id`` after the end.

        Returns:
            torch.Tensor: B x ``output_dim`` text embeddings (not normalised).
        """
        self._check(texts)
        # Trailing padding changes nothing (no token attends to it): drop what all rows pad.
        texts = texts[:, :max(int((texts != self.pad_id).sum(1).max()), 1)]
        valid = texts != self.pad_id  # B x L
        batch, length = texts.shape
        # Additive mask over the keys: no query attends to padding (B * heads x L x L).
        mask = torch.zeros(batch, 1, 1, length, device=texts.device)
        mask = mask.masked_fill(~valid[:, None, None, :], float('-inf'))
        mask = mask.expand(batch, self.heads, length, length).reshape(-1, length, length)
        x = self._embed(texts)
        for block in self.resblocks:
            x = run_block(block, x, attn_mask=mask, with_cp=self.with_cp)
        x = self.ln_final(x)
        weights = valid.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.text_projection(pooled)

    def caption_logits(self, texts: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """The captioning pass.

        Args:
            texts (torch.Tensor): B x L input token ids (a caption without its last token).
            image_tokens (torch.Tensor): B x N x ``width`` image tokens, already projected to
                the decoder's width.

        Returns:
            torch.Tensor: B x L x ``vocab_size`` next-token logits; position t depends on
            tokens 0..t only.
        """
        return self.lm_head(self.caption_features(texts, image_tokens))

    def caption_features(self, texts: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """The captioning pass up to the final LayerNorm: B x L x ``width`` (the vocabulary
        projection ``lm_head`` is left to the caller, which may apply it to fewer positions).
        """
        self._check(texts)
        length = texts.shape[1]
        causal = torch.full((length, length), float('-inf'), device=texts.device).triu(1)
        x = self._embed(texts)
        for index, block in enumerate(self.resblocks):
            x = run_block(block, x, attn_mask=causal, with_cp=self.with_cp)
            cross = self.cross_blocks[str(index)] if str(index) in self.cross_blocks else None
            if cross is not None:
                x = run_block(cross, x, k_x=image_tokens, v_x=image_tokens,
                              with_cp=self.with_cp)
        return self.ln_final(x)
