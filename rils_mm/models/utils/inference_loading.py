"""Build a model from its config and load a local checkpoint into it, every key checked.

The one loader behind :func:`rils_mm.apis.init_model` and
:func:`rils_mm.visualization.load_model`: a zero-shot evaluation wrapper is read as the model
it wraps, an ``OpenCLIPModel`` loads the file as its ``pretrained`` weights (open_clip's strict
load), every other model through :func:`~.checkpoint_loading.load_checked` (weights-only), and
any mismatch is one line that names the file.
"""
import copy
from typing import Optional, Sequence

from torch import nn

from ...compat import CheckpointKeysError, CheckpointLoadError
from .checkpoint_loading import load_checked

__all__ = ['EVAL_WRAPPERS', 'model_type', 'build_and_load']

# Evaluation configs wrap the model they evaluate in ``model.model``.
EVAL_WRAPPERS = ('ZeroShotClassifier', 'ZeroShotRetriever')
# torch's ``load_state_dict`` error (shape mismatches; open_clip's strict key check), which
# spans several lines.
_TORCH_LOAD_ERROR = 'Error(s) in loading state_dict'


def model_type(model_cfg: dict) -> str:
    """The class name a model config builds (``'mmpretrain.MAE'`` and ``MAE`` give ``'MAE'``)."""
    kind = model_cfg.get('type', '')
    return (kind if isinstance(kind, str) else getattr(kind, '__name__', str(kind))
            ).split('.')[-1]


def _one_line(error: RuntimeError, checkpoint: str) -> Optional[CheckpointKeysError]:
    """torch's multi-line load error as a one-line :class:`CheckpointKeysError`; None for
    another error."""
    if _TORCH_LOAD_ERROR not in str(error):
        return None
    details = ' '.join(str(error).split(_TORCH_LOAD_ERROR, 1)[-1].split('\n', 1)[-1].split())
    return CheckpointKeysError(f'{checkpoint} does not fit the model of the config: '
                               f'{details[:500]}')


def build_and_load(model_cfg: dict,
                   checkpoint: Optional[str] = None,
                   *,
                   drop: Sequence[str] = (),
                   default_scope: Optional[str] = 'mmpretrain') -> nn.Module:
    """Build ``model_cfg`` and load a local ``checkpoint`` into it, checked; in eval mode.

    Checked: the file is read weights-only (non-tensor Python objects are refused, nothing is
    run); every weight of the model must be in the file, with its shape; and every weight of
    the file must have a place in the model, except those under the ``drop`` parts, which are
    not built. An ``OpenCLIPModel`` is given the file as its ``pretrained`` argument, so
    open_clip loads it (weights-only; the weights of TorchScript archives are read without
    running them) with its strict key check.

    Args:
        model_cfg (dict): A model config (``cfg.model``); not modified. A zero-shot evaluation
            wrapper (``ZeroShotClassifier``/``ZeroShotRetriever``, nested or not) is replaced
            by the model it wraps.
        checkpoint (str, optional): Local checkpoint file (a training run's ``epoch_N.pth``;
            for ``OpenCLIPModel`` an open_clip or TorchScript file). Without it the weights are
            as built (random, or the config's own ``init_cfg``/``pretrained``).
        drop (Sequence[str]): Top-level keys of the model config to leave out (MILAN's
            training-only ``target_generator``); the file's weights under them
            (``'<key>.'``) are ignored.
        default_scope (str, optional): Registry scope the model is built in (for the duration
            of the build only). Defaults to ``'mmpretrain'``.

    Returns:
        nn.Module: The model, on the CPU, in eval mode.

    Raises:
        CheckpointKeysError: The file lacks weights of the model, holds weights it has no place
            for, or holds weights of another shape (one line, naming the file).
        CheckpointLoadError: The file is missing, damaged or holds non-tensor Python objects.
    """
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS

    model_cfg = copy.deepcopy(model_cfg)
    while model_type(model_cfg) in EVAL_WRAPPERS:
        model_cfg = model_cfg['model']
    for key in drop:
        model_cfg.pop(key, None)
    open_clip = model_type(model_cfg) == 'OpenCLIPModel'
    if open_clip and checkpoint is not None:
        model_cfg['pretrained'] = checkpoint
    with DefaultScope.overwrite_default_scope(default_scope):
        try:
            model = MODELS.build(model_cfg)
        except CheckpointLoadError:
            raise
        except RuntimeError as error:  # open_clip's strict load of the checkpoint
            converted = _one_line(error, checkpoint) if open_clip and checkpoint else None
            if converted is None:
                raise
            raise converted from None
    if checkpoint is not None and not open_clip:
        try:
            report = load_checked(model, checkpoint, prefix='', logger=None)
        except CheckpointLoadError:
            raise
        except RuntimeError as error:  # torch's shape mismatches
            converted = _one_line(error, checkpoint)
            if converted is None:
                raise
            raise converted from None
        dropped = tuple(f'{key}.' for key in drop)
        unexpected = [k for k in report.unexpected if not (dropped and k.startswith(dropped))]
        if unexpected:
            raise CheckpointKeysError(
                f'{checkpoint} holds {len(unexpected)} weights that {type(model).__name__} '
                f'has no place for (first: {unexpected[:10]}); it was saved from another '
                f'config')
    return model.eval()
