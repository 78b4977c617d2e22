"""Weights-only checkpoint loading on every path mmengine offers, with one-line errors.

torch >= 2.6 loads with ``weights_only=True`` by default, but mmengine 0.10's URL loaders go
through ``torch.hub.load_state_dict_from_url``, which unpickles with ``weights_only=False``:
a checkpoint fetched by ``https://``, ``torchvision://``, ``open-mmlab://`` or ``mmcls://`` (or
found under that name in the hub cache) could run code. Here every scheme of mmengine's
``CheckpointLoader`` is registered anew (so ``load_from``, ``--resume``, ``init_cfg``
``Pretrained``, ``load_checkpoint`` and our converters all use it), each one downloading or
reading the file as before and then unpickling it with :func:`weights_only_load` (or, for a
safetensors file, reading its tensors: :mod:`.safetensors_weights`).

What is allowed besides tensors and containers: exactly the types mmengine's Runner writes
into checkpoints (``HistoryBuffer`` and the numpy array/scalar/dtype types of its message hub).
A ``HistoryBuffer`` pickles its statistics functions as ``getattr(HistoryBuffer, 'mean')``;
``getattr`` is allowed only in a form restricted to those names.
"""
import io
import os
import os.path as osp
import pickle
import re
import struct
import zipfile
from typing import IO, Optional, Union
from urllib.parse import urlparse

import numpy as np
import torch

__all__ = [
    'CheckpointLoadError', 'UnsafeCheckpointError', 'DamagedCheckpointError',
    'MissingCheckpointError', 'CheckpointKeysError', 'weights_only_load', 'load_from_url',
    'mmengine_checkpoint_safe_globals', 'install_weights_only_loaders', 'URL_PREFIXES'
]

# Checkpoint locations that mmengine's ``CheckpointLoader`` resolves by scheme (each scheme's
# loader is replaced in :func:`install_weights_only_loaders`); anything else is a local path.
URL_PREFIXES = ('http://', 'https://', 'torchvision://', 'modelzoo://', 'open-mmlab://',
                'openmmlab://', 'mmcls://', 's3://', 'petrel://', 'pavi://')

# Statistics every HistoryBuffer has; mmengine fills its registry with them lazily (in the
# first ``HistoryBuffer.__init__``), so a fresh process must not depend on that registry.
HISTORY_BUFFER_STATISTICS = ('mean', 'max', 'min', 'current')


class CheckpointLoadError(RuntimeError):
    """A checkpoint could not be loaded; the message names the file and the reason."""


class UnsafeCheckpointError(CheckpointLoadError, pickle.UnpicklingError):
    """A checkpoint holds a Python object that weights-only loading does not build."""


class DamagedCheckpointError(CheckpointLoadError):
    """A checkpoint file is truncated, empty or not a PyTorch file at all."""


class MissingCheckpointError(CheckpointLoadError, FileNotFoundError):
    """A checkpoint file named in a config or on the command line does not exist."""


class CheckpointKeysError(CheckpointLoadError):
    """A checkpoint lacks weights the module needs (or matches none of them)."""


def mmengine_checkpoint_safe_globals() -> list:
    """The non-tensor types found in checkpoints of mmengine 0.10's Runner (and the numpy
    generator state that :class:`~rils_mm.engine.hooks.RandomStateHook` adds: a uint32
    array)."""
    from mmengine.logging.history_buffer import HistoryBuffer
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    dtype_classes = [type(np.dtype(t)) for t in
                     ('float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8',
                      'uint64', 'uint32', 'uint16', 'uint8', 'bool')]

    def history_buffer_getattr(obj, name):
        """``getattr`` limited to HistoryBuffer's statistics functions."""
        allowed = set(HISTORY_BUFFER_STATISTICS) | set(HistoryBuffer._statistics_methods)
        if obj is HistoryBuffer and name in allowed:
            return getattr(obj, name)
        raise pickle.UnpicklingError(
            f'getattr({obj!r}, {name!r}) is not allowed in a checkpoint')

    return [HistoryBuffer, multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
            *dtype_classes, (history_buffer_getattr, 'builtins.getattr')]


