"""Transformer block with BEiT-form attention bias: a learned bias on q and v, none on k.

RILS (like BEiT and the MAE code it builds on) drops the key bias: it cancels in the softmax, so
a full qkv bias whose k part is zero is the same function. We keep mmpretrain's
``TransformerEncoderLayer`` (and its SDPA attention kernel) and only swap how the qkv bias is
formed.

``QVBiasDecoderLayer`` is the decoder's block: its ``forward`` can also be read at a few
tokens (the loss reads RILS's decoder at the hidden patches only); the encoder's block is
plain.

For transfer (ViTDet), the attention and the encoder block optionally take a 2-D token grid:
attention with decomposed relative position bias (``use_rel_pos``) and blocks restricted to
non-overlapping windows (``window_size``). Both default off; the helpers are mmpretrain's (from
``ViTSAM``).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
from mmpretrain.models.backbones.vit_sam import (add_decomposed_rel_pos, window_partition,
                                                 window_unpartition)
from mmpretrain.models.utils import MultiheadAttention
from torch import nn
from torch.utils.checkpoint import checkpoint


def take_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for an S x C table and a B x M index, B x M x C, with a deterministic
    backward: advanced indexing accumulates repeated rows' gradients with ``index_put_``,
    whose CPU kernel adds in a varying order (torch's reproducibility notes);
    ``index_select``'s backward (``index_add_``) does not."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[-1])


class QVBiasMultiheadAttention(MultiheadAttention):
    """mmpretrain's ``MultiheadAttention`` with learned q and v biases and no k bias.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Number of attention heads; must divide ``embed_dims``.
        qv_bias (bool): Learn the q and v biases. With False the attention has no qkv bias.
        use_rel_pos (bool): Add a decomposed relative position bias (MViTv2/ViTDet) to the
            attention logits; the tokens must then form an ``hw`` grid (no class token).
            Defaults to False.
        rel_pos_size (tuple[int, int], optional): Grid size the tables ``rel_pos_h``
            ((2 * H - 1) x head_dims) and ``rel_pos_w`` are built for; other grid sizes
            interpolate them. Required with ``use_rel_pos``.
        **kwargs: Other arguments of ``MultiheadAttention`` (``attn_drop``, ``proj_drop``,
            ``dropout_layer``, ...). ``qkv_bias`` is not accepted.
    """

    def __init__(self, embed_dims: int, num_heads: int, qv_bias: bool = True,
                 use_rel_pos: bool = False, rel_pos_size: Optional[Tuple[int, int]] = None,
                 **kwargs):
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims={embed_dims} is not divisible by num_heads={num_heads}')
        super().__init__(embed_dims=embed_dims, num_heads=num_heads, qkv_bias=False, **kwargs)
        if qv_bias:
            self.q_bias = nn.Parameter(torch.zeros(embed_dims))
            self.v_bias = nn.Parameter(torch.zeros(embed_dims))
        else:
            self.q_bias = self.v_bias = None
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if rel_pos_size is None:
                raise ValueError('QVBiasMultiheadAttention: use_rel_pos needs rel_pos_size')
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size[0] - 1, self.head_dims))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size[1] - 1, self.head_dims))

    def qkv_bias(self):
        """The full ``3C`` qkv bias with a zero (constant) k part, or None."""
        if self.q_bias is None:
            return None
        return torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))

    def attend(self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Attention and output projection, before dropout, layer scale and drop path.

        Args:
            x (torch.Tensor): Tokens, B x N x C.
            hw (tuple[int, int], optional): The token grid (N = H * W); needed only with
                ``use_rel_pos``.

        Returns:
            torch.Tensor: B x N x C.
        """
        B, N, _ = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias())
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dims).permute(2, 0, 3, 1, 4)
        attn_bias = None
        if self.use_rel_pos:
            if hw is None or hw[0] * hw[1] != N:
                raise ValueError(f'relative positions need the token grid of all {N} tokens, '
                                 f'got hw={hw} (a class token cannot be used with use_rel_pos)')
            # mmpretrain's helper adds the bias to given logits; start from zeros and pass the
            # result to the fused kernel as an additive mask (B x heads x N x N).
            flat_q = q.reshape(B * self.num_heads, N, self.head_dims)
            attn_bias = add_decomposed_rel_pos(
                flat_q.new_zeros(B * self.num_heads, N, N), flat_q, self.rel_pos_h,
                self.rel_pos_w, hw, hw).view(B, self.num_heads, N, N)
        attn_drop = self.attn_drop if self.training else 0.
        x = self.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=attn_drop)
        x = x.transpose(1, 2).reshape(B, N, self.embed_dims)
        return self.proj(x)

    def attend_queries(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Attention for a subset of the tokens: queries from ``queries``, keys and values
        from all of ``x``; output projection, before dropout, layer scale and drop path.

        Equals ``attend(x)`` at the queries' positions without computing the other rows
        (a decoder whose output is read at a few positions needs only those).

        Args:
            x (torch.Tensor): Tokens, B x N x C (normed).
            queries (torch.Tensor): B x M x C, normed tokens (usually rows of ``x``).

        Returns:
            torch.Tensor: B x M x C.
        """
        if self.use_rel_pos:
            raise ValueError('attend_queries: not available with relative positions')
        C = self.embed_dims
        bias = self.qkv_bias()
        weight = self.qkv.weight
        q = F.linear(queries, weight[:C], None if bias is None else bias[:C])
        kv = F.linear(x, weight[C:], None if bias is None else bias[C:])
        return self.attend_projected(q, kv)

    def attend_projected(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """Attention from projected queries, keys and values, and the output projection.

        Args:
            q (torch.Tensor): B x M x C, rows of the qkv Linear's q part (bias included).
            kv (torch.Tensor): B x N x 2C, rows of its k and v parts.

        Returns:
            torch.Tensor: B x M x C, before dropout, layer scale and drop path.
        """
        B, M, C = q.shape
        q = q.reshape(B, M, self.num_heads, self.head_dims).transpose(1, 2)
        k, v = kv.reshape(B, -1, 2, self.num_heads, self.head_dims).permute(2, 0, 3, 1, 4)
        attn_drop = self.attn_drop if self.training else 0.
        out = self.scaled_dot_product_attention(q, k, v, dropout_p=attn_drop)
        return self.proj(out.transpose(1, 2).reshape(B, M, C))

    def forward(self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Self-attention.

        Args:
            x (torch.Tensor): Tokens, B x N x C.
            hw (tuple[int, int], optional): Token grid, for ``use_rel_pos``.

        Returns:
            torch.Tensor: B x N x C.
        """
        return self.out_drop(self.gamma1(self.proj_drop(self.attend(x, hw))))


class QVBiasTransformerLayer(TransformerEncoderLayer):
    """Pre-norm ViT block (mmpretrain's) with q/v-bias attention and gradient checkpointing.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Attention heads.
        feedforward_channels (int): MLP hidden width.
        qv_bias (bool): Learn q and v biases (the BEiT form). Defaults to True.
        with_cp (bool): Recompute this block in the backward pass to save activation
            memory. Defaults to False.
        window_size (int): If > 0, attend within non-overlapping ``window_size`` squares of
            the token grid (padded as needed); 0 is global attention. Defaults to 0.
        use_rel_pos (bool): Decomposed relative position bias in the attention.
            Defaults to False.
        rel_pos_size (tuple[int, int], optional): Grid the relative tables are built for, for
            a global block with ``use_rel_pos`` (a windowed block uses its window).
        **kwargs: Other ``TransformerEncoderLayer`` arguments (``drop_rate``,
            ``attn_drop_rate``, ``drop_path_rate``, ``norm_cfg``, ...).
    """

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 qv_bias: bool = True, with_cp: bool = False, window_size: int = 0,
                 use_rel_pos: bool = False, rel_pos_size: Optional[Tuple[int, int]] = None,
                 **kwargs):
        kwargs.pop('qkv_bias', None)
        super().__init__(embed_dims, num_heads, feedforward_channels, qkv_bias=False, **kwargs)
        drop_path_rate = kwargs.get('drop_path_rate', 0.)
        self.attn = QVBiasMultiheadAttention(
            embed_dims=embed_dims,
            num_heads=num_heads,
            qv_bias=qv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_size=(window_size, window_size) if window_size > 0 else rel_pos_size,
            attn_drop=kwargs.get('attn_drop_rate', 0.),
            proj_drop=kwargs.get('drop_rate', 0.),
            dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate),
            layer_scale_init_value=kwargs.get('layer_scale_init_value', 0.))
        self.with_cp = with_cp
        self.window_size = window_size
        self.use_rel_pos = use_rel_pos

    @property
    def needs_grid(self) -> bool:
        """Whether the block needs its tokens as an H x W grid (window or relative positions)."""
        return self.window_size > 0 or self.use_rel_pos

    def forward(self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Pre-norm block on all tokens.

        Args:
            x (torch.Tensor): Tokens, B x N x C (N = H * W patch tokens when ``needs_grid``).
            hw (tuple[int, int], optional): The token grid (H, W); required when
                ``needs_grid``.

        Returns:
            torch.Tensor: B x N x C.
        """
        forward = self._forward_grid if self.needs_grid else super().forward
        args = (x, hw) if self.needs_grid else (x, )
        if self.with_cp and x.requires_grad:
            return checkpoint(forward, *args, use_reentrant=False)
        return forward(*args)

    def _forward_grid(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """Windowed and/or relative-position attention on a B x (H * W) x C token grid."""
        if hw is None:
            raise ValueError('windowed or relative-position blocks need the token grid hw')
        B, N, C = x.shape
        H, W = hw
        y = self.ln1(x).view(B, H, W, C)
        if self.window_size > 0:
            y, pad_hw = window_partition(y, self.window_size)  # B * nW x ws x ws x C
            grid = (self.window_size, self.window_size)
        else:
            grid = (H, W)
        y = self.attn.attend(y.reshape(y.shape[0], grid[0] * grid[1], C), grid)
        if self.window_size > 0:
            y = window_unpartition(y.view(-1, *grid, C), self.window_size, pad_hw, (H, W))
        # Dropout and drop path per image (after un-partitioning), as in ViTDet.
        x = x + self.attn.out_drop(self.attn.gamma1(self.attn.proj_drop(y.reshape(B, N, C))))
        return self.ffn(self.ln2(x), identity=x)


class QVBiasDecoderLayer(QVBiasTransformerLayer):
    """The decoder's q/v-bias block: also read at some tokens only.

    A decoder whose output the loss reads at a few positions (RILS's, at the hidden patches)
    needs the block's output there only; the partial forms compute just that. They are
    keywords of ``forward`` rather than methods so that wrappers (FSDP units, checkpoint
    wrappers) see the call. Same arguments and parameters as :class:`QVBiasTransformerLayer`,
    without the token grid (no windows, no relative positions).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.needs_grid:
            raise ValueError('QVBiasDecoderLayer: windowed or relative-position blocks are '
                             'encoder blocks (QVBiasTransformerLayer)')

    def forward(self, x: torch.Tensor, query_index: Optional[torch.Tensor] = None,
                shared: Optional[torch.Tensor] = None,
                shared_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pre-norm block, on all tokens or read at some of them.

        Args:
            x (torch.Tensor): Tokens, B x N x C.
            query_index (torch.Tensor, optional): B x M (long): return the block's output at
                these tokens only, B x M x C. They index ``x``, or with ``shared`` the rows of
                ``shared``.
            shared (torch.Tensor, optional): S x C tokens common to every sample (MAE's mask
                token plus a position): sample b's sequence is ``x[b]`` followed by
                ``shared[shared_index[b]]``, and their norm and q, k, v are computed once
                per row of ``shared``. Needs ``query_index`` and ``shared_index`` (B x H).

        Returns:
            torch.Tensor: B x N x C, or B x M x C with ``query_index``.
        """
        if query_index is None:
            if shared is not None:
                raise ValueError('QVBiasDecoderLayer: shared tokens need query_index')
            return super().forward(x)
        if (shared is None) != (shared_index is None):
            raise ValueError('QVBiasDecoderLayer: shared and shared_index go together')
        args = (x, query_index, shared, shared_index)
        if self.with_cp and x.requires_grad:
            return checkpoint(self._forward_queries, *args, use_reentrant=False)
        return self._forward_queries(*args)

    def _forward_queries(self, x: torch.Tensor, query_index: torch.Tensor,
                         shared: Optional[torch.Tensor],
                         shared_index: Optional[torch.Tensor]) -> torch.Tensor:
        attn = self.attn
        if shared is None:
            index = query_index.unsqueeze(-1).expand(-1, -1, x.shape[-1])
            normed = self.ln1(x)
            y = attn.attend_queries(normed, torch.gather(normed, 1, index))
            identity = torch.gather(x, 1, index)
        else:
            channels = x.shape[-1]
            bias = attn.qkv_bias()
            qkv_shared = F.linear(self.ln1(shared), attn.qkv.weight, bias)  # S x 3C
            kv = F.linear(self.ln1(x), attn.qkv.weight[channels:],
                          None if bias is None else bias[channels:])
            kv = torch.cat([kv, take_rows(qkv_shared[:, channels:], shared_index)], dim=1)
            y = attn.attend_projected(take_rows(qkv_shared[:, :channels], query_index), kv)
            identity = take_rows(shared, query_index)
        x = identity + attn.out_drop(attn.gamma1(attn.proj_drop(y)))
        return self.ffn(self.ln2(x), identity=x)
