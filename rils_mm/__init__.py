"""rils_mm: RILS and vision-language pretraining methods for the OpenMMLab stack.

Importing the package applies the fixes of :mod:`rils_mm.compat` that correct results, safe
loading and the pinned releases need (not the console and speed ones, which only the
command-line tools apply: ``rils_mm.compat.install_tool_conveniences``) and registers
every module (models, datasets, transforms, metrics, hooks) in the mmpretrain registries, and
the transfer backbones and necks in mmdet's and mmseg's, so that
``custom_imports=dict(imports=['rils_mm'], allow_failed_imports=False)`` is all a config needs.
It also adds the configs to mmpretrain's model index (``list_models('rils-mm_*')``,
``get_model``; :mod:`rils_mm.apis`).
"""
from .version import __version__  # noqa: F401
from . import compat  # noqa: F401,I001  (first: later imports rely on the fixes)
from . import datasets, engine, evaluation, models  # noqa: F401,E402
from . import apis  # noqa: F401,E402  (its configs in mmpretrain's list_models/get_model)
