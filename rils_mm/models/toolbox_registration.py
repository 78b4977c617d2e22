"""Register the transfer modules in mmdet's and mmseg's registries too.

mmengine resolves a config's ``type`` in the registry of its ``default_scope`` (and that
registry's parents), so a detector config (``default_scope='mmdet'``) cannot find a module that
only mmpretrain's registry knows. The *same* class objects are added to each toolbox's registry
(no copies): the RILS vision encoder, the ViTDet feature pyramid, the layer-decay optimizer
constructor, and mmpretrain's channel LayerNorm ``LN2d`` (ViTDet's necks and heads use it).
A toolbox that is not installed is skipped.
"""
import importlib

from mmpretrain.models.utils import LayerNorm2d

from ..engine.optimizers import RILSLayerDecayOptimWrapperConstructor
from .backbones.rils_vit import RILSViT
from .necks.simple_feature_pyramid import SimpleFeaturePyramid

__all__ = ['register_in_toolboxes', 'REGISTERED_TOOLBOXES']

REGISTERED_TOOLBOXES = []


def _register(registry, module, name=None) -> None:
    """Add ``module`` to ``registry`` unless that name already holds exactly it."""
    name = name or module.__name__
    existing = registry.module_dict.get(name)
    if existing is module:
        return
    if existing is not None:
        raise KeyError(f'{name} is already registered in {registry.scope}.{registry.name} as '
                       f'{existing!r}, not {module!r}')
    registry.register_module(name=name, module=module)


def register_in_toolboxes(toolboxes=('mmpretrain', 'mmdet', 'mmseg')) -> list:
    """Register the transfer modules in each installed toolbox's registries.

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
            _register(registry.MODELS, module)
        if 'LN2d' not in registry.MODELS.module_dict:
            _register(registry.MODELS, LayerNorm2d, name='LN2d')
        _register(registry.OPTIM_WRAPPER_CONSTRUCTORS, RILSLayerDecayOptimWrapperConstructor)
        if toolbox not in REGISTERED_TOOLBOXES:
            REGISTERED_TOOLBOXES.append(toolbox)
    return REGISTERED_TOOLBOXES


register_in_toolboxes()
