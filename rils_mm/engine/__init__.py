"""Training-time pieces: hooks (data resume, bad-sample accounting, remote copies), optimizer
constructors, the FSDP strategy for mmengine's FlexibleRunner.

Importing this package registers them in mmpretrain's registries, and the optimizer
constructor in mmdet's and mmseg's too (:mod:`.toolbox_registration`). This package holds what
the Runner builds from a config and what that needs (:mod:`.errors`: ``RunStopped``;
:mod:`.remote_store`: the object-store folder ``RemoteCheckpointHook`` uploads to). The tool
drivers (train/test command line, chains, the comparison, the feature cache) are in
:mod:`rils_mm.tools`, which the engine does not import (tests/test_import_layers.py).
"""
from .errors import RunStopped  # noqa: F401
from .hooks import (BadSampleHook, DataResumeHook, NonFiniteCheckHook,  # noqa: F401
                    RandomStateHook, RemoteCheckpointHook)
from .optimizers import RILSLayerDecayOptimWrapperConstructor  # noqa: F401
from .strategies import RILSFSDPStrategy  # noqa: F401
from . import toolbox_registration  # noqa: F401,I001  (mmdet's and mmseg's registries)
