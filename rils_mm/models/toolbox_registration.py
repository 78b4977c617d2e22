"""Register the transfer models in mmdet's and mmseg's registries too.

mmengine resolves a config's ``type`` in the registry of its ``default_scope`` (and that
registry's parents), so a detector config (``default_scope='mmdet'``) cannot find a module that
only mmpretrain's registry knows. The *same* class objects are added to each toolbox's
``MODELS`` registry (no copies): the RILS vision encoder, the ViTDet feature pyramid and
mmpretrain's channel LayerNorm ``LN2d`` (ViTDet's necks and heads use it), and in mmdet's
the LVIS federated loss ``FederatedLoss``. A toolbox that is not
installed is skipped. The layer-decay optimizer constructor is registered likewise by
:mod:`rils_mm.engine.toolbox_registration`.
"""
import importlib
from typing import Optional

from mmpretrain.models.utils import LayerNorm2d

from .backbones.rils_vit import RILSViT
from .losses.federated import FederatedLoss
from .necks.simple_feature_pyramid import SimpleFeaturePyramid

__all__ = ['register_in_toolboxes', 'register_same_module', 'REGISTERED_TOOLBOXES']

REGISTERED_TOOLBOXES = []


def register_same_module(registry, module: type, name: Optional[str] = None) -> None:
    """Add ``module`` to ``registry`` unless that name already holds exactly it.

    Args:
        registry (mmengine.Registry): The registry to add to.
        module (type): The class (the object itself, not a copy, is registered).
        name (str, optional): Registered name. Defaults to ``module.__name__``.

    Raises:
        KeyError: If ``name`` is registered there as another object.
    """
    name = name or module.__name__
    existing = registry.module_dict.get(name)
    if existing is module:
        return
    if existing is not None:
        raise KeyError(f'{name} is already registered in {registry.scope}.{registry.name} as '
                       f'{existing!r}, not {module!r}')
    registry.register_module(name=name, module=module)


def register_in_toolboxes(toolboxes=('mmpretrain', 'mmdet', 'mmseg')) -> list:
    """Register the transfer models in each installed toolbox's ``MODELS`` registry.

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
        for module in (RILSViT, SimpleFeaturePyramid):
            register_same_module(registry.MODELS, module)
        if toolbox == 'mmdet':  # a box-head classification loss (mmdet's BBoxHead hooks)
            register_same_module(registry.MODELS, FederatedLoss)
        if 'LN2d' not in registry.MODELS.module_dict:
            register_same_module(registry.MODELS, LayerNorm2d, name='LN2d')
        if toolbox not in REGISTERED_TOOLBOXES:
            REGISTERED_TOOLBOXES.append(toolbox)
    return REGISTERED_TOOLBOXES


register_in_toolboxes()
