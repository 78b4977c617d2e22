"""The loss map of a masking method: one mask drawn as in training and its loss per patch.

One interface for every method whose entry in the method table (``configs/methods.yml``) masks:
``loss_map(model, images, captions)``. Each algorithm's module registers its function with
:func:`register_loss_map` (a subclass without one uses its parent's); mmpretrain's own ``MAE``
and ``MILAN``, which this package does not define, are registered here. The losses per patch
come from the heads and losses with ``reduction='none'``.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..heads.patch_loss_maps import cosine_patch_losses, pixel_patch_losses


@dataclass
class LossMap:
    """One mask of a batch and the reconstruction loss it gives.

    Attributes:
        hidden (torch.Tensor): B x L, 1 on the patches the encoder did not see.
        loss (torch.Tensor, optional): B x L per-patch loss, NaN where the loss does not count.
        loss_name (str): What ``loss`` is.
        loss_total (torch.Tensor, optional): B, the loss of each image as the method reduces
            it (weight and filter left out).
        importance (torch.Tensor, optional): B x L, MILAN's masking weights (the teacher's
            class-token attention over the patches), normalised to sum to 1.
    """
    hidden: torch.Tensor
    loss: Optional[torch.Tensor] = None
    loss_name: str = ''
    loss_total: Optional[torch.Tensor] = None
    importance: Optional[torch.Tensor] = None


class LossMapInputError(ValueError):
    """The model cannot draw its loss map with what was given (one line, for the user)."""


LossMapFunction = Callable[[nn.Module, torch.Tensor, Optional[Sequence[str]]], LossMap]
_LOSS_MAPS: Dict[str, LossMapFunction] = {}


def register_loss_map(*algorithms: str) -> Callable[[LossMapFunction], LossMapFunction]:
    """Decorator: ``function(model, images, captions)`` draws the loss map of the algorithm
    classes named (registered names)."""
    def register(function: LossMapFunction) -> LossMapFunction:
        for name in algorithms:
            _LOSS_MAPS[name] = function
        return function
    return register


def find_loss_map(model: nn.Module) -> Optional[LossMapFunction]:
    """The function registered for the model's class or its nearest parent, or None."""
    for cls in type(model).__mro__:
        if cls.__name__ in _LOSS_MAPS:
            return _LOSS_MAPS[cls.__name__]
    return None


@torch.no_grad()
def loss_map(model: nn.Module, images: torch.Tensor,
             captions: Optional[Sequence[str]] = None) -> LossMap:
    """Draw one mask per image as the method does in training and score its reconstruction.

    The masks come from torch's global generator: seed it (or fork it) around the call to
    draw the mask that the model's own ``loss`` draws with that seed.

    Args:
        model (nn.Module): A masking model, in eval mode.
        images (torch.Tensor): B x 3 x H x W, normalised.
        captions (Sequence[str], optional): Prototypes for methods that score against
            captions (RILS); unused by the others.

    Returns:
        LossMap: the mask and the per-patch loss.

    Raises:
        LossMapInputError: No loss map is registered for the model, or it needs captions.
    """
    function = find_loss_map(model)
    if function is None:
        raise LossMapInputError(f'{type(model).__name__} registers no loss map '
                                f'(rils_mm.models.algorithms.loss_maps.register_loss_map)')
    return function(model, images, captions)


@register_loss_map('MAE')
def uniform_pixel_loss_map(model: nn.Module, images: torch.Tensor,
                           captions: Optional[Sequence[str]] = None) -> LossMap:
    """MAE (and MAE+CLIP): uniform random masking; the head's pixel loss on every masked
    patch (MSE, or L1, of the per-patch normalised pixels)."""
    latent, hidden, ids_restore = model.backbone(images, mask=True)
    predictions = model.neck(latent, ids_restore)
    losses = pixel_patch_losses(model.head, predictions, images, hidden)
    return LossMap(hidden, losses.per_patch.masked_fill(hidden == 0, float('nan')),
                   losses.name, losses.total)


def importance_masked_pass(model: nn.Module, images: torch.Tensor) -> tuple:
    """MILAN's masked pass and decoder: the teacher's class-token attention (equal weights
    without a teacher) decides which patches are kept.

    Returns:
        tuple: ``predictions`` B x (1 + L) x D, the teacher's ``targets`` (None without a
        teacher), ``hidden`` B x L and the normalised ``importance`` B x L.
    """
    backbone = model.backbone
    targets = None
    if getattr(model, 'target_generator', None) is not None:
        targets, attention = model.target_generator(images)
        importance = attention[:, 0, 1:]
    else:
        num_patches = backbone.patch_resolution[0] * backbone.patch_resolution[1]
        importance = images.new_ones(images.shape[0], num_patches)
    latent, ids_restore, ids_keep, ids_dump = backbone(images, importance)
    predictions = model.neck(latent, ids_restore, ids_keep, ids_dump)
    hidden = torch.ones_like(importance).scatter_(1, ids_keep, 0.0)
    return predictions, targets, hidden, importance / importance.sum(dim=1, keepdim=True)


@register_loss_map('MILAN')
def milan_loss_map(model: nn.Module, images: torch.Tensor,
                   captions: Optional[Sequence[str]] = None) -> LossMap:
    """MILAN: semantic-aware masking; ``shift - scale * cos`` between the decoder's
    prediction and the teacher's feature of every patch (MILAN's loss counts all tokens,
    visible ones too)."""
    predictions, targets, hidden, importance = importance_masked_pass(model, images)
    losses = cosine_patch_losses(model.head, predictions, targets)
    return LossMap(hidden, losses.per_patch[:, 1:], losses.name, losses.total, importance)


def encode_captions(model: nn.Module, captions: Sequence[str]) -> torch.Tensor:
    """Normalised caption embeddings, K x D, with the model's own tokenizer."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device('cpu')
    tokens = model.tokenize(list(captions))
    return F.normalize(model.encode_text(tokens.to(device)).float(), dim=-1)
