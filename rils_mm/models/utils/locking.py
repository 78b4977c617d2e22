"""Locking a tower: frozen parameters, eval mode, and optionally its last groups unlocked.

A tower lists its parameters in groups from input to output (:func:`block_groups`): the stem,
one group per block, the last block with the final norm, and for a text tower its projection
on its own (LiT, Zhai et al., CVPR 2022, trains "locked" towers this way). open_clip 3.3 groups
its towers the same way (``VisionTransformer.lock``, ``lock_text_tower``), with the image
projection as the image tower's last group; here that projection lives in the image head, so
the image side's groups are the encoder's plus the head (:func:`lock_groups`, called by
``ImageTextPretrainer`` for ``lock_cfg.backbone=dict(unlocked_groups=N)``).
"""
from typing import Dict, List, Sequence

from torch import nn

__all__ = ['block_groups', 'lock_groups', 'lock_module', 'set_locked_eval']


def block_groups(module: nn.Module,
                 block_prefix: str,
                 num_blocks: int,
                 stem: Sequence[str],
                 separate_tail: Sequence[str] = ()) -> List[List[str]]:
    """Parameter names of ``module`` grouped from input to output.

    Args:
        module (nn.Module): The tower.
        block_prefix (str): Prefix of the blocks, e.g. ``'layers.'`` for block ``layers.3.*``.
        num_blocks (int): Number of blocks.
        stem (Sequence[str]): First name components of the stem's parameters.
        separate_tail (Sequence[str]): First name components of parameters that form the last
            group on their own (a text tower's projection); everything else that is neither
            stem nor block joins the last block (final norms).

    Returns:
        list[list[str]]: ``[stem, block 0, ..., block N-1 + final, (tail)]``.
    """
    names = [name for name, _ in module.named_parameters()]
    blocks = [[n for n in names if n.startswith(f'{block_prefix}{i}.')] for i in range(num_blocks)]
    in_blocks = {n for block in blocks for n in block}
    stem_group = [n for n in names if n not in in_blocks and n.split('.')[0] in stem]
    tail = [n for n in names if n not in in_blocks and n.split('.')[0] in separate_tail]
    final = [n for n in names if n not in in_blocks and n not in stem_group and n not in tail]
    groups = [stem_group] + blocks[:-1] + [blocks[-1] + final]
    return groups + [tail] if tail else groups


def lock_groups(module: nn.Module, groups: List[List[str]], unlocked_groups: int,
                what: str) -> List[str]:
    """Freeze the parameters of ``module`` named in ``groups`` except the last
    ``unlocked_groups`` groups.

    Parameters that were already frozen (fixed position tables) stay frozen.

    Args:
        module (nn.Module): The module the names are relative to.
        groups (list[list[str]]): Parameter names from input to output; a group may be empty
            (it still counts).
        unlocked_groups (int): How many groups, counted from the output end, stay trainable.
            0 locks everything.
        what (str): The name in the message for an ``unlocked_groups`` out of range.

    Returns:
        list[str]: Names of the parameters this call froze.
    """
    if (isinstance(unlocked_groups, bool) or not isinstance(unlocked_groups, int)
            or not 0 <= unlocked_groups <= len(groups)):
        raise ValueError(f'{what}: unlocked_groups must be an integer in '
                         f'[0, {len(groups)}], got {unlocked_groups!r}')
    unlocked = {n for group in groups[len(groups) - unlocked_groups:] for n in group}
    grouped = {n for group in groups for n in group}
    params: Dict[str, nn.Parameter] = dict(module.named_parameters())
    frozen = []
    for name, param in params.items():
        if name in grouped and name not in unlocked and param.requires_grad:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def lock_module(module: nn.Module, unlocked_groups: int = 0) -> List[str]:
    """Freeze ``module`` except its last ``unlocked_groups`` parameter groups.

    Parameters that were already frozen (fixed position tables) stay frozen. The groups come
    from ``module.lock_groups()`` when the module defines it, else all parameters form one
    group.

    Args:
        module (nn.Module): The tower.
        unlocked_groups (int): How many groups, counted from the output end, stay trainable.
            0 locks everything. Defaults to 0.

    Returns:
        list[str]: Names of the parameters this call froze.
    """
    names = [name for name, _ in module.named_parameters()]
    groups = module.lock_groups() if hasattr(module, 'lock_groups') else [names]
    # Names a tower leaves out of its groups join the first one (unlocked only with all).
    grouped = {n for group in groups for n in group}
    groups = [[n for n in names if n not in grouped] + list(groups[0])] + list(groups[1:])
    return lock_groups(module, groups, unlocked_groups, type(module).__name__)


def set_locked_eval(module: nn.Module) -> None:
    """Put the locked parts of a tower in eval mode.

    A locked part is a fixed feature extractor: its norm statistics, dropout and stochastic
    depth must not change or vary. A fully frozen tower goes to eval mode as a whole (its
    parameter-free layers, e.g. dropout after the position embedding, included); in a partly
    unlocked tower every sub-module whose parameters are all frozen does.

    Args:
        module (nn.Module): The tower, after :func:`lock_module`.
    """

    def visit(sub: nn.Module) -> None:
        params = list(sub.parameters())
        if params and not any(p.requires_grad for p in params):
            sub.eval()
            return
        for child in sub.children():
            visit(child)

    visit(module)
