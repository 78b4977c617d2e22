"""Transformer block with BEiT-form attention bias: a learned bias on q and v, none on k.

RILS (like BEiT and the MAE code it builds on) drops the key bias: it cancels in the softmax, so
a full qkv bias whose k part is zero is the same function. We keep mmpretrain's
``TransformerEncoderLayer`` (and its SDPA attention kernel) and only swap how the qkv bias is
formed.
"""
import torch
import torch.nn.functional as F
from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
from mmpretrain.models.utils import MultiheadAttention
from torch import nn
from torch.utils.checkpoint import checkpoint


class QVBiasMultiheadAttention(MultiheadAttention):
    """mmpretrain's ``MultiheadAttention`` with learned q and v biases and no k bias.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Number of attention heads; must divide ``embed_dims``.
        qv_bias (bool): Learn the q and v biases. With False the attention has no qkv bias.
        **kwargs: Other arguments of ``MultiheadAttention`` (``attn_drop``, ``proj_drop``,
            ``dropout_layer``, ...). ``qkv_bias`` is not accepted.
    """

    def __init__(self, embed_dims: int, num_heads: int, qv_bias: bool = True, **kwargs):
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims={embed_dims} is not divisible by num_heads={num_heads}')
        super().__init__(embed_dims=embed_dims, num_heads=num_heads, qkv_bias=False, **kwargs)
        if qv_bias:
            self.q_bias = nn.Parameter(torch.zeros(embed_dims))
            self.v_bias = nn.Parameter(torch.zeros(embed_dims))
        else:
            self.q_bias = self.v_bias = None

    def qkv_bias(self):
        """The full ``3C`` qkv bias with a zero (constant) k part, or None."""
        if self.q_bias is None:
            return None
        return torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention.

        Args:
            x (torch.Tensor): Tokens, B x N x C.

        Returns:
            torch.Tensor: B x N x C.
        """
        B, N, _ = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias())
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dims).permute(2, 0, 3, 1, 4)
        attn_drop = self.attn_drop if self.training else 0.
        x = self.scaled_dot_product_attention(q, k, v, dropout_p=attn_drop)
        x = x.transpose(1, 2).reshape(B, N, self.embed_dims)
        x = self.proj(x)
        return self.out_drop(self.gamma1(self.proj_drop(x)))


class QVBiasTransformerLayer(TransformerEncoderLayer):
    """Pre-norm ViT block (mmpretrain's) with q/v-bias attention and gradient checkpointing.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Attention heads.
        feedforward_channels (int): MLP hidden width.
        qv_bias (bool): Learn q and v biases (the BEiT form). Defaults to True.
        with_cp (bool): Recompute this block in the backward pass to save activation
            memory. Defaults to False.
        **kwargs: Other ``TransformerEncoderLayer`` arguments (``drop_rate``,
            ``attn_drop_rate``, ``drop_path_rate``, ``norm_cfg``, ...).
    """

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 qv_bias: bool = True, with_cp: bool = False, **kwargs):
        kwargs.pop('qkv_bias', None)
        super().__init__(embed_dims, num_heads, feedforward_channels, qkv_bias=False, **kwargs)
        drop_path_rate = kwargs.get('drop_path_rate', 0.)
        self.attn = QVBiasMultiheadAttention(
            embed_dims=embed_dims,
            num_heads=num_heads,
            qv_bias=qv_bias,
            attn_drop=kwargs.get('attn_drop_rate', 0.),
            proj_drop=kwargs.get('drop_rate', 0.),
            dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate),
            layer_scale_init_value=kwargs.get('layer_scale_init_value', 0.))
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (torch.Tensor): B x N x C. Returns: B x N x C."""
        if self.with_cp and x.requires_grad:
            return checkpoint(super().forward, x, use_reentrant=False)
        return super().forward(x)
