"""Training-time pieces: hooks (data resume, bad-sample accounting), optimizer constructors.

``rils_mm.engine.cli`` (the library side of tools/train.py and test.py) is not imported here.
"""
from .errors import RunStopped  # noqa: F401
from .hooks import (BadSampleHook, DataResumeHook, NonFiniteCheckHook,  # noqa: F401
                    RandomStateHook)
from .optimizers import RILSLayerDecayOptimWrapperConstructor  # noqa: F401