def _refusal_reason(err: BaseException) -> str:
    """The one informative sentence of torch's weights-only refusal."""
    text = str(err)
    match = re.search(r'GLOBAL (\S+)', text)
    if match:
        return f'it holds the Python object {match.group(1).rstrip(".")}'
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if 'not allowed' in line or 'Unsupported' in line or 'WeightsUnpickler error' in line:
            reason = line.split('WeightsUnpickler error:')[-1].strip()
            # torch sometimes puts the reason on the line after the marker.
            return reason or (lines[index + 1] if index + 1 < len(lines) else line)
    boilerplate = ('Weights only load failed', 'Check the documentation', 'Please file an issue')
    informative = [line for line in lines if not line.startswith(boilerplate)]
    return (informative or lines or [type(err).__name__])[0]


def weights_only_load(source: Union[str, IO[bytes]],
                      map_location=None,
                      name: Optional[str] = None):
    """``torch.load(source, weights_only=True)`` whose failures are one line naming the file.

    Args:
        source (str | file): A path or a binary file object.
        map_location: As for :func:`torch.load`.
        name (str, optional): How to call the file in messages (default: ``source``).

    A safetensors file (recognised by its header, whatever its name) is read by
    :func:`~.safetensors_weights.safetensors_load` as ``dict(state_dict=..., meta=...)``.

    Returns:
        The loaded object (dicts, lists, tensors, numbers, strings, allowed mmengine types).

    Raises:
        UnsafeCheckpointError: The file holds another Python object, or is a TorchScript
            archive (see :mod:`.torchscript_weights`); nothing was built or run.
        DamagedCheckpointError: The file is empty, truncated or not a PyTorch checkpoint.
    """
    name = name or str(source)
    if isinstance(source, str) and osp.isfile(source) and osp.getsize(source) == 0:
        raise DamagedCheckpointError(f'checkpoint {name} is empty (0 bytes)')
    from .safetensors_weights import is_safetensors, safetensors_load
    if is_safetensors(source):  # no pickle at all: tensors and a JSON header
        return safetensors_load(source, map_location, name=name)
    from .torchscript_weights import is_torchscript_archive
    if is_torchscript_archive(source):  # torch.load would refuse it, after a misleading warning
        raise UnsafeCheckpointError(
            f'refused to load {name}: it is a TorchScript archive (the format of OpenAI\'s '
            f'CLIP releases), not a weights checkpoint, and loading it as a model runs code '
            f'from the file; give it to an OpenCLIPModel as its `pretrained` file (e.g. '
            f'--cfg-options model.model.pretrained={name} with a configs/benchmarks/*/'
            f'openclip_* config), whose reader takes only its weights, or convert it with '
            f'tools/model_converters/open_clip_to_rils.py; nothing from the file was run')
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f'refused to load {name}: {_refusal_reason(err)}, which weights-only loading does '
            f'not build (only tensors, numbers, strings, containers and the types of mmengine '
            f'checkpoints are); nothing from the file was run') from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError,
            KeyError, TypeError, AttributeError, struct.error, OverflowError,
            RecursionError) as err:
        # A file in torch's legacy (non-zip) format that is not a pickle makes torch's
        # weights-only unpickler fail with whatever its stack or memo gives (IndexError,
        # KeyError, struct.error, ...).
        reason = ' '.join(str(err).split())[:200] or type(err).__name__
        raise DamagedCheckpointError(
            f'checkpoint {name} is damaged or not a PyTorch checkpoint '
            f'(truncated by an interrupted copy or save?): {reason}') from None


