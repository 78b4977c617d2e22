"""Compatibility and safety fixes that the pinned OpenMMLab releases need on this stack.

mmengine 0.10, mmcv 2.1, mmpretrain 1.2, mmdet 3.3 and mmseg 1.2 predate numpy 2.4, torch's
``weights_only=True`` default (torch >= 2.6) and CPU-only distributed training, and mmengine
writes checkpoints non-atomically, reads pickle and YAML data files in ways that can run code
and prints some reports on the console parameter by parameter. None of the fixes edits an
installed file, and each has a test (``tests/test_compat.py``,
``tests/test_checkpoint_safety.py``, ``tests/test_evaluation/test_annotation_safety.py``,
``tests/test_tools/test_console.py``) that fails without it. Remove a fix when the upstream
release that needs it is no longer supported.

Importing ``rils_mm`` changes mmengine for the whole process, also in someone else's program
that only wants our models, so it applies only the fixes without which a result would be wrong,
a run would crash, or a file could run code (:func:`install_required_fixes`):

- numpy aliases (:func:`_restore_numpy_aliases`): ``np.float`` and ``np.in1d``, which the
  pinned releases still call (lvis's ``LVISEval``, mmpretrain's retrieval metrics); without
  them an evaluation crashes. Only names numpy no longer has are added.
- :mod:`.safe_loading`: every checkpoint scheme (local, URLs, model-zoo names) loads
  weights-only; refusals and damaged files are one line naming the file. Our configs load
  checkpoints (``init_cfg``, ``load_from``) in any program that builds them.
- :mod:`.safetensors_weights`: a safetensors file loads wherever a ``.pth`` does (through the
  loaders above), as ``dict(state_dict=..., meta=...)`` (it patches nothing itself).
- :mod:`.torchscript_weights`: the weights of a TorchScript archive (OpenAI's CLIP releases)
  without ``torch.jit.load``, which runs code from the file (used by the loaders above, by
  ``OpenCLIPModel`` and by our converters; it patches nothing itself).
- :mod:`.atomic_saving`: checkpoints are written atomically and rotated save-first, so a kill
  or a full disk during a save cannot leave a run without a usable checkpoint.
- :mod:`.resume_config`: ``--resume`` reads the config text a checkpoint carries
  (``meta['config']``, which mmengine's resume would execute) as literals.
- :mod:`.epoch_resume`: a mid-epoch checkpoint resumes the epoch where it stopped; mmengine
  would train again on the batches before it (a different result from the same run).
- :mod:`.data_files`: ``mmengine.load`` refuses to read pickles and reads YAML with the safe
  loader, so an annotation file never runs code (configs, the user's code, read as before).
- CPU distributed (:func:`_support_cpu_distributed`): mmengine's launcher and DDP/FSDP
  wrappers work with gloo on a machine without CUDA, where they would crash; with CUDA they
  are mmengine's own.

The other two change only what the console shows and how fast a config is formatted, so they
are applied by our command-line tools alone (:func:`install_tool_conveniences`, called by
``rils_mm.tools.cli.run_cli`` before a tool's main and by the tools that do not go through it):

- :mod:`.parameter_reports`: ``init_weights`` and the optimizer's ``paramwise_options`` print
  one summary line each; their per-parameter lines go to the log file (or DEBUG).
- :mod:`.config_text`: a config with a line yapf cannot fit (a long path) is not searched
  through by yapf each of the four times a starting Runner formats it (its text is then
  mmengine's unpolished one).

A program of one's own gets them by calling :func:`install_tool_conveniences` itself.
``tests/test_compat.py`` checks, in a fresh interpreter, that importing ``rils_mm`` applies the
first list and leaves mmengine's functions of the second as they were.
"""
import functools

import numpy as np
import torch

from .atomic_saving import CheckpointSaveError, atomic_write_bytes, install_atomic_checkpoints
from .config_text import install_fast_config_text
from .data_files import DataFileError, UnsafeDataFileError, install_data_file_handlers
from .epoch_resume import install_mid_epoch_resume
from .parameter_reports import install_parameter_reports
from .resume_config import install_literal_resume_configs
from .safe_loading import (URL_PREFIXES, CheckpointKeysError, CheckpointLoadError,
                           DamagedCheckpointError, MissingCheckpointError, UnsafeCheckpointError,
                           install_weights_only_loaders, weights_only_load)
from .safetensors_weights import is_safetensors, safetensors_bytes, safetensors_load
from .torchscript_weights import is_torchscript_archive, torchscript_state_dict

__all__ = [
    'install_required_fixes', 'install_tool_conveniences', 'CheckpointKeysError',
    'CheckpointLoadError', 'DamagedCheckpointError',
    'MissingCheckpointError', 'UnsafeCheckpointError', 'weights_only_load', 'atomic_write_bytes',
    'is_torchscript_archive', 'torchscript_state_dict', 'DataFileError', 'UnsafeDataFileError',
    'CheckpointSaveError', 'URL_PREFIXES', 'is_safetensors', 'safetensors_load',
    'safetensors_bytes'
]


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


# --- CPU distributed -----------------------------------------------------------------------------
def _support_cpu_distributed() -> None:
    """Let mmengine's launcher, DDP and FSDP wrappers run with several CPU processes (gloo).

    mmengine 0.10's ``_init_dist_pytorch`` calls ``torch.cuda.set_device`` unconditionally, and
    the Runner wraps the model with ``device_ids=[LOCAL_RANK]``, which DDP rejects for a CPU
    module. Without CUDA we initialise the gloo process group instead and pass no device ids;
    FlexibleRunner's FSDP wrapper gets the CPU as its device.
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

    # FlexibleRunner's FSDPStrategy passes ``device_id=LOCAL_RANK``, which torch's FSDP reads
    # as a CUDA device; torch 2.14's FSDP shards CPU modules over gloo when given the CPU
    # (tests/test_engine/test_sharded_training.py).
    from mmengine.model.wrappers import MMFullyShardedDataParallel
    original_fsdp_init = MMFullyShardedDataParallel.__init__

    @functools.wraps(original_fsdp_init)
    def fsdp_init(self, module, *args, **kwargs):
        if isinstance(kwargs.get('device_id'), int) and not torch.cuda.is_available():
            kwargs['device_id'] = torch.device('cpu')
        original_fsdp_init(self, module, *args, **kwargs)

    MMFullyShardedDataParallel.__init__ = fsdp_init


_REQUIRED_APPLIED = False
_CONVENIENCES_APPLIED = False


def install_required_fixes() -> None:
    """Apply the fixes that correct results, safety or compatibility need (once; on import)."""
    global _REQUIRED_APPLIED
    if _REQUIRED_APPLIED:
        return
    _restore_numpy_aliases()
    install_weights_only_loaders()
    install_atomic_checkpoints()
    install_mid_epoch_resume()
    install_literal_resume_configs()
    install_data_file_handlers()
    _support_cpu_distributed()
    _REQUIRED_APPLIED = True


def install_tool_conveniences() -> None:
    """Apply the console and speed fixes of our command-line tools (once).

    One summary line for ``init_weights`` and ``paramwise_options`` instead of a line per
    parameter on the console (:mod:`.parameter_reports`), and no yapf search on config lines it
    cannot fit (:mod:`.config_text`). Called by ``rils_mm.tools.cli.run_cli`` and the tools
    that do not use it; importing ``rils_mm`` does not apply them.
    """
    global _CONVENIENCES_APPLIED
    if _CONVENIENCES_APPLIED:
        return
    install_parameter_reports()
    install_fast_config_text()
    _CONVENIENCES_APPLIED = True


install_required_fixes()
