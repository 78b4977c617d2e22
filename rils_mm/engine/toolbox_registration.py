"""Register the engine's training pieces in mmdet's and mmseg's registries too.

A detector or segmentor config (``default_scope='mmdet'`` / ``'mmseg'``) resolves
``optim_wrapper.constructor`` in its own toolbox's ``OPTIM_WRAPPER_CONSTRUCTORS``, which does
not see mmpretrain's. The layer-decay constructor (registered in mmpretrain's by its decorator)
is added, as the same class object, to each installed toolbox's registry; a toolbox that is not
installed is skipped. The models are registered likewise by
:mod:`rils_mm.models.toolbox_registration`.
"""
import importlib
from typing import List, Sequence

from ..models.toolbox_registration import register_same_module
from .optimizers import RILSLayerDecayOptimWrapperConstructor

__all__ = ['register_engine_in_toolboxes', 'ENGINE_REGISTERED_TOOLBOXES']

ENGINE_REGISTERED_TOOLBOXES: List[str] = []


def register_engine_in_toolboxes(
        toolboxes: Sequence[str] = ('mmpretrain', 'mmdet', 'mmseg')) -> List[str]:
    """Register the optimizer wrapper constructor in each installed toolbox's registry.

    Args:
        toolboxes (Sequence[str]): Toolbox packages with a ``registry`` module.

    Returns:
        list[str]: The toolboxes registered into.
    """
    for toolbox in toolboxes:
        try:
            registry = importlib.import_module(f'{toolbox}.registry')
        except ImportError:
            continue
        register_same_module(registry.OPTIM_WRAPPER_CONSTRUCTORS,
                             RILSLayerDecayOptimWrapperConstructor)
        if toolbox not in ENGINE_REGISTERED_TOOLBOXES:
            ENGINE_REGISTERED_TOOLBOXES.append(toolbox)
    return ENGINE_REGISTERED_TOOLBOXES


register_engine_in_toolboxes()