def load_from_url(url: str, map_location=None, model_dir: Optional[str] = None,
                  progress: bool = False):
    """Download ``url`` into the torch hub cache (unless cached) and load it weights-only.

    The cache file is the one ``torch.hub.load_state_dict_from_url`` uses
    (``<hub dir>/checkpoints/<file name of the URL>``), so existing caches are reused. In a
    distributed run rank 0 downloads first and the others wait, as in mmengine.
    """
    from mmengine.dist import barrier, get_dist_info
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    cached = osp.join(model_dir, osp.basename(urlparse(url).path))
    rank, world_size = get_dist_info()

    def download():
        if not osp.isfile(cached):
            os.makedirs(model_dir, exist_ok=True)
            # download_url_to_file writes a temporary file and moves it into place.
            torch.hub.download_url_to_file(url, cached, progress=progress)

    if rank == 0:
        download()
    if world_size > 1:
        barrier()
        if rank > 0:
            download()
    return weights_only_load(cached, map_location, name=f'{url} (cached as {cached})')


def _load_from_local(filename, map_location=None):
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise MissingCheckpointError(f'checkpoint file not found: {filename}')
    return weights_only_load(filename, map_location)


def _load_from_http(filename, map_location=None, model_dir=None, progress=False):
    return load_from_url(filename, map_location, model_dir=model_dir, progress=progress)


def _load_from_torchvision(filename, map_location=None):
    from mmengine.runner.checkpoint import get_torchvision_models
    name = filename.split('://', 1)[1]
    return load_from_url(get_torchvision_models()[name], map_location)


def _load_from_openmmlab(filename, map_location=None):
    from mmengine.runner.checkpoint import (_get_mmengine_home, get_deprecated_model_names,
                                            get_external_models)
    name = filename.split('://', 1)[1]
    name = get_deprecated_model_names().get(name, name)
    url = get_external_models()[name]
    if url.startswith(('http://', 'https://')):
        return load_from_url(url, map_location)
    return _load_from_local(osp.join(_get_mmengine_home(), url), map_location)


def _load_from_mmcls(filename, map_location=None):
    from mmengine.runner.checkpoint import _process_mmcls_checkpoint, get_mmcls_models
    checkpoint = load_from_url(get_mmcls_models()[filename[len('mmcls://'):]], map_location)
    return _process_mmcls_checkpoint(checkpoint)


def _load_from_ceph(filename, map_location=None, backend='petrel'):
    from mmengine.fileio import get_file_backend
    data = get_file_backend(filename, backend_args=dict(backend=backend)).get(filename)
    return weights_only_load(io.BytesIO(data), map_location, name=filename)


def _refuse_pavi(filename, map_location=None):
    raise CheckpointLoadError(f'{filename}: pavi:// checkpoints are not supported; download '
                              f'the file and give its local path')


def install_weights_only_loaders() -> None:
    """Allow mmengine's checkpoint types and replace every ``CheckpointLoader`` scheme."""
    from mmengine.runner.checkpoint import CheckpointLoader
    torch.serialization.add_safe_globals(mmengine_checkpoint_safe_globals())
    for prefixes, loader in [
        ('', _load_from_local),
        (('http://', 'https://'), _load_from_http),
        (('modelzoo://', 'torchvision://'), _load_from_torchvision),
        (('open-mmlab://', 'openmmlab://'), _load_from_openmmlab),
        ('mmcls://', _load_from_mmcls),
        ([r'(\S+\:)?s3://', r'(\S+\:)?petrel://'], _load_from_ceph),
        ('pavi://', _refuse_pavi),
    ]:
        CheckpointLoader.register_scheme(prefixes, loader, force=True)
    # Code that calls mmengine's URL loader directly gets the weights-only one too.
    import mmengine.runner.checkpoint as mmengine_checkpoint
    import mmengine.utils.dl_utils as dl_utils
    mmengine_checkpoint.load_url = dl_utils.load_url = _load_url


def _load_url(url, model_dir=None, map_location=None, progress=False, **kwargs):
    """Stand-in for ``mmengine.utils.dl_utils.load_url`` (torch.hub's, weights_only=False)."""
    return load_from_url(url, map_location, model_dir=model_dir, progress=progress)
