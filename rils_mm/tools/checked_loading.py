"""Strict checkpoint loading for the Runner of ``tools/train.py`` and ``tools/test.py``.

mmengine's ``Runner.load_checkpoint`` loads with ``strict=False`` and only logs what did not
fit, so a checkpoint of another model configuration is evaluated (or fine-tuned, or resumed)
with random weights wherever the shapes or names differ. :func:`install_checked_loading`
replaces the ``load_checkpoint`` of one Runner instance (nothing global) with one that loads
through :func:`~rils_mm.models.utils.checkpoint_loading.load_state_dict_report` and stops with a
one-line :class:`~rils_mm.compat.CheckpointKeysError` listing the keys that are missing,
unexpected or of another shape:

- ``load_from`` (evaluation, fine-tuning): every key must fit, except those matched by the
  config's ``load_from_ignore_keys`` (fnmatch patterns, e.g. ``['head.*']`` for a classifier
  head replaced on purpose; they keep the model's initialisation); ``load_from_strict=False``
  only logs the differences (mmengine's behaviour).
- ``--resume``: every key must fit, whatever the options above say, and the optimizer must
  have as many parameter groups, of the same sizes, as the one saved; both are checked before
  the first step.

Weights loaded by a model's own ``init_cfg`` (``Pretrained``/``CheckedPretrained`` with a
``prefix``: the transfer configs' backbones) do not go through here; their partial loads are
:func:`~rils_mm.models.utils.checkpoint_loading.load_checked`'s business. ``FlexibleRunner``
(the sharded configs) keeps mmengine's loading.
"""
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint

from ..compat import CheckpointKeysError
from ..models.utils.checkpoint_loading import LoadReport, load_state_dict_report

__all__ = ['install_checked_loading', 'optimizer_differences', 'LOAD_OPTION_KEYS']

# Top-level config keys read here (accepted by ``--cfg-options`` even when a config lacks them).
LOAD_OPTION_KEYS = ('load_from_strict', 'load_from_ignore_keys')


def _state_dict(checkpoint: dict, revise_keys: Sequence[tuple]) -> OrderedDict:
    """The weights of a loaded checkpoint with ``revise_keys`` applied, as mmengine's
    ``_load_checkpoint_to_model`` takes them."""
    state_dict = checkpoint.get('state_dict', checkpoint)
    metadata = getattr(state_dict, '_metadata', OrderedDict())
    for pattern, replacement in revise_keys:
        state_dict = OrderedDict((re.sub(pattern, replacement, k), v)
                                 for k, v in state_dict.items())
    state_dict._metadata = metadata
    return state_dict


def _lacks_text_tower(report: LoadReport, checkpoint_keys: Sequence[str]) -> bool:
    """Whether the model needs a text tower that the checkpoint does not have at all."""
    needs_text = any('text_encoder.' in k or 'clip.transformer.' in k for k in report.missing)
    has_text = any('text_encoder.' in k or k.startswith(('transformer.', 'text.'))
                   for k in checkpoint_keys)
    return needs_text and not has_text


def _optimizers(optim_wrapper) -> Dict[Optional[str], object]:
    """name -> torch optimizer of an ``OptimWrapper`` (name None) or ``OptimWrapperDict``."""
    if hasattr(optim_wrapper, 'optim_wrappers'):
        return {name: wrapper.optimizer for name, wrapper in optim_wrapper.optim_wrappers.items()}
    if hasattr(optim_wrapper, 'optimizer'):
        return {None: optim_wrapper.optimizer}
    return {}


def optimizer_differences(optim_wrapper, saved: dict) -> List[str]:
    """How the parameter groups of a built optimizer differ from a checkpoint's ``optimizer``
    entry (count and size of each group); empty when they agree or cannot be compared."""
    optimizers = _optimizers(optim_wrapper)
    if not optimizers or not isinstance(saved, dict):
        return []
    saved_states = {None: saved} if list(optimizers) == [None] else saved
    differences = []
    for name, optimizer in optimizers.items():
        state = saved_states.get(name)
        label = 'the optimizer' if name is None else f'optimizer {name}'
        if not isinstance(state, dict) or 'param_groups' not in state:
            differences.append(f'{label} is not in the checkpoint')
            continue
        saved_sizes = [len(group['params']) for group in state['param_groups']]
        sizes = [len(group['params']) for group in optimizer.param_groups]
        if len(saved_sizes) != len(sizes):
            differences.append(
                f'{label} has {len(saved_sizes)} parameter groups ({sum(saved_sizes)} '
                f'parameters) in the checkpoint, {len(sizes)} ({sum(sizes)} parameters) with '
                f'this config')
            continue
        differing = [i for i, (a, b) in enumerate(zip(saved_sizes, sizes)) if a != b]
        if differing:
            first = differing[0]
            more = f' (and {len(differing) - 1} more groups differ)' if len(differing) > 1 else ''
            differences.append(
                f'parameter group {first} of {label} has {saved_sizes[first]} parameters in '
                f'the checkpoint, {sizes[first]} with this config{more}')
    return differences


