"""Activation (gradient) checkpointing and the transformer blocks it and FSDP work on.

Every trainable tower takes a switch in its config; the keys differ because the towers come
from three code bases (ours, mmpretrain's, open_clip's), see ``docs/scale.md``:

- ``RILSViT`` and its pretraining forms, ``RILSDecoder``, ``MaMMUTTextDecoder``,
  ``MAEFeatureDecoder``: ``with_cp=True``;
- ``CLIPTextEncoder``: ``with_cp=True`` (open_clip's ``set_grad_checkpointing``);
- mmpretrain's ``MAEPretrainDecoder`` and ``MILANPretrainDecoder`` have no switch:
  ``CheckpointedMAEPretrainDecoder`` and ``CheckpointedMILANPretrainDecoder`` are the same
  modules (same arguments and checkpoint keys) with every block recomputed.

A checkpointed block keeps only its input and recomputes its activations in the backward pass
(Chen et al., 2016, arXiv:1604.06174): the same loss and gradients for about one more forward.
"""
from typing import Iterable

import torch
from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
from open_clip.transformer import ResidualAttentionBlock
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (CheckpointWrapper,
                                                                         checkpoint_wrapper)
from torch.utils.checkpoint import checkpoint

# The transformer blocks of every tower: mmpretrain's ViT block (and our q/v-bias and MILAN's
# prompting subclasses of it) and open_clip's block (CLIP text tower, MaMMUT's decoder, CLIP
# teachers). FSDP shards per block and activation checkpointing recomputes per block.
TRANSFORMER_BLOCKS = (TransformerEncoderLayer, ResidualAttentionBlock)


def is_transformer_block(module: nn.Module) -> bool:
    """Whether ``module`` is one transformer block (not a ``CheckpointWrapper`` around one)."""
    return isinstance(module, TRANSFORMER_BLOCKS)


def checkpoint_blocks(blocks: Iterable[nn.Module]) -> nn.ModuleList:
    """The blocks, each in torch's non-reentrant ``CheckpointWrapper``.

    The wrapper's state-dict hooks drop its ``_checkpoint_wrapped_module.`` prefix, so the
    checkpoint keys are those of the bare blocks (files load both ways).

    Args:
        blocks (Iterable[nn.Module]): The blocks of a ``nn.ModuleList``.

    Returns:
        nn.ModuleList: The wrapped blocks, in order.
    """
    return nn.ModuleList(
        block if isinstance(block, CheckpointWrapper) else checkpoint_wrapper(block)
        for block in blocks)


def run_block(block: nn.Module, *args, with_cp: bool = False, **kwargs):
    """``block(*args, **kwargs)``, recomputed in the backward pass when ``with_cp`` and a
    gradient is being recorded (under ``torch.no_grad`` there is nothing to save)."""
    if with_cp and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)
