"""Load part of a checkpoint into a module, report what matched, and fail loudly.

mmengine's ``Pretrained`` initializer (and ``load_checkpoint``) load with ``strict=False`` and
only log a warning for unmatched keys, so a wrong ``prefix`` silently leaves the backbone at its
random initialisation. :func:`load_checked` returns a :class:`LoadReport` with the matched,
missing and unexpected keys and raises when keys the module needs are missing. The registered
initializer ``CheckedPretrained`` does the same from a config::

    backbone=dict(
        type='VisionTransformer', ...,
        init_cfg=dict(type='CheckedPretrained', checkpoint='work_dirs/rils/epoch_25.pth',
                      prefix='backbone.'))

Whole-model loads (``tools/train.py``/``test.py``'s ``load_from`` and ``--resume``) go through
:func:`load_state_dict_report`, which loads as torch does and returns every missing, unexpected
and differently shaped key; :meth:`LoadReport.problems` and :meth:`LoadReport.describe` turn
that into one line. :func:`describe_torch_load_error` does the same for torch's multi-line
``Error(s) in loading state_dict`` (open_clip's strict load raises it).

Nothing here depends on mmpretrain, so mmdet and mmseg backbones use it the same way.
"""
import fnmatch
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from mmengine.model.weight_init import update_init_info
from mmengine.registry import WEIGHT_INITIALIZERS
from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn

from ...compat import CheckpointKeysError

__all__ = ['LoadReport', 'load_checked', 'extract_state_dict', 'CheckedPretrainedInit',
           'checked_init_cfg', 'loads_pretrained', 'load_state_dict_report',
           'describe_torch_load_error', 'TORCH_LOAD_ERROR']

# The first line of torch's ``load_state_dict`` error (shape mismatches, strict key checks).
TORCH_LOAD_ERROR = 'Error(s) in loading state_dict'
_SIZE_MISMATCH = re.compile(r'size mismatch for (\S+): copying a param with shape '
                            r'torch\.Size\(\[([^\]]*)\]\) from checkpoint, the shape in current '
                            r'model is torch\.Size\(\[([^\]]*)\]\)')


@dataclass
class LoadReport:
    """What a checked load did.

    Attributes:
        checkpoint (str): The checkpoint path or URL.
        prefix (str): The key prefix that was selected and stripped.
        matched (list[str]): Module keys that received a value from the checkpoint.
        missing (list[str]): Module keys the checkpoint did not provide.
        unexpected (list[str]): Checkpoint keys (after stripping ``prefix``) the module has no
            place for.
        ignored_missing (list[str]): The subset of ``missing`` allowed by ``ignore_missing``.
        mismatched (list[tuple[str, str, str]]): ``(key, shape in the checkpoint, shape in the
            module)`` of the weights that were not loaded because their shapes differ (filled by
            :func:`load_state_dict_report`).
        errors (list[str]): Other errors torch reported for the load, one line each.
    """
    checkpoint: str
    prefix: str
    matched: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    ignored_missing: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, str, str]] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)

    def problems(self, allowed: Sequence[str] = ()) -> 'LoadReport':
        """The missing, unexpected and mismatched keys not matched by an ``allowed`` fnmatch
        pattern (e.g. ``'head.*'``), as a report of their own."""

        def kept(key):
            return not any(fnmatch.fnmatchcase(key, pattern) for pattern in allowed)

        return LoadReport(
            checkpoint=self.checkpoint, prefix=self.prefix, matched=self.matched,
            missing=[k for k in self.missing if kept(k)],
            unexpected=[k for k in self.unexpected if kept(k)],
            mismatched=[m for m in self.mismatched if kept(m[0])], errors=list(self.errors))

    @property
    def has_differences(self) -> bool:
        """Whether anything did not load (missing, unexpected, mismatched, other errors)."""
        return bool(self.missing or self.unexpected or self.mismatched or self.errors)

    def describe(self, max_names: int = 4) -> str:
        """One line: each kind of difference with its count and its first ``max_names`` keys,
        e.g. ``2 weights differ in shape (a.weight: [16, 32] in the checkpoint, [8, 32] in the
        model; ...)``."""

        def names(items):
            more = f'; ... {len(items) - max_names} more' if len(items) > max_names else ''
            return '; '.join(items[:max_names]) + more

        def count(items, one, many):
            return f'{len(items)} {one if len(items) == 1 else many}'

        parts = []
        if self.mismatched:
            parts.append(count(self.mismatched, 'weight differs', 'weights differ')
                         + ' in shape ('
                         + names([f'{key}: [{ckpt}] in the checkpoint, [{model}] in the model'
                                  for key, ckpt, model in self.mismatched]) + ')')
        if self.missing:
            parts.append(count(self.missing, 'weight of the model is', 'weights of the model are')
                         + f' missing from the checkpoint ({names(self.missing)})')
        if self.unexpected:
            parts.append(count(self.unexpected, 'weight of the checkpoint has',
                               'weights of the checkpoint have')
                         + f' no place in the model ({names(self.unexpected)})')
        parts += self.errors[:max_names]
        return ', '.join(parts) if parts else f'all {len(self.matched)} weights match'

    def summary(self, max_names: int = 20) -> str:
        """One readable paragraph: counts, then the names (up to ``max_names`` of each)."""

        def names(keys):
            shown = ', '.join(keys[:max_names])
            more = f', ... ({len(keys) - max_names} more)' if len(keys) > max_names else ''
            return shown + more

        lines = [f'Loaded "{self.prefix}*" from {self.checkpoint}: '
                 f'{len(self.matched)} matched, {len(self.missing)} missing, '
                 f'{len(self.unexpected)} unexpected.']
        if self.missing:
            lines.append(f'  missing: {names(self.missing)}')
        if self.unexpected:
            lines.append(f'  unexpected: {names(self.unexpected)}')
        return '\n'.join(lines)


