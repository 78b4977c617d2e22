"""Library side of ``tools/model_converters/publish_model.py``: a checkpoint made fit to share.

mmpretrain's ``tools/model_converters/publish_model.py`` convention: the optimizer, the
schedulers, the message hub and every other piece of training state are left out, and the
file's name ends with the first 8 hex digits of its sha256 (``rils_demo-1a2b3c4d``). Here the
weights are written as safetensors (no pickle: loading the file runs nothing), with a JSON
file of the same name beside it, and the same metadata inside the safetensors header (where
:func:`rils_mm.compat.safetensors_load` gives it back as the checkpoint's ``meta``):

- ``config_name``: the run's config name (its experiment name without the time stamp; not
  ``config``, which mmengine's resume would run as config text);
- ``model_type`` and ``method`` (the method table's name for the model's class);
- ``epoch``, ``iter``: where the run was when the checkpoint was saved;
- ``data``: the training set (dataset type, ``data_root``/``ann_file``);
- ``validation``: the last validation's figures the message hub records (zero-shot
  ``accuracy/top1`` ..., with the validation set), when the run validated;
- ``num_tensors``, ``num_parameters``.

The JSON beside also has the file name, its sha256 and ``Weights``/``Results`` entries for a
``metafile.yml`` (mmpretrain's model-index schema).
"""
import hashlib
import json
import os.path as osp
import re
from typing import Dict, Optional

import torch

from ..compat import atomic_write_bytes, safetensors_bytes, weights_only_load
from ..compat.safetensors_weights import SAFETENSORS_SUFFIX
from ..utils.config_literals import read_config_text
from .converters import ConversionError

__all__ = ['published_name', 'checkpoint_metadata', 'publish_checkpoint']

# Fields of an already published file's metadata that a new publication keeps.
_CARRIED = ('config_name', 'model_type', 'method', 'epoch', 'iter', 'data', 'validation')
# Scalars of the message hub that time the validation rather than measure the model.
_TIMING = ('time', 'data_time')


def published_name(out_file: str, sha256: str) -> str:
    """``OUT_FILE`` with its ``.safetensors``/``.pth`` suffix replaced by
    ``-<first 8 hex digits of sha256>.safetensors``."""
    stem = re.sub(r'\.(safetensors|pth|pt)$', '', out_file)
    return f'{stem}-{sha256[:8]}{SAFETENSORS_SUFFIX}'


def _method_of(model_type: str) -> Optional[str]:
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS

    from ..utils.methods import load_method_table
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        cls = MODELS.get(model_type)
    method = load_method_table().method_of(cls) if cls is not None else None
    return method.name if method is not None else None


def _dataset(dataloader) -> Optional[dict]:
    dataset = dataloader.get('dataset') if isinstance(dataloader, dict) else None
    dataset = dataset if isinstance(dataset, dict) else {}
    described = {key: dataset[key] for key in ('type', 'data_root', 'ann_file', 'shards')
                 if isinstance(dataset.get(key), (str, list))}
    return described or None


def _validation(message_hub: dict, cfg) -> Optional[dict]:
    scalars = (message_hub or {}).get('log_scalars') or {}
    figures = {}
    for key, buffer in scalars.items():
        name = key[len('val/'):] if key.startswith('val/') else None
        if name and name not in _TIMING and hasattr(buffer, 'current'):
            figures[name] = round(float(buffer.current()), 4)
    if not figures:
        return None
    return dict(metrics=figures,
                dataset=_dataset(cfg.get('val_dataloader')) if cfg is not None else None)


def checkpoint_metadata(checkpoint: dict, state_dict: Dict[str, torch.Tensor]) -> dict:
    """What :mod:`this module <rils_mm.tools.publish>` records of a Runner checkpoint (fields
    the checkpoint does not have are left out)."""
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
    cfg = read_config_text(meta['cfg']) if isinstance(meta.get('cfg'), str) else None
    found = {key: meta[key] for key in _CARRIED if key in meta}  # a published file's
    found.update(num_tensors=len(state_dict),
                 num_parameters=int(sum(v.numel() for v in state_dict.values())))
    if isinstance(meta.get('experiment_name'), str):
        found['config_name'] = re.sub(r'_\d{8}_\d{6}$', '', meta['experiment_name'])
    for key in ('epoch', 'iter'):
        if isinstance(meta.get(key), int):
            found[key] = meta[key]
    if cfg is not None and isinstance(cfg.get('model'), dict):
        model_type = str(cfg['model'].get('type', '')).split('.')[-1]
        found['model_type'] = model_type
        method = _method_of(model_type) if model_type else None
        if method:
            found['method'] = method
        data = _dataset(cfg.get('train_dataloader'))
        if data:
            found['data'] = data
    validation = _validation(checkpoint.get('message_hub'), cfg)
    if validation:
        found['validation'] = validation
    return found


def _metafile_entries(path: str, metadata: dict) -> dict:
    """``Weights`` and ``Results`` for a ``metafile.yml`` model (mmpretrain's schema)."""
    entries = dict(Weights=path)
    validation = metadata.get('validation')
    if validation:
        dataset = (validation.get('dataset') or {}).get('ann_file') or 'validation set'
        entries['Results'] = [dict(Task='Zero-shot Image Classification', Dataset=dataset,
                                   Metrics=validation['metrics'])]
    return entries


def publish_checkpoint(in_file: str, out_file: str) -> dict:
    """Write ``in_file``'s weights as ``<out_file stem>-<sha256[:8]>.safetensors`` and its
    metadata as the ``.json`` of the same name.

    Args:
        in_file (str): A checkpoint anything of ours loads (a Runner ``.pth``, a bare state
            dict, a safetensors file); read weights-only.
        out_file (str): The name to publish under; a ``.safetensors``/``.pth`` suffix is
            replaced.

    Returns:
        dict: The JSON written: ``file``, ``sha256``, ``metadata`` and ``metafile``
        (``Weights``/``Results``).

    Raises:
        CheckpointLoadError: ``in_file`` is missing, damaged or unsafe (one line).
        ConversionError: ``in_file`` holds no state dict of tensors.
    """
    from ..models.utils.checkpoint_loading import extract_state_dict
    checkpoint = weights_only_load(osp.expanduser(in_file), 'cpu') if osp.isfile(
        osp.expanduser(in_file)) else None
    if checkpoint is None:
        from ..compat import MissingCheckpointError
        raise MissingCheckpointError(f'checkpoint file not found: {in_file}')
    try:
        state_dict = extract_state_dict(checkpoint)
    except TypeError as err:
        raise ConversionError(f'{in_file}: {err}') from None
    if not state_dict:
        raise ConversionError(f'{in_file} holds no weights (an empty state dict)')
    checkpoint = checkpoint if isinstance(checkpoint, dict) else {}
    metadata = checkpoint_metadata(checkpoint, state_dict)
    try:
        data = safetensors_bytes(state_dict, metadata)
    except TypeError as err:
        raise ConversionError(f'{in_file}: {err}') from None
    sha256 = hashlib.sha256(data).hexdigest()
    path = published_name(out_file, sha256)
    atomic_write_bytes(data, path)
    record = dict(file=osp.basename(path), sha256=sha256, metadata=metadata,
                  metafile=_metafile_entries(path, metadata))
    atomic_write_bytes((json.dumps(record, indent=2, sort_keys=True) + '\n').encode(),
                       path[:-len(SAFETENSORS_SUFFIX)] + '.json')
    return record
