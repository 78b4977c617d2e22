"""Patch-to-caption probability maps: which caption each patch of an image is closest to.

For every patch, the softmax over K captions of ``<f_patch, t_k> / T``, where ``f_patch`` is the
patch's output token projected into the joint space and L2-normalised and ``t_k`` the
normalised caption embeddings:

- RILS: exactly the distributions of its reconstruction objective (RILS paper, Eq. 3-4;
  ``LanguageSpaceReconstructionLoss``): the teacher from the intact pass's patches with the
  teacher temperature, the student from the decoder's predictions after the masked pass with
  the student temperature, both through the image head's projection, with the captions as
  prototypes;
- CLIP-type models (CLIP, MAE+CLIP, LiT, MaMMUT, open_clip): the intact pass's patch tokens
  through the image projection, with the model's own temperature (1 / logit scale).
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .figures import Panel, draw_panel_grid, wrap_title
from .masking import method_table, rils_masked_passes
from .models import (VisualizationInputError, encode_captions, intact_tokens,
                     is_open_clip, logit_temperature, patch_grid, project_patches)

__all__ = ['PatchCaptionMaps', 'is_rils', 'patch_caption_maps', 'masked_patch_caption_maps',
           'draw_patch_caption_figure', 'default_student', 'class_prompts']


@dataclass
class PatchCaptionMaps:
    """Per-patch distributions over captions.

    Attributes:
        probabilities (torch.Tensor): B x K x h x w; sums to 1 over K.
        temperature (float): T of the softmax.
        hidden (torch.Tensor, optional): B x h x w, 1 on the patches the reconstruction loss
            scores (student maps only): those the masked pass did not see (FLIP-style RILS:
            of those its intact pass saw).
        name (str): What the maps are ('intact', 'RILS teacher', 'RILS student', ...).
    """
    probabilities: torch.Tensor
    temperature: float
    hidden: Optional[torch.Tensor] = None
    name: str = ''


def is_rils(model: nn.Module) -> bool:
    """Whether ``model`` reconstructs in language space (RILS and its vision-space variant):
    its method's ``Reconstruction`` in the method table (``configs/methods.yml``)."""
    method = method_table().method_of(model)
    return method is not None and method.reconstruction == 'language'


def _probabilities(features: torch.Tensor, captions: torch.Tensor, temperature: float,
                   grid) -> torch.Tensor:
    """B x L x D normalised features, K x D captions -> B x K x h x w softmax over K."""
    logits = features @ captions.t() / temperature
    probabilities = logits.softmax(dim=-1)  # B x L x K
    return probabilities.transpose(1, 2).reshape(features.shape[0], -1, *grid)


def _check_temperature(temperature: Optional[float]) -> None:
    if temperature is not None and not temperature > 0:
        raise VisualizationInputError(f'temperature must be > 0, got {temperature}')


@torch.no_grad()
def patch_caption_maps(model: nn.Module, images: torch.Tensor, captions: Sequence[str],
                       temperature: Optional[float] = None) -> PatchCaptionMaps:
    """The intact pass's maps (RILS: its teacher distributions).

    Args:
        model (nn.Module): An image-text model (:func:`~.models.load_model`).
        images (torch.Tensor): B x 3 x H x W, normalised.
        captions (Sequence[str]): The K captions.
        temperature (float, optional): T; defaults to RILS's teacher temperature, or
            1 / logit scale for other models.

    Returns:
        PatchCaptionMaps: probabilities B x K x h x w.
    """
    _check_temperature(temperature)
    text = encode_captions(model, captions)
    rils = is_rils(model)
    if temperature is None:
        temperature = (model.head.loss_module.teacher_temperature if rils
                       else logit_temperature(model))
    tokens = intact_tokens(model, images)
    features = project_patches(model, tokens[:, 1:])
    return PatchCaptionMaps(_probabilities(features, text, temperature, patch_grid(model)),
                            float(temperature),
                            name='RILS teacher (intact)' if rils else 'intact')


