"""Checkpoints in the safetensors format, read wherever a ``.pth`` is read.

A safetensors file (https://github.com/huggingface/safetensors) is a JSON header and raw tensor
bytes: reading it builds tensors and nothing else, so a published model needs no pickle at all.
:func:`~.safe_loading.weights_only_load`, behind every scheme of mmengine's
``CheckpointLoader`` (``load_from``, ``tools/test.py``'s checkpoint, ``init_cfg``
``Pretrained``/``CheckedPretrained``, ``load_checkpoint``, ``get_model``, our converters),
recognises the format by its header, whatever the file's name, and gives what a Runner
checkpoint would: ``dict(state_dict=..., meta=...)``, ``meta`` being the JSON object that
``tools/model_converters/publish_model.py`` stores in the header (``{}`` for other files).

Layout (safetensors' documentation): 8 bytes, the little-endian length ``N`` of the header; ``N``
bytes of JSON, an object that starts with ``{``; the tensor data.
"""
import json
import os.path as osp
import struct
from collections import OrderedDict
from typing import IO, Dict, Optional, Union

import torch

__all__ = ['SAFETENSORS_SUFFIX', 'METADATA_KEY', 'is_safetensors', 'safetensors_load',
           'safetensors_bytes']

SAFETENSORS_SUFFIX = '.safetensors'
# The header's ``__metadata__`` entry (a string-to-string map) that holds our metadata as JSON.
METADATA_KEY = 'rils_mm'
# safetensors refuses headers above 100 MB; a longer length is another format.
_MAX_HEADER = 100 * 1024 * 1024


def _head(source: Union[str, IO[bytes]], size: int = 9) -> bytes:
    if isinstance(source, str):
        if not osp.isfile(source):
            return b''
        with open(source, 'rb') as f:
            return f.read(size)
    if hasattr(source, 'seek') and hasattr(source, 'read'):
        position = source.tell()
        head = source.read(size)
        source.seek(position)
        return head
    return b''


def is_safetensors(source: Union[str, IO[bytes]]) -> bool:
    """Whether ``source`` (a path or a binary file object) starts as a safetensors file: a
    plausible header length and then ``{``. A torch zip starts with ``PK``, a legacy torch
    pickle with ``0x80``, so neither is taken for one."""
    head = _head(source)
    if len(head) < 9:
        return False
    length = struct.unpack('<Q', head[:8])[0]
    return 2 <= length <= _MAX_HEADER and head[8:9] == b'{'


def safetensors_load(source: Union[str, IO[bytes]], map_location=None,
                     name: Optional[str] = None) -> dict:
    """A safetensors file as a Runner-style checkpoint.

    Args:
        source (str | file): A path or a binary file object.
        map_location: ``None``, a device or a device name: where the tensors go (read on the
            CPU first); other forms of ``torch.load``'s argument leave them on the CPU.
        name (str, optional): How to call the file in messages (default: ``source``).

    Returns:
        dict: ``state_dict`` (an ordered ``{key: tensor}``, in the file's order) and ``meta``
        (the JSON object stored under ``__metadata__['rils_mm']``, or ``{}``).

    Raises:
        DamagedCheckpointError: The header or the data is truncated or malformed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    from .safe_loading import DamagedCheckpointError
    name = name or str(source)
    if isinstance(source, str):
        with open(source, 'rb') as f:
            data = f.read()
    else:
        data = source.read()
    try:
        length = struct.unpack('<Q', data[:8])[0]
        header = json.loads(data[8:8 + length])
        tensors = load_bytes(data)
        meta = json.loads((header.get('__metadata__') or {}).get(METADATA_KEY, '{}'))
    except (SafetensorError, ValueError, struct.error, UnicodeDecodeError) as err:
        reason = ' '.join(str(err).split())[:200] or type(err).__name__
        raise DamagedCheckpointError(
            f'checkpoint {name} is a damaged safetensors file (truncated by an interrupted '
            f'copy?): {reason}') from None
    # The header maps names to byte ranges; keep the order of the data in the file.
    order = sorted((k for k in header if k != '__metadata__'),
                   key=lambda k: header[k]['data_offsets'][0])
    state_dict = OrderedDict((k, tensors[k]) for k in order)
    if isinstance(map_location, (str, torch.device)):
        state_dict = OrderedDict((k, v.to(map_location)) for k, v in state_dict.items())
    return dict(state_dict=state_dict, meta=meta if isinstance(meta, dict) else {})


def safetensors_bytes(state_dict: Dict[str, torch.Tensor], meta: Optional[dict] = None
                      ) -> bytes:
    """``state_dict`` (tensors only) and ``meta`` (JSON-serialisable) as safetensors bytes.

    Tensors that share memory (tied weights) are written as separate copies: safetensors
    refuses shared storage, and loading copies each into its own parameter anyway.

    Raises:
        TypeError: A value of ``state_dict`` is not a tensor (one line naming its key).
    """
    from safetensors.torch import save
    tensors = OrderedDict()
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f'state_dict[{key!r}] is a {type(value).__name__}, not a tensor: '
                            f'safetensors holds tensors only')
        tensors[key] = value.detach().cpu().contiguous().clone()
    # One metadata entry: safetensors writes the entries of ``__metadata__`` in hash-map order,
    # which changes from process to process, and the published name is the bytes' sha256.
    return save(tensors, metadata={METADATA_KEY: json.dumps(meta or {}, sort_keys=True)})
