"""This package's configs in mmpretrain's model index (``list_models``, ``get_model``).

``model-index.yml`` at the top of the repository imports one ``metafile.yml`` per method folder
of ``configs/`` (mmpretrain's schema: collections with the paper, models with their config,
training data, epochs, batch size and parameter count). A model whose weights are published
(``tools/model_converters/publish_model.py``, which prints the entries) has ``Weights`` (a
URL, or a path relative to the index's folder) and ``Results``; none in this repository has
yet (no weights are committed or downloaded). ``get_model(name)`` builds the model;
``get_model(name, pretrained=True)`` loads its ``Weights`` and
``get_model(name, pretrained='work_dirs/.../epoch_25.pth')`` a local checkpoint (``.pth`` or
``.safetensors``), for our names strictly: through :func:`rils_mm.apis.init_model`, every key
of the model in the file with its shape and every key of the file in the model
(mmpretrain's own ``get_model`` loads with ``strict=False``, which leaves unmatched weights at
random values with only a log line). Other names are mmpretrain's, loaded as mmpretrain does.

mmpretrain reads its own index lazily, the first time ``list_models``, ``get_model`` or
``ModelHub.get`` is called; :func:`install_model_index` (run on ``import rils_mm``) makes that
first call read ours too, so importing the package parses no YAML. Our names start with
``rils-mm_`` (``list_models('rils-mm_*')``; ``list_models('*rils*')``), which keeps them apart
from mmpretrain's (it has a MILAN of the same recipe name, for one).

The configs are read from the repository (an editable install, as ``tools/setup_env.sh``
makes); without a ``model-index.yml`` beside the package nothing is registered.
"""
import os.path as osp
from typing import List, Optional

__all__ = ['MODEL_INDEX', 'NAME_PREFIX', 'register_model_index', 'install_model_index',
           'strict_get_model']

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MODEL_INDEX = osp.join(REPO, 'model-index.yml')
NAME_PREFIX = 'rils-mm_'

_registered: List[str] = []


def register_model_index(path: Optional[str] = None) -> List[str]:
    """Add the models of ``path`` (default: this package's index) to mmpretrain's ``ModelHub``.

    Config paths in the metafiles are relative to the folder of ``path``. Idempotent for the
    package's own index.

    Returns:
        list[str]: The names registered (lower case, as ``ModelHub`` keys them).
    """
    from mmpretrain.apis.model import ModelHub
    path = path or MODEL_INDEX
    own = osp.abspath(path) == osp.abspath(MODEL_INDEX)
    if own and _registered:
        return list(_registered)
    if not osp.isfile(path):
        return []
    before = set(ModelHub._models_dict)
    folder = osp.dirname(osp.abspath(path))
    ModelHub.register_model_index(path, config_prefix=folder)
    names = sorted(set(ModelHub._models_dict) - before)
    for name in names:  # Weights paths are relative to the index, as Config paths are
        metainfo = ModelHub._models_dict[name]
        if metainfo.weights and '://' not in metainfo.weights:
            metainfo.weights = osp.normpath(osp.join(folder, metainfo.weights))
    if own:
        _registered.extend(names)
    return names


def _ours(model) -> bool:
    return isinstance(model, str) and model.lower().startswith(NAME_PREFIX) and \
        not model.endswith('.py')


def strict_get_model(original):
    """mmpretrain's ``get_model`` with our names' weights loaded strictly (else ``original``).

    For a name of ours and ``pretrained`` ``True`` (its ``Weights``) or a path: the model of
    :func:`rils_mm.apis.init_model` (MILAN's training-only teacher not built), with
    ``_config``, ``_metainfo`` and ``_dataset_meta`` as ``get_model`` sets them.
    """
    import functools

    @functools.wraps(original)
    def get_model(model, pretrained=False, device=None, device_map=None, offload_folder=None,
                  url_mapping=None, **kwargs):
        if not _ours(model) or pretrained in (False, None) or device_map is not None:
            return original(model, pretrained, device=device, device_map=device_map,
                            offload_folder=offload_folder, url_mapping=url_mapping, **kwargs)
        import re

        from mmpretrain.apis.model import ModelHub

        from .inference import init_model
        metainfo = ModelHub.get(model)
        if pretrained is True:
            if metainfo.weights is None:  # mmpretrain warns and builds random weights
                return original(model, True, device=device, **kwargs)
            pretrained = metainfo.weights
        if url_mapping is not None:
            pretrained = re.sub(url_mapping[0], url_mapping[1], pretrained)
        net = init_model(model, pretrained, device=device or 'cpu',
                         cfg_options=dict(model=kwargs) if kwargs else None)
        net._metainfo = metainfo
        net._dataset_meta = {}
        return net

    get_model._rils_mm_strict = True
    return get_model


def _install_strict_get_model() -> None:
    """Put :func:`strict_get_model` where mmpretrain's users (and its Inferencers) find
    ``get_model``."""
    import mmpretrain
    import mmpretrain.apis as apis
    import mmpretrain.apis.base as base
    import mmpretrain.apis.model as model
    if getattr(model.get_model, '_rils_mm_strict', False):
        return
    strict = strict_get_model(model.get_model)
    for module in (model, apis, base, mmpretrain):
        if getattr(module, 'get_model', None) is not None:
            module.get_model = strict


def install_model_index() -> None:
    """Register this package's index together with mmpretrain's own, when that is first read
    (once; nothing is parsed now), and make ``get_model`` load our names strictly."""
    from mmpretrain.apis.model import ModelHub
    _install_strict_get_model()
    if getattr(ModelHub, '_rils_mm_index_installed', False):
        return
    register_own = getattr(ModelHub, '_register_mmpretrain_models', None)
    if register_own is None:  # another mmpretrain: register now
        register_model_index()
        return
    register_own = register_own.__func__

    def register_models(cls):
        register_own(cls)
        register_model_index()

    ModelHub._register_mmpretrain_models = classmethod(register_models)
    ModelHub._rils_mm_index_installed = True