@torch.no_grad()
def masked_patch_caption_maps(model: nn.Module, images: torch.Tensor,
                              captions: Sequence[str], seed: int = 0,
                              temperature: Optional[float] = None) -> PatchCaptionMaps:
    """RILS's student maps: the decoder's predictions after a masked pass.

    The masked pass is the one of RILS's training step (:func:`~.masking.rils_masked_passes`),
    its mask drawn from torch's generator seeded with ``seed`` (the same mask as
    ``tools/visualization/masks.py`` with that seed); the decoder predicts every patch, and its
    predictions are projected and scored as the teacher's patches are. For a FLIP-style RILS
    (``intact_keep_ratio < 1``) the masked pass sees a subset of the random patches its
    intact pass keeps (its nested passes), and ``hidden`` marks the patches the loss scores:
    seen by that intact pass and hidden from the masked pass (the teacher maps of
    :func:`patch_caption_maps` are still those of the evaluation's intact pass on every
    patch).

    Args:
        model (nn.Module): A RILS model.
        images (torch.Tensor): B x 3 x H x W, normalised.
        captions (Sequence[str]): The K captions.
        seed (int): Seed of the mask. Defaults to 0.
        temperature (float, optional): T; defaults to RILS's student temperature.

    Returns:
        PatchCaptionMaps: probabilities B x K x h x w and ``hidden`` B x h x w.
    """
    if not is_rils(model):
        raise VisualizationInputError(f'{type(model).__name__} has no language-space decoder '
                                      f'(only RILS models have student maps)')
    _check_temperature(temperature)
    text = encode_captions(model, captions)
    if temperature is None:
        temperature = model.head.loss_module.student_temperature
    grid = patch_grid(model)
    _, latent, hidden, ids_restore = rils_masked_passes(model, images, seed)
    predictions = model.neck(latent, ids_restore)  # B x L x C
    features = project_patches(model, predictions)
    return PatchCaptionMaps(_probabilities(features, text, temperature, grid),
                            float(temperature), hidden.reshape(-1, *grid),
                            name='RILS student (masked)')


def draw_patch_caption_figure(image: np.ndarray, captions: Sequence[str],
                              maps: Sequence[PatchCaptionMaps], path: str,
                              panel_px: int = 200, columns: int = 6) -> tuple:
    """One block of panels per map set: the image (its masked view for student maps), then
    one panel per caption with the probability of that caption on every patch (colour scale
    0 to 1, the same for every panel).

    Args:
        image (np.ndarray): H x W x 3 uint8 (the model's input crop).
        captions (Sequence[str]): The K captions.
        maps (Sequence[PatchCaptionMaps]): Maps of this one image (batch of 1).
        path (str): Output PNG.
        panel_px (int): Panel side in pixels.
        columns (int): Panels per row at most.

    Returns:
        tuple[int, int]: The PNG's (width, height): ``min(columns, K + 1) * panel_px`` by
        ``len(maps) * ceil((K + 1) / min(columns, K + 1)) * panel_px``.
    """
    blocks: List[List[Panel]] = []
    for maps_ in maps:
        probabilities = maps_.probabilities[0].cpu().numpy()
        hidden = None if maps_.hidden is None else maps_.hidden[0].cpu().numpy() > 0
        first = f'{maps_.name}\nT = {maps_.temperature:.3g}'
        block = [Panel(image, first, hidden=hidden)]
        for caption, values in zip(captions, probabilities):
            title = f'{wrap_title(caption)}\nmean p {values.mean():.2f}, max {values.max():.2f}'
            block.append(Panel(image, title, values=values, vmin=0.0, vmax=1.0))
        blocks.append(block)
    return draw_panel_grid(blocks, columns, panel_px, path)


def default_student(model: nn.Module) -> bool:
    """Student maps are drawn by default for RILS models (and never for open_clip)."""
    return not is_open_clip(model) and is_rils(model)


def class_prompts(class_names: Optional[str] = None, template: str = 'a photo of a {}'
                  ) -> List[str]:
    """Captions from class names: ``template`` with each name (``'a'`` before a vowel becomes
    ``'an'``, as in the demo captions).

    Args:
        class_names (str, optional): A file with one class name a line; None or ``'demo'``:
            the demo's 30 ``"<colour> <shape>"`` classes.
        template (str): With one ``{}`` for the name.
    """
    import re

    from ..datasets.demo_shapes import class_names as demo_class_names
    from .models import read_lines
    if template.count('{}') != 1:
        raise VisualizationInputError(f'the template needs exactly one {{}}, got {template!r}')
    names = demo_class_names() if class_names in (None, 'demo') else read_lines(class_names)
    if not names:
        raise VisualizationInputError(f'no class names in {class_names}')
    return [re.sub(r'\ba (?=[aeiou])', 'an ', template.format(name)) for name in names]
