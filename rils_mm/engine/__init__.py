"""Training-time pieces: hooks (data resume, bad-sample accounting), optimizer constructors.

``rils_mm.engine.cli`` (the library side of tools/train.py and test.py) is not imported here.
"""
from .hooks import BadSampleHook, DataResumeHook  # noqa: F401
from .optimizers import RILSLayerDecayOptimWrapperConstructor  # noqa: F401
