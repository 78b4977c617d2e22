"""The masks a method draws and its reconstruction loss on every patch.

Which methods draw masks, and how they are labelled, is their ``Masking`` and
``Reconstruction`` in the method table (``configs/methods.yml``; a subclass without an entry is
its parent's method); the mask and the loss per patch come from the method's own loss map
(:func:`rils_mm.models.algorithms.loss_map`, registered by each algorithm's module, from the
heads' and losses' ``reduction='none'``):

- RILS (and its vision-space variant): uniform random masking (MAE's per-sample shuffle);
  the loss map is KL(teacher || student) of every masked patch against the prototypes its
  head scores with (the given captions for RILS, the fixed random prototypes for the
  vision-space variant).
- MAE and MAE+CLIP: uniform random masking; the map is the pixel loss of every masked patch
  (MSE, or L1, of the per-patch normalised pixels, ``MAEPretrainHead``'s target).
- MILAN: the CLIP teacher's class-token attention weighs the patches and the kept ones are
  drawn with these weights (semantic-aware masking; ``masking='uniform'`` teachers give equal
  weights); the map is ``shift - scale * cos`` between the decoder's prediction and the
  teacher's feature of every patch (MILAN's loss counts all tokens, visible ones too).
  ``PixelTargetMILAN``: MILAN's masking with MAE's pixel loss on the masked patches.

Masks come from torch's generator seeded per draw, as in training: with the same seed the
model's own ``loss`` draws the same mask. The maps leave out what only training has: the loss
weight and RILS's correct-retrieval filter (which needs a batch of captions).
"""
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..models.algorithms.loss_maps import LossMap, LossMapInputError, loss_map
from ..utils.methods import MethodTable, MethodTableError, load_method_table
from .figures import Panel, draw_panel_grid
from .models import VisualizationInputError, patch_grid, seeded

__all__ = ['MaskDraw', 'reconstruction_kind', 'draw_mask', 'draw_masks_figure',
           'rils_masked_passes']

# What draw_mask returns: the model's loss map.
MaskDraw = LossMap


def method_table() -> MethodTable:
    """The method table (``configs/methods.yml``); a malformed one is an input error."""
    try:
        return load_method_table()
    except MethodTableError as error:
        raise VisualizationInputError(str(error)) from None


# (masking, reconstruction) of the method table -> how draw_mask draws it.
_KINDS = {('uniform', 'language'): 'rils', ('uniform', 'pixel'): 'pixel',
          ('teacher-attention', 'feature'): 'milan', ('teacher-attention', 'pixel'): 'milan_pixel'}


def reconstruction_kind(model: nn.Module) -> str:
    """How :func:`draw_mask` draws the model's masks and loss map, from its method's
    ``Masking`` and ``Reconstruction`` in the method table (``configs/methods.yml``):
    ``'rils'`` (uniform masks, language space), ``'pixel'`` (uniform, pixels: MAE, MAE+CLIP),
    ``'milan'`` (teacher-attention masks, features) or ``'milan_pixel'`` (teacher-attention,
    pixels).

    Raises:
        VisualizationInputError: The model's method draws no masks, or draws them in a way
            this module has no loss map for.
    """
    table = method_table()
    method = table.method_of(model)
    if method is None or method.masking == 'none':
        masking = [m.name for m in table.methods.values() if m.masking != 'none']
        raise VisualizationInputError(f'{type(model).__name__} draws no masks (masking '
                                      f'methods: {", ".join(masking)})')
    kind = _KINDS.get((method.masking, method.reconstruction))
    if kind is None:
        raise VisualizationInputError(
            f'{method.name} ({type(model).__name__}): no loss map for {method.masking} masks '
            f'with {method.reconstruction} reconstruction (drawn: '
            f'{", ".join(" + ".join(pair) for pair in _KINDS)})')
    return kind


