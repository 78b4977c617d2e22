"""Compatibility fixes that the pinned OpenMMLab releases need on this stack.

mmengine 0.10, mmcv 2.1, mmpretrain 1.2, mmdet 3.3 and mmseg 1.2 predate numpy 2.4, torch's
``weights_only=True`` default (torch >= 2.6) and CPU-only distributed training. Each fix below
is applied once, when ``rils_mm`` is imported; none edits an installed file, and each has a test
in ``tests/test_compat.py`` that fails without it. Remove a fix when the upstream release that
needs it is no longer supported.
"""
import functools
import os
import pickle

import numpy as np
import torch

__all__ = ['apply_all', 'MMENGINE_CHECKPOINT_SAFE_GLOBALS', 'UnsafeCheckpointError']


# --- numpy 2 ---------------------------------------------------------------------------------
def _restore_numpy_aliases() -> None:
    """Aliases removed by numpy 2 that the pinned releases still call.

    - ``np.float``: ``lvis`` 0.5.3's ``LVISEval`` (and mmdet's YTVIS evaluation).
    - ``np.in1d`` (removed in numpy 2.4): mmpretrain's retrieval metrics.
    """
    if 'float' not in np.__dict__:
        np.float = float  # the builtin is exactly what the old alias meant
    if 'in1d' not in np.__dict__:

        def in1d(ar1, ar2, assume_unique=False, invert=False, **kwargs):
            """``np.isin`` on the flattened first argument (what ``np.in1d`` returned)."""
            return np.isin(np.asarray(ar1).ravel(), ar2, assume_unique=assume_unique,
                           invert=invert, **kwargs)

        np.in1d = in1d


# --- torch.load(weights_only=True) -------------------------------------------------------------
class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds an object that the weights-only loader does not allow."""


def _mmengine_checkpoint_safe_globals() -> list:
    """The non-tensor types that Runner checkpoints of mmengine 0.10 contain.

    ``message_hub`` holds ``HistoryBuffer`` objects whose state is numpy arrays and scalars
    plus its statistics functions, pickled as ``getattr(HistoryBuffer, 'mean')``.
    ``getattr`` itself is far too powerful to allow, so it is allowed only in a form restricted
    to exactly that.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    dtype_classes = [type(np.dtype(t)) for t in
                     ('float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8',
                      'uint8', 'bool')]

    def history_buffer_getattr(obj, name):
        """``getattr`` limited to HistoryBuffer's registered statistics functions."""
        if obj is HistoryBuffer and name in HistoryBuffer._statistics_methods:
            return getattr(obj, name)
        raise pickle.UnpicklingError(
            f'getattr({obj!r}, {name!r}) is not allowed in a checkpoint')

    return [HistoryBuffer, multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
            *dtype_classes, (history_buffer_getattr, 'builtins.getattr')]


MMENGINE_CHECKPOINT_SAFE_GLOBALS = None  # filled by _allow_mmengine_checkpoint_types


def _allow_mmengine_checkpoint_types() -> None:
    """Keep ``weights_only=True`` and allow exactly the types mmengine checkpoints hold.

    torch >= 2.6 refuses ``Unsupported global: mmengine.logging.history_buffer.HistoryBuffer``
    (and numpy's reconstruct/dtype globals) when mmengine resumes a Runner checkpoint.
    Switching ``weights_only`` off would let a checkpoint run arbitrary code; instead the few
    types are added to torch's allow-list, and mmengine's local-file loader is replaced by one
    that turns a refusal into an error naming the file and the offending global.
    """
    global MMENGINE_CHECKPOINT_SAFE_GLOBALS
    from mmengine.runner.checkpoint import CheckpointLoader

    MMENGINE_CHECKPOINT_SAFE_GLOBALS = _mmengine_checkpoint_safe_globals()
    torch.serialization.add_safe_globals(MMENGINE_CHECKPOINT_SAFE_GLOBALS)

    @CheckpointLoader.register_scheme(prefixes='', force=True)
    def load_from_local(filename, map_location):
        """Weights-only load of a local checkpoint, with a clear error on refusal."""
        filename = os.path.expanduser(filename)
        if not os.path.isfile(filename):
            raise FileNotFoundError(f'checkpoint file not found: {filename}')
        try:
            return torch.load(filename, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            lines = [line.strip() for line in str(err).splitlines()]
            reason = next((line for line in lines if 'Unsupported global' in line or
                           'not allowed' in line), lines[0] if lines else repr(err))
            raise UnsafeCheckpointError(
                f'refusing to load {filename}: it holds an object outside the weights-only '
                f'allow-list ({reason}). Only tensors, containers, numbers and the types '
                f'mmengine checkpoints hold are accepted. If you trust this file, convert it '
                f'to a plain state_dict first.') from err


# --- CPU distributed -----------------------------------------------------------------------------
def _support_cpu_distributed() -> None:
    """Let mmengine's launcher and DDP wrapper run with several CPU processes (gloo).

    mmengine 0.10's ``_init_dist_pytorch`` calls ``torch.cuda.set_device`` unconditionally, and
    the Runner wraps the model with ``device_ids=[LOCAL_RANK]``, which DDP rejects for a CPU
    module. Without CUDA we initialise the gloo process group instead and pass no device ids.
    """
    import mmengine.dist.utils as dist_utils
    from mmengine.model.wrappers import MMDistributedDataParallel

    original_init_dist = dist_utils._init_dist_pytorch

    @functools.wraps(original_init_dist)
    def init_dist_pytorch(backend, init_backend='torch', **kwargs):
        if torch.cuda.is_available():
            return original_init_dist(backend, init_backend=init_backend, **kwargs)
        torch.distributed.init_process_group(backend='gloo', **kwargs)

    dist_utils._init_dist_pytorch = init_dist_pytorch

    original_ddp_init = MMDistributedDataParallel.__init__

    @functools.wraps(original_ddp_init)
    def ddp_init(self, module, detect_anomalous_params=False, **kwargs):
        first_param = next(module.parameters(), None)
        if first_param is not None and first_param.device.type == 'cpu':
            kwargs['device_ids'] = None
            kwargs.pop('output_device', None)
        original_ddp_init(self, module=module,
                          detect_anomalous_params=detect_anomalous_params, **kwargs)

    MMDistributedDataParallel.__init__ = ddp_init


_APPLIED = False


def apply_all() -> None:
    """Apply every fix once (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _restore_numpy_aliases()
    _allow_mmengine_checkpoint_types()
    _support_cpu_distributed()
    _APPLIED = True


apply_all()
