"""The last block's self-attention of the image tower, read without changing the model.

A forward pre-hook on the last block's attention module records its input (the block's
normalised tokens, ``ln1(x)``); q and k are recomputed from it with the module's own weights
and bias (mmpretrain's ``MultiheadAttention``, our q/v-bias variant whose k bias is zero, or
open_clip's ``nn.MultiheadAttention``) and the attention is ``softmax(q k^T / sqrt(d_head))``
per head, as the fused kernel computes it. Every row sums to 1 over all 1 + L tokens; the
class token's row over the patches is what MILAN's teacher reads and what
``tools/visualization/attention_map.py`` draws.
"""
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .figures import Panel, draw_panel_grid
from .models import VisualizationInputError, intact_tokens, is_open_clip, patch_grid

__all__ = ['LastBlockAttention', 'last_block_attention', 'draw_attention_figure']


@dataclass
class LastBlockAttention:
    """Attention weights of the last block.

    Attributes:
        weights (torch.Tensor): B x heads x N x N, N = 1 + L (class token first); each row
            sums to 1.
        grid (tuple[int, int]): (h, w) with h * w = L.
    """
    weights: torch.Tensor
    grid: Tuple[int, int]

    def class_token_row(self) -> torch.Tensor:
        """B x heads x N: the class token's attention over all tokens (sums to 1)."""
        return self.weights[:, :, 0]

    def class_to_patches(self) -> torch.Tensor:
        """B x heads x h x w: the patch part of the class token's row (sums to at most 1)."""
        row = self.class_token_row()[..., 1:]
        return row.reshape(*row.shape[:2], *self.grid)


def _last_attention_module(model: nn.Module) -> nn.Module:
    if is_open_clip(model):
        block = model.clip.visual.transformer.resblocks[-1]
        attention = getattr(block, 'attn', None)
        if not isinstance(attention, nn.MultiheadAttention):
            raise VisualizationInputError('the last open_clip block has no '
                                          'nn.MultiheadAttention')
        return attention
    layers = getattr(getattr(model, 'backbone', None), 'layers', None)
    attention = getattr(layers[-1], 'attn', None) if layers else None
    if attention is None or not hasattr(attention, 'qkv'):
        raise VisualizationInputError(f'{type(model).__name__} has no ViT backbone with '
                                      f'mmpretrain attention blocks')
    return attention


def _query_key(attention: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """q, k as B x heads x N x d_head from the attention module's input x (B x N x C)."""
    if isinstance(attention, nn.MultiheadAttention):
        if not attention.batch_first:
            x = x.transpose(0, 1)
        heads = attention.num_heads
        qkv = F.linear(x, attention.in_proj_weight, attention.in_proj_bias)
    else:
        heads = attention.num_heads
        bias = attention.qkv_bias() if callable(getattr(attention, 'qkv_bias', None)) \
            else attention.qkv.bias
        qkv = F.linear(x, attention.qkv.weight, bias)
    B, N, _ = qkv.shape
    q, k, _ = qkv.reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k


@torch.no_grad()
def last_block_attention(model: nn.Module, images: torch.Tensor) -> LastBlockAttention:
    """Run the intact pass and return the last block's attention weights.

    Args:
        model (nn.Module): Any model of :func:`~.models.load_model` with a ViT image tower.
        images (torch.Tensor): B x 3 x H x W, normalised.

    Returns:
        LastBlockAttention: weights B x heads x (1 + L) x (1 + L).
    """
    attention = _last_attention_module(model)
    inputs: List[torch.Tensor] = []

    def record(module, args, kwargs):
        inputs.append((args[0] if args else kwargs['query']).detach())

    handle = attention.register_forward_pre_hook(record, with_kwargs=True)
    try:
        intact_tokens(model, images)
    finally:
        handle.remove()
    if len(inputs) != 1:
        raise VisualizationInputError(f'the last attention block ran {len(inputs)} times in '
                                      f'one pass (expected once)')
    q, k = _query_key(attention, inputs[0].float())
    weights = (q @ k.transpose(-2, -1) * q.shape[-1]**-0.5).softmax(dim=-1)
    grid = patch_grid(model)
    if weights.shape[-1] != 1 + grid[0] * grid[1]:
        raise VisualizationInputError(f'the last block sees {weights.shape[-1]} tokens, not '
                                      f'a class token and {grid[0]} x {grid[1]} patches')
    return LastBlockAttention(weights, grid)


def draw_attention_figure(image: np.ndarray, attention: LastBlockAttention, path: str,
                          per_head: bool = False, panel_px: int = 200,
                          columns: int = 6) -> tuple:
    """The image, the class token's attention over the patches (mean over heads) and, with
    ``per_head``, one panel per head. Each map has its own colour scale from 0 to its maximum;
    the titles give the share of the row on the patches (the rest is on the class token).

    Returns:
        tuple[int, int]: The PNG's (width, height): ``min(columns, P) * panel_px`` by
        ``ceil(P / min(columns, P)) * panel_px`` with P = 2 panels (+ heads with
        ``per_head``).
    """
    maps = attention.class_to_patches()[0].cpu().numpy()  # heads x h x w
    mean = maps.mean(axis=0)
    panels = [Panel(image, 'image'),
              Panel(image, f'class-token attention, mean of {maps.shape[0]} heads\n'
                    f'on patches {mean.sum():.3f}, max {mean.max():.3f}', values=mean,
                    cmap='inferno')]
    if per_head:
        panels += [Panel(image, f'head {i}\non patches {head.sum():.3f}, max {head.max():.3f}',
                         values=head, cmap='inferno') for i, head in enumerate(maps)]
    return draw_panel_grid([panels], columns, panel_px, path)
