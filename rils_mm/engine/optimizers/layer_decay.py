"""Layer-wise learning-rate decay for any model whose backbone reports its layer depths.

mmseg's ``LayerDecayOptimizerConstructor`` and mmdet's ``LearningRateDecayOptimizerConstructor``
pick the depth rule from the backbone's class name ('BEiT', 'MAE', 'ConvNeXt'), so a new
backbone silently gets no decay or an error; mmpretrain's
``LearningRateDecayOptimWrapperConstructor`` asks the *model* for ``get_layer_depth``, which
mmpretrain's classifiers have and detectors and segmentors do not. This constructor asks the
backbone (``model.backbone.get_layer_depth(name, 'backbone.')``, or the model itself when it is
a backbone) and puts every other parameter (neck, heads) at the top depth, with scale 1.
"""
from typing import Callable, List, Optional, Tuple

from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
from mmpretrain.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn


def backbone_layer_depth(model: nn.Module, backbone_attr: str = 'backbone'
                         ) -> Callable[[str], Tuple[int, int]]:
    """A ``param_name -> (depth, num_depths)`` function for a model with a layered backbone.

    Args:
        model (nn.Module): A detector, segmentor or classifier with ``model.backbone``, or a
            backbone itself; either must have ``get_layer_depth(param_name, prefix)``.
        backbone_attr (str): Attribute holding the backbone. Defaults to 'backbone'.

    Returns:
        Callable: Maps a full parameter name to ``(depth, num_depths)``; parameters outside the
        backbone get ``num_depths - 1`` (the top, learning-rate scale 1).

    Raises:
        NotImplementedError: If neither the backbone nor the model has ``get_layer_depth``.
    """
    backbone = getattr(model, backbone_attr, None)
    if backbone is not None and hasattr(backbone, 'get_layer_depth'):
        prefix = backbone_attr + '.'

        def depth(param_name: str) -> Tuple[int, int]:
            # The backbone answers for names outside its prefix with the top depth too.
            return backbone.get_layer_depth(param_name, prefix)

        return depth
    if hasattr(model, 'get_layer_depth'):
        return model.get_layer_depth
    raise NotImplementedError(
        f'Layer-wise lr decay needs {type(model).__name__}.{backbone_attr}.get_layer_depth '
        f'(or {type(model).__name__}.get_layer_depth); '
        f'{type(backbone).__name__ if backbone is not None else "no backbone"} has none')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class RILSLayerDecayOptimWrapperConstructor(LearningRateDecayOptimWrapperConstructor):
    """Layer-wise lr decay (``lr * layer_decay_rate ** (num_depths - 1 - depth)``) that works
    in mmpretrain, mmdet and mmseg.

    The parameter-wise rules are mmpretrain's ``LearningRateDecayOptimWrapperConstructor``
    (``layer_decay_rate``, ``norm_decay_mult``, ``bias_decay_mult``, ``flat_decay_mult``,
    ``custom_keys`` with ``decay_mult``); only the depth lookup differs (see the module
    docstring). Every parameter group records ``lr_scale``, ``layer_id`` and ``param_name``.

    Example::

        optim_wrapper = dict(
            optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.1),
            constructor='RILSLayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.7, flat_decay_mult=0.,
                               custom_keys={'.pos_embed': dict(decay_mult=0.),
                                            '.rel_pos_': dict(decay_mult=0.)}))
    """

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   get_layer_depth: Optional[Callable] = None,
                   **kwargs) -> None:
        """Add the parameters of ``module`` (the whole model at the top call) to ``params``.

        Args:
            params (list[dict]): Parameter groups, extended in place.
            module (nn.Module): The model (top call) or one of its sub-modules.
            prefix (str): Name prefix of ``module``'s parameters.
            get_layer_depth (Callable, optional): Depth function; at the top call it is
                derived from the model's backbone.
        """
        if get_layer_depth is None:
            get_layer_depth = backbone_layer_depth(module)
        super().add_params(params, module, prefix=prefix, get_layer_depth=get_layer_depth,
                           **kwargs)
