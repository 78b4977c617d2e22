"""This package's configs in mmpretrain's model index (``list_models``, ``get_model``).

``model-index.yml`` at the top of the repository imports one ``metafile.yml`` per method folder
of ``configs/`` (mmpretrain's schema: collections with the paper, models with their config,
training data, epochs, batch size and parameter count). No weights are published, so no model
has a ``Weights`` entry: ``get_model(name)`` builds the model, and
``get_model(name, pretrained='work_dirs/.../epoch_25.pth')`` loads a local checkpoint, through
mmengine's ``load_checkpoint``, whose loaders :mod:`rils_mm.compat` makes weights-only.

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

__all__ = ['MODEL_INDEX', 'NAME_PREFIX', 'register_model_index', 'install_model_index']

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
    ModelHub.register_model_index(path, config_prefix=osp.dirname(osp.abspath(path)))
    names = sorted(set(ModelHub._models_dict) - before)
    if own:
        _registered.extend(names)
    return names


def install_model_index() -> None:
    """Register this package's index together with mmpretrain's own, when that is first read
    (once; nothing is parsed now)."""
    from mmpretrain.apis.model import ModelHub
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