def install_checked_loading(runner: Runner, config: str, load_from_strict: bool = True,
                            load_from_ignore_keys: Sequence[str] = ()) -> None:
    """Make ``runner.load_checkpoint`` (used by ``load_from`` and ``--resume``) strict.

    Args:
        runner (Runner): A built mmengine ``Runner`` (or subclass); other runners are left as
            they are.
        config (str): The config file, for messages.
        load_from_strict (bool): False: only log what did not fit a ``load_from`` checkpoint.
        load_from_ignore_keys (Sequence[str]): fnmatch patterns of keys (model keys for
            missing and mismatched ones, checkpoint keys for unexpected ones) that a
            ``load_from`` checkpoint may lack, have extra or hold in another shape.
    """
    if not isinstance(runner, Runner):
        return
    if isinstance(load_from_ignore_keys, str):
        load_from_ignore_keys = [load_from_ignore_keys]
    ignore = tuple(load_from_ignore_keys or ())

    def load_checkpoint(filename: str, map_location='cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):  # noqa: B006 (mmengine's)
        # As Runner.load_checkpoint, with the load checked.
        checkpoint = _load_checkpoint(filename, map_location=map_location)
        if runner._resume:
            _check_training_state(filename, checkpoint)
        runner.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = runner.model
        # A DDP wrapper, or a test-time-augmentation model (mmseg's SegTTAModel, the -ms
        # configs) around the model the checkpoint holds: as mmengine's load_state_dict.
        if is_model_wrapper(model) or isinstance(model, BaseTTAModel):
            model = model.module
        state_dict = _state_dict(checkpoint, revise_keys)
        report = load_state_dict_report(model, state_dict, filename)
        if runner._resume:
            _check_resume(runner, config, filename, checkpoint, report)
        else:
            _check_load_from(config, filename, report, list(state_dict), load_from_strict,
                             ignore)
        runner._has_loaded = True
        runner.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    runner.load_checkpoint = load_checkpoint


def _check_training_state(filename: str, checkpoint: dict) -> None:
    """``--resume`` needs what a Runner saves besides the weights; a published or converted
    file (weights only) would fail deep in mmengine with a KeyError."""
    missing = [key for key in ('meta', 'message_hub', 'optimizer')
               if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointKeysError(
            f'--resume {filename}: it holds weights only (no {", ".join(missing)}: a published '
            f'or converted file), not the training state a run resumes from (epoch_N.pth, '
            f'iter_N.pth); to start a new run from these weights give '
            f'--cfg-options load_from={filename}')


def _check_load_from(config: str, filename: str, report: LoadReport,
                     checkpoint_keys: List[str], strict: bool, ignore: Sequence[str]) -> None:
    problems = report.problems(ignore)
    if not problems.has_differences:
        if report.has_differences:
            print_log(f'load_from {filename}: allowed by load_from_ignore_keys={list(ignore)}: '
                      f'{report.describe()}', logger='current', level=30)
        return
    if not strict:
        print_log(f'load_from {filename} does not fit the model of {config} '
                  f'(load_from_strict=False): {problems.describe()}', logger='current',
                  level=30)
        return
    if _lacks_text_tower(problems, checkpoint_keys):
        raise CheckpointKeysError(
            f'checkpoint {filename} has no text tower (no text_encoder.* weights): it was saved '
            f'by an image-only method (MAE, MILAN, a classifier), and {config} needs an '
            f'image-text model (RILS, CLIP, ...) for its text side; {problems.describe()}')
    raise CheckpointKeysError(
        f'checkpoint {filename} does not fit the model of {config}: {problems.describe()}. If '
        f'parts are meant to differ (a classifier head replaced for fine-tuning), allow them '
        f'with --cfg-options "load_from_ignore_keys=[\'head.*\']" (fnmatch patterns), or give '
        f'load_from_strict=False to only log the differences')


def _check_resume(runner: Runner, config: str, filename: str, checkpoint: dict,
                  report: LoadReport) -> None:
    differences = [report.describe()] if report.has_differences else []
    optim_wrapper = runner.optim_wrapper
    if 'optimizer' in checkpoint and not isinstance(optim_wrapper, dict):
        differences += optimizer_differences(optim_wrapper, checkpoint['optimizer'])
    if differences:
        raise CheckpointKeysError(
            f'--resume: checkpoint {filename} was saved by another configuration than '
            f'{config}: {"; ".join(differences)}. Resume with the configuration the run was '
            f'started with ({_saved_config(runner.work_dir, checkpoint)}), or start a new run '
            f'in another --work-dir')


def _saved_config(work_dir: str, checkpoint: dict) -> str:
    """Where the configuration of the run that saved ``checkpoint`` can be found."""
    meta = checkpoint.get('meta') or {}
    timestamp = '_'.join(str(meta.get('experiment_name', '')).split('_')[-2:])
    path = osp.join(work_dir, timestamp, 'vis_data', 'config.py')
    if timestamp and osp.isfile(path):
        return f'that run kept it as {path}'
    return "the checkpoint holds its text under meta['cfg']"
