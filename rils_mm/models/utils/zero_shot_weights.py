"""Zero-shot classifier weights from class names and prompt templates (prompt ensembling).

Used by ``ZeroShotClassifier`` (:mod:`rils_mm.models.algorithms.zero_shot`).

The ensembling is open_clip's own ``build_zero_shot_classifier`` (each class: the normalised
embeddings of its prompts are averaged and the mean renormalised), called through a small
adapter, so that our numbers are open_clip's by construction. The adapter also counts the
classes encoded, for the progress report (ImageNet's 1000 classes x 80 prompts take minutes).
"""
from typing import Callable, List, Optional, Sequence

import torch
from open_clip import build_zero_shot_classifier

from ...utils.progress import Progress

__all__ = ['build_text_classifier', 'group_logits']


class _EncodeTextAdapter:
    """Gives any ``encode_text(tokens) -> normalised B x D`` the open_clip call signature and
    counts the classes encoded (``B / num_templates`` per call) in ``progress``."""

    def __init__(self, encode_text: Callable[[torch.Tensor], torch.Tensor],
                 num_templates: int = 1, progress: Optional[Progress] = None):
        self._encode_text = encode_text
        self._num_templates = num_templates
        self._progress = progress

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self._encode_text(tokens)
        if self._progress is not None:
            self._progress.update(len(tokens) // self._num_templates)
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats


def build_text_classifier(encode_text: Callable[[torch.Tensor], torch.Tensor],
                          tokenizer: Callable[[List[str]], torch.Tensor],
                          classnames: Sequence[str],
                          templates: Sequence[str],
                          device: torch.device,
                          num_classes_per_batch: Optional[int] = 10) -> torch.Tensor:
    """Prompt-ensembled, L2-normalised class embeddings.

    Args:
        encode_text (Callable): Tokens ``B x L`` (long) -> text embeddings ``B x D``.
        tokenizer (Callable): List of strings -> tokens ``B x L``.
        classnames (Sequence[str]): ``C`` class names.
        templates (Sequence[str]): ``T`` format strings with one ``{}``.
        device (torch.device): Where the tokens go.
        num_classes_per_batch (int, optional): Classes encoded per forward (``T`` prompts
            each); None encodes all at once.

    Returns:
        Tensor: ``D x C`` classifier weights, each column of unit norm.
    """
    with Progress(len(classnames), 'zero-shot classifier', 'class') as progress:
        return build_zero_shot_classifier(
            _EncodeTextAdapter(encode_text, len(templates), progress),
            tokenizer=tokenizer,
            classnames=list(classnames),
            templates=list(templates),
            num_classes_per_batch=num_classes_per_batch,
            device=device)


def group_logits(logits: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Score each group of classes by its best member (ObjectNet -> ImageNet mapping).

    Args:
        logits (Tensor): ``B x C`` scores over the full label space.
        groups (Sequence[Sequence[int]]): ``G`` non-empty lists of indices into ``C``.

    Returns:
        Tensor: ``B x G`` scores, the max over each group.
    """
    return torch.stack([logits[:, list(g)].max(dim=1).values for g in groups], dim=1)