def draw_mask(model: nn.Module, images: torch.Tensor, seed: int = 0,
              captions: Optional[Sequence[str]] = None) -> MaskDraw:
    """Draw one mask per image as the method does in training and score its reconstruction.

    Args:
        model (nn.Module): A masking model (:func:`reconstruction_kind`).
        images (torch.Tensor): B x 3 x H x W, normalised.
        seed (int): Seed of torch's generator for the draw.
        captions (Sequence[str], optional): RILS's prototypes (the captions of a batch);
            required for RILS with caption prototypes, unused otherwise.

    Returns:
        MaskDraw: the mask and the per-patch loss (the model's
        :func:`~rils_mm.models.algorithms.loss_map`).
    """
    reconstruction_kind(model)
    try:
        with seeded(seed):
            return loss_map(model, images, captions)
    except LossMapInputError as error:
        raise VisualizationInputError(str(error)) from None


def rils_masked_passes(model: nn.Module, images: torch.Tensor, seed: int) -> tuple:
    """RILS's encoder passes as its training step runs them, the mask drawn with ``seed``.

    A FLIP-style RILS (``intact_keep_ratio < 1``) runs its nested passes
    (``RILS.encoder_passes``): the intact pass sees a random subset of the patches and
    the masked pass a subset of that subset. Otherwise the intact pass sees every patch and
    the masked pass the encoder's ``1 - mask_ratio`` of them.

    Args:
        model (nn.Module): A RILS model.
        images (torch.Tensor): B x 3 x H x W, normalised.
        seed (int): Seed of torch's generator for the draw.

    Returns:
        tuple: ``targets`` B x L x C (the intact pass's patch features; zeros where a
        FLIP-style intact pass did not look), the masked pass's ``latent`` and
        ``ids_restore`` (the decoder's inputs), and ``hidden`` B x L: 1 on the patches the
        reconstruction loss scores (hidden from the masked pass and, FLIP-style, seen by the
        intact pass).
    """
    with seeded(seed):  # the training step's passes (RILS.encoder_passes)
        _, targets, latent, hidden, ids_restore = model.encoder_passes(images)
    return targets, latent, hidden, ids_restore


def draw_masks_figure(model: nn.Module, image: np.ndarray, draws: Sequence[MaskDraw],
                      path: str, panel_px: int = 200) -> tuple:
    """One row per draw: the image, the masked view (hidden patches grey), the per-patch loss
    over the image (colour scale from the row's smallest to its largest patch loss) and, for
    MILAN, the teacher's masking weights (0 to their maximum).

    Returns:
        tuple[int, int]: The PNG's (width, height): ``C * panel_px`` by
        ``len(draws) * panel_px``, C = 3 (4 for MILAN).
    """
    grid = patch_grid(model)
    blocks: List[List[Panel]] = []
    for index, draw in enumerate(draws):
        hidden = draw.hidden[0].reshape(grid).cpu().numpy() > 0
        kept = int((~hidden).sum())
        row = [Panel(image, f'draw {index}' if len(draws) > 1 else 'image'),
               Panel(image, f'masked view: {int(hidden.sum())} of {hidden.size} hidden\n'
                     f'{kept} seen', hidden=hidden)]
        if draw.loss is not None:
            loss = draw.loss[0].reshape(grid).cpu().numpy()
            total = float(draw.loss_total[0])
            finite = loss[np.isfinite(loss)]
            row.append(Panel(image, f'{draw.loss_name}\nloss {total:.4g}; patches '
                             f'{finite.min():.3g} to {finite.max():.3g}', values=loss,
                             vmin=None, cmap='magma'))
        if draw.importance is not None:
            weights = draw.importance[0].reshape(grid).cpu().numpy()
            row.append(Panel(image, 'masking weights (teacher\nclass-token attention)',
                             values=weights, cmap='inferno'))
        blocks.append(row)
    return draw_panel_grid(blocks, max(len(b) for b in blocks), panel_px, path)