def extract_state_dict(checkpoint: Union[dict, 'torch.nn.Module'],
                       prefix: str = '') -> Dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint whose keys start with ``prefix``, prefix removed.

    Accepts a Runner checkpoint (``state_dict`` key), an open_clip/timm style dict (``model`` or
    ``state_dict``) or a bare state dict; a DDP ``module.`` prefix is dropped first.

    Args:
        checkpoint (dict): The object returned by ``torch.load``/``CheckpointLoader``.
        prefix (str): Keep only keys starting with it (e.g. ``'backbone.'``). ``''`` keeps all.

    Returns:
        dict[str, Tensor]: The selected sub state dict.
    """
    state_dict = checkpoint
    for key in ('state_dict', 'model', 'module'):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    if not isinstance(state_dict, dict):
        raise TypeError(f'Cannot find a state dict in a checkpoint of type {type(checkpoint)}')
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_checked(module: nn.Module,
                 checkpoint: str,
                 prefix: str = '',
                 allow_missing: bool = False,
                 ignore_missing: Sequence[str] = (),
                 map_location: str = 'cpu',
                 logger: Optional[str] = 'current') -> LoadReport:
    """Load ``prefix``-ed weights of a checkpoint into ``module`` and check the result.

    Shape mismatches always raise (torch does). Missing keys raise unless ``allow_missing`` or
    they match one of the ``ignore_missing`` patterns (fnmatch, e.g. ``'ln2.*'`` for a norm the
    pretraining did not have). Unexpected keys are reported, never fatal: a pretraining
    checkpoint routinely holds parts (decoder, projection) that the downstream module lacks.

    Args:
        module (nn.Module): The module to fill, e.g. a backbone.
        checkpoint (str): Path or URL, anything mmengine's ``CheckpointLoader`` reads.
        prefix (str): Sub-module prefix in the checkpoint, e.g. ``'backbone.'``.
        allow_missing (bool): Report missing keys instead of raising. Defaults to False.
        ignore_missing (Sequence[str]): fnmatch patterns of module keys that may be missing.
        map_location (str): Passed to the loader. Defaults to ``'cpu'``.
        logger (str, optional): Where the report goes (``print_log``). ``None`` prints nothing.

    Returns:
        LoadReport: Matched, missing and unexpected key names.

    Raises:
        CheckpointKeysError: (a ``RuntimeError``) If nothing matched, or keys are missing that
            are neither allowed nor ignored; the message lists them and names the checkpoint.
    """
    loaded = CheckpointLoader.load_checkpoint(checkpoint, map_location=map_location)
    state_dict = extract_state_dict(loaded, prefix)
    if not state_dict:
        raise CheckpointKeysError(
            f'No key of {checkpoint} starts with prefix "{prefix}"; first keys there: '
            f'{list(extract_state_dict(loaded))[:10]}')

    # torch's own bookkeeping, so that load-time hooks (e.g. mmpretrain's ViT pos_embed
    # resizing) and renamed buffers are accounted for exactly as the load saw them.
    result = module.load_state_dict(state_dict, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    expected = set(module.state_dict().keys())
    report = LoadReport(
        checkpoint=str(checkpoint),
        prefix=prefix,
        matched=sorted(k for k in state_dict if k in expected and k not in unexpected),
        missing=missing,
        unexpected=unexpected,
        ignored_missing=[k for k in missing
                         if any(fnmatch.fnmatchcase(k, p) for p in ignore_missing)])
    if logger is not None:
        print_log(report.summary(), logger=logger)

    if not report.matched:
        raise CheckpointKeysError(f'No weights were loaded from {checkpoint} (prefix "{prefix}").\n'
                           f'{report.summary()}')
    fatal = [k for k in missing if k not in report.ignored_missing]
    if fatal and not allow_missing:
        raise CheckpointKeysError(
            f'{len(fatal)} keys of {type(module).__name__} are missing from {checkpoint} '
            f'(prefix "{prefix}"); pass allow_missing=True or ignore_missing patterns if this is '
            f'intended. Missing: {fatal}')
    return report


def load_state_dict_report(module: nn.Module, state_dict: Mapping[str, torch.Tensor],
                           checkpoint: str = '') -> LoadReport:
    """Load ``state_dict`` into ``module`` as ``module.load_state_dict(strict=False)`` does,
    and report every key that did not load instead of logging or raising.

    The walk is torch's own (``_load_from_state_dict`` per module, then the load post-hooks),
    so load-time hooks (mmpretrain's ViT ``pos_embed`` resizing, our wrappers' key renaming)
    act as in any load; weights whose shapes differ are left as they were. A post-hook that
    raises :class:`CheckpointKeysError` (the zero-shot wrappers' own check) is raised only
    when the report itself finds nothing wrong: the report lists more.

    Args:
        module (nn.Module): The model to fill.
        state_dict (Mapping[str, Tensor]): Keys as in ``module.state_dict()`` (before the
            module's own load-time renaming).
        checkpoint (str): How to name the source in the report.

    Returns:
        LoadReport: ``matched``, ``missing``, ``unexpected``, ``mismatched`` (key, shape in the
        checkpoint, shape in the module) and other ``errors``.
    """
    metadata = getattr(state_dict, '_metadata', None)
    state_dict = OrderedDict(state_dict)
    if metadata is not None:
        state_dict._metadata = metadata
    missing, unexpected, errors, hook_errors = [], [], [], []

    def load(sub: nn.Module, local: dict, prefix: str = '') -> None:
        local_metadata = {} if metadata is None else metadata.get(prefix[:-1], {})
        sub._load_from_state_dict(local, prefix, local_metadata, True, missing, unexpected,
                                  errors)
        for name, child in sub._modules.items():
            if child is not None:
                child_prefix = f'{prefix}{name}.'
                load(child, {k: v for k, v in local.items() if k.startswith(child_prefix)},
                     child_prefix)
        keys = nn.modules.module._IncompatibleKeys(missing, unexpected)
        for hook in sub._load_state_dict_post_hooks.values():
            try:
                hook(sub, keys)
            except CheckpointKeysError as error:
                hook_errors.append(error)

    load(module, state_dict)
    report = LoadReport(checkpoint=str(checkpoint), prefix='',
                        missing=[k for k in missing if not k.endswith('num_batches_tracked')],
                        unexpected=list(unexpected))
    for message in errors:
        mismatch = _SIZE_MISMATCH.search(message)
        if mismatch:
            report.mismatched.append(mismatch.groups())
        else:
            report.errors.append(' '.join(message.split()))
    not_loaded = set(report.missing) | {key for key, _, _ in report.mismatched}
    report.matched = [k for k in module.state_dict() if k not in not_loaded]
    if hook_errors and not report.has_differences:
        raise hook_errors[0]
    return report


def describe_torch_load_error(error: BaseException, max_names: int = 4) -> Optional[str]:
    """torch's multi-line ``Error(s) in loading state_dict for X`` as one line (counts and the
    first ``max_names`` keys of each kind), or None when ``error`` is another error."""
    text = str(error)
    if TORCH_LOAD_ERROR not in text:
        return None
    report = LoadReport(checkpoint='', prefix='')
    for kind, target in (('Missing key(s)', report.missing),
                         ('Unexpected key(s)', report.unexpected)):
        found = re.search(re.escape(kind) + r' in state_dict: (.*?)\.\s*(?:\n|$)', text)
        if found:
            target.extend(re.findall(r'"([^"]+)"', found.group(1)))
    report.mismatched = [m.groups() for m in _SIZE_MISMATCH.finditer(text)]
    if not report.has_differences:
        lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
        report.errors = [' '.join(lines)[:300] or text.splitlines()[0]]
    return report.describe(max_names)


@WEIGHT_INITIALIZERS.register_module(name='CheckedPretrained')
class CheckedPretrainedInit:
    """Weight initializer: :func:`load_checked` from a config.

    mmengine applies initializers of any type other than ``'Pretrained'`` *before* the
    children's ``init_weights`` and before the module's own code after ``super().init_weights()``
    (mmpretrain's ``VisionTransformer`` re-draws ``pos_embed`` unless its ``init_cfg`` type is
    ``'Pretrained'``). So after loading, this initializer marks every sub-module as initialised
    and records ``init_cfg['type'] = 'Pretrained'`` on the module, which keeps the loaded values.
    A module whose ``init_weights`` re-initialises unconditionally (mmpretrain's ``MAEViT``)
    still overwrites them: such a backbone must skip its re-init when its ``init_cfg`` is
    ``'Pretrained'`` (the load itself is unaffected and still reported).

    Args:
        checkpoint (str): Path or URL of the checkpoint.
        prefix (str): Sub-module prefix in the checkpoint, e.g. ``'backbone.'``.
        allow_missing (bool): Only report missing keys. Defaults to False.
        ignore_missing (Sequence[str]): fnmatch patterns of keys that may be missing.
        map_location (str): Defaults to ``'cpu'``.
    """

    def __init__(self,
                 checkpoint: str,
                 prefix: str = '',
                 allow_missing: bool = False,
                 ignore_missing: Sequence[str] = (),
                 map_location: str = 'cpu'):
        if not checkpoint:
            raise ValueError('CheckedPretrained needs a checkpoint path (got an empty one); set '
                             'it in the config, e.g. --cfg-options '
                             'model.backbone.init_cfg.checkpoint=PATH')
        self.checkpoint = checkpoint
        self.prefix = prefix
        self.allow_missing = allow_missing
        self.ignore_missing = tuple(ignore_missing)
        self.map_location = map_location
        self.report: Optional[LoadReport] = None

    def __call__(self, module: nn.Module) -> None:
        self.report = load_checked(
            module,
            self.checkpoint,
            prefix=self.prefix,
            allow_missing=self.allow_missing,
            ignore_missing=self.ignore_missing,
            map_location=self.map_location)
        # Keep the loaded values: children are skipped by BaseModule.init_weights when already
        # initialised, and the module's own post-init checks look for type 'Pretrained'.
        for sub in module.modules():
            if sub is not module and hasattr(sub, '_is_init'):
                sub._is_init = True
        init_cfg = getattr(module, 'init_cfg', None)
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'CheckedPretrained':
            module.init_cfg = dict(init_cfg, type='Pretrained')
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())

    def _get_init_info(self) -> str:
        return (f'{type(self).__name__}: {len(self.report.matched)} tensors loaded from '
                f'{self.checkpoint} (prefix "{self.prefix}")')


def checked_init_cfg(init_cfg: Optional[Union[dict, list]]) -> Optional[Union[dict, list]]:
    """``init_cfg`` with mmengine's ``Pretrained`` loads replaced by ``CheckedPretrained``.

    mmengine's ``Pretrained`` loads with ``strict=False`` and only logs what did not match, so a
    tower configured to start from a checkpoint can silently start from random weights. The
    towers of this package route such entries through :func:`load_checked` instead (same
    ``checkpoint``, ``prefix`` and ``map_location`` arguments).

    Args:
        init_cfg (dict | list, optional): A module's ``init_cfg``.

    Returns:
        dict | list | None: The same configuration, ``type='Pretrained'`` entries retyped.
    """
    if isinstance(init_cfg, dict):
        if init_cfg.get('type') == 'Pretrained':
            return dict(init_cfg, type='CheckedPretrained')
        return init_cfg
    if isinstance(init_cfg, (list, tuple)):
        return [checked_init_cfg(cfg) for cfg in init_cfg]
    return init_cfg


def loads_pretrained(init_cfg: Optional[Union[dict, list]]) -> bool:
    """Whether ``init_cfg`` (a dict or a list of dicts) loads weights from a checkpoint."""
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(cfg, dict) and cfg.get('type') in ('Pretrained', 'CheckedPretrained')
               for cfg in cfgs)
