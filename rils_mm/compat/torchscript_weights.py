"""The weights of a TorchScript archive, read without running anything in it.

``torch.jit.load`` compiles the archive's code and runs each scripted class's ``__setstate__``
while it rebuilds the modules; that code can read, create and overwrite files (``torch.
from_file(path, True, n)`` maps any file writable), so a crafted "CLIP" file runs whatever it
likes. OpenAI's CLIP releases are TorchScript archives, so rils_mm reads their weights here
instead.

What an archive holds (``torch.jit.save``; ``<prefix>`` is any folder name):

- ``<prefix>/data.pkl``: the module tree, pickled. Each module is an object of a scripted
  class (``__torch__.<path>.<Class>``, often with a ``___torch_mangle_N`` part) whose pickled
  state is a dict of its attributes: tensors, submodules and plain values.
- ``<prefix>/data/<key>``: the raw bytes of each tensor storage the pickle names.
- ``<prefix>/code/__torch__/...py``: the class sources. Each module class body declares
  ``__parameters__ = [...]`` and ``__buffers__ = [...]``: which tensor attributes
  ``state_dict()`` holds.

How it is read, and why nothing runs:

- ``data.pkl`` is unpickled by :class:`_WeightsUnpickler`, whose ``find_class`` gives every
  scripted class an inert stand-in (:class:`ScriptObjectRecord`, which only records the pickled
  state) and otherwise allows exactly the tensor rebuild function, ``OrderedDict``, the storage
  types (as dtypes) and the list type tags of ``torch.jit._pickle``; any other global is
  refused before it is looked up (:class:`~.safe_loading.UnsafeCheckpointError`).
- Storages are the bytes of their ``data/<key>`` records, copied into fresh CPU tensors.
- The class sources are parsed with :func:`ast.parse`, which never executes, and only the two
  list literals are read. A class that defines ``__setstate__`` (code that ``torch.jit.load``
  would run to rebuild the object, so its state is not plain attributes) is refused.
- ``constants.pkl``, the compiled code and the debug records are not read.

The result equals ``torch.jit.load(path, map_location='cpu').state_dict()`` (same keys in the
same order, bitwise-equal tensors): tests/test_torchscript_safety.py checks it on scripted and
traced CLIP models.
"""
import ast
import collections
import io
import pickle
import sys
import zipfile
from typing import Dict, IO, List, NamedTuple, Optional, Tuple, Union

import torch

from .safe_loading import DamagedCheckpointError, UnsafeCheckpointError

__all__ = ['is_torchscript_archive', 'torchscript_state_dict', 'ScriptObjectRecord']

Source = Union[str, IO[bytes]]


def _archive_prefix(names: List[str]) -> Optional[str]:
    """``'<prefix>/'`` of a TorchScript archive's records (None if it is not one)."""
    for name in names:
        if name.endswith('/constants.pkl') and name.count('/') == 1:
            return name[:-len('constants.pkl')]
    return None


def is_torchscript_archive(source: Source) -> bool:
    """Whether ``source`` (a path or a seekable binary file) is a TorchScript archive.

    The test is torch's own (``torch.serialization._is_torchscript_zip``): a zip whose records
    include ``constants.pkl``.
    """
    position = None if isinstance(source, str) else source.tell()
    try:
        with zipfile.ZipFile(source) as archive:
            return _archive_prefix(archive.namelist()) is not None
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    finally:
        if position is not None:
            source.seek(position)


class ScriptObjectRecord:
    """An inert stand-in for an object of a scripted class: the class name and the pickled
    state, recorded as they are (the archive's ``__setstate__`` is never looked at)."""

    qualified_name = ''
    state = None

    def __init__(self, *args) -> None:  # pickle's REDUCE would call the class: do nothing
        pass

    def __setstate__(self, state) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f'<{self.qualified_name} record>'


class _Storage(NamedTuple):
    storage: torch.UntypedStorage
    dtype: torch.dtype


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple,
                    requires_grad: bool, backward_hooks, *metadata) -> torch.Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a view of ``storage`` (hooks and
    ``requires_grad`` dropped: ``state_dict()`` returns detached tensors).

    The view must lie inside the storage: ``Tensor.set_`` would grow the storage instead.
    """
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError('a tensor is not built from a storage record')
    numbers = [offset, *size, *stride]
    if (not all(isinstance(n, int) and n >= 0 for n in numbers) or len(size) != len(stride)):
        raise pickle.UnpicklingError(f'a tensor has offset {offset}, size {size} and stride '
                                     f'{stride}')
    if all(size):  # an empty tensor reads nothing
        end = offset + sum((n - 1) * step for n, step in zip(size, stride)) + 1
        available = storage.storage.nbytes() // storage.dtype.itemsize
        if end > available:
            raise pickle.UnpicklingError(f'a tensor of size {tuple(size)} reads {end} elements '
                                         f'of a storage of {available}')
    tensor = torch.empty((0, ), dtype=storage.dtype)
    return tensor.set_(storage.storage, offset, size, stride)


# The storage type names of the pickles (``torch.FloatStorage``, ...) and their dtypes.
_STORAGE_DTYPES = {
    'DoubleStorage': torch.float64, 'FloatStorage': torch.float32, 'HalfStorage': torch.float16,
    'BFloat16Storage': torch.bfloat16, 'LongStorage': torch.int64, 'IntStorage': torch.int32,
    'ShortStorage': torch.int16, 'CharStorage': torch.int8, 'ByteStorage': torch.uint8,
    'BoolStorage': torch.bool, 'ComplexDoubleStorage': torch.complex128,
    'ComplexFloatStorage': torch.complex64
}


class _StorageType(NamedTuple):
    dtype: torch.dtype


def _allowed_globals() -> Dict[Tuple[str, str], object]:
    from torch.jit import _pickle as jit_pickle
    allowed = {('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
               ('collections', 'OrderedDict'): collections.OrderedDict}
    for name in ('build_intlist', 'build_tensorlist', 'build_doublelist', 'build_boollist',
                 'restore_type_tag'):  # each returns its first argument
        allowed[('torch.jit._pickle', name)] = getattr(jit_pickle, name)
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[('torch', name)] = _StorageType(dtype)
    return allowed


class _WeightsUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` into :class:`ScriptObjectRecord` trees of CPU tensors."""

    def __init__(self, file: IO[bytes], archive: zipfile.ZipFile, prefix: str, name: str):
        super().__init__(file)
        self.archive, self.prefix, self.name = archive, prefix, name
        self.allowed = _allowed_globals()
        self.records: Dict[str, type] = {}
        self.storages: Dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if module == '__torch__' or module.startswith('__torch__.'):
            qualified = f'{module}.{name}'
            if qualified not in self.records:
                self.records[qualified] = type('ScriptObjectRecord', (ScriptObjectRecord, ),
                                               dict(qualified_name=qualified))
            return self.records[qualified]
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise UnsafeCheckpointError(
            f'refused to load {self.name}: its TorchScript module tree holds the Python object '
            f'{module}.{name}, which the TorchScript weights reader does not build (only '
            f'tensors, containers and scripted modules are); nothing from the file was run')

    def persistent_load(self, pid) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int)):
            raise DamagedCheckpointError(f'{self.name}: data.pkl names a storage as {pid!r}, '
                                         f'expected (storage, type, key, device, size)')
        _, storage_type, key, _, numel = pid
        if key not in self.storages:
            record = f'{self.prefix}data/{key}'
            nbytes = numel * storage_type.dtype.itemsize
            try:
                info = self.archive.getinfo(record)
            except KeyError:
                raise DamagedCheckpointError(f'{self.name}: the record {record} named by '
                                             f'data.pkl is missing (truncated?)') from None
            if info.file_size != nbytes:
                raise DamagedCheckpointError(
                    f'{self.name}: the record {record} has {info.file_size} bytes, expected '
                    f'{nbytes} ({numel} x {storage_type.dtype})')
            data = torch.empty(nbytes, dtype=torch.uint8)
            with self.archive.open(record) as file:
                if file.readinto(memoryview(data.numpy())) != nbytes:
                    raise DamagedCheckpointError(f'{self.name}: the record {record} ends early')
            self.storages[key] = _Storage(data.untyped_storage(), storage_type.dtype)
        return self.storages[key]


class _ClassInfo(NamedTuple):
    is_module: bool
    parameters: Tuple[str, ...]
    buffers: Tuple[str, ...]
    has_setstate: bool


def _class_infos(archive: zipfile.ZipFile, prefix: str, name: str) -> Dict[str, _ClassInfo]:
    """What each class source under ``code/`` declares, by qualified name (parsed, not run)."""
    infos = {}
    code = f'{prefix}code/'
    for record in archive.namelist():
        if not (record.startswith(code) and record.endswith('.py')):
            continue
        module = record[len(code):-len('.py')].replace('/', '.')
        try:
            tree = ast.parse(archive.read(record).decode('utf-8'), filename=record)
        except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError,
                MemoryError) as err:
            raise DamagedCheckpointError(f'{name}: the class source {record} cannot be parsed: '
                                         f'{err}') from None
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                infos[f'{module}.{node.name}'] = _read_class(node, record, name)
    return infos


def _read_class(node: ast.ClassDef, record: str, name: str) -> _ClassInfo:
    lists = {}
    for statement in node.body:
        if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)
                and statement.targets[0].id in ('__parameters__', '__buffers__')):
            try:
                value = ast.literal_eval(statement.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                value = None
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise DamagedCheckpointError(f'{name}: {record}: {node.name}.'
                                             f'{statement.targets[0].id} is not a list of names')
            lists[statement.targets[0].id] = tuple(value)
    is_module = any(isinstance(base, ast.Name) and base.id == 'Module' for base in node.bases)
    has_setstate = any(isinstance(statement, ast.FunctionDef) and statement.name ==
                       '__setstate__' for statement in node.body)
    return _ClassInfo(is_module, lists.get('__parameters__', ()), lists.get('__buffers__', ()),
                      has_setstate)


def _collect(record: ScriptObjectRecord, prefix: str, infos: Dict[str, _ClassInfo],
             out: Dict[str, torch.Tensor], name: str, path: tuple) -> None:
    """Add the parameters, then buffers, then submodules' tensors of ``record`` to ``out``
    (the order of ``nn.Module.state_dict``)."""
    qualified = record.qualified_name
    info = infos.get(qualified)
    if info is None:
        raise DamagedCheckpointError(f'{name}: the module class {qualified} has no source '
                                     f'under code/')
    if info.has_setstate:
        raise UnsafeCheckpointError(
            f'refused to load {name}: its TorchScript class {qualified} defines __setstate__, '
            f'code that torch.jit.load would run to rebuild the module (its weights are what '
            f'that code makes of them); nothing from the file was run')
    state = record.state
    if not isinstance(state, dict):
        raise DamagedCheckpointError(f'{name}: the module {prefix or "(root)"} ({qualified}) '
                                     f'has no attribute dict')
    for attribute in list(info.parameters) + list(info.buffers):
        if attribute not in state:
            raise DamagedCheckpointError(f'{name}: the module {prefix or "(root)"} lacks its '
                                         f'declared tensor {attribute!r}')
    for wanted in (info.parameters, info.buffers):
        for attribute, value in state.items():
            if attribute not in wanted or value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise DamagedCheckpointError(f'{name}: {prefix}{attribute} is a '
                                             f'{type(value).__name__}, not a tensor')
            out[prefix + attribute] = value
    for attribute, value in state.items():
        if isinstance(value, ScriptObjectRecord) and getattr(
                infos.get(value.qualified_name), 'is_module', True):
            if any(value is seen for seen in path):
                raise DamagedCheckpointError(f'{name}: the module {prefix}{attribute} '
                                             f'contains itself')
            _collect(value, f'{prefix}{attribute}.', infos, out, name, path + (value, ))


def torchscript_state_dict(source: Source,
                           name: Optional[str] = None) -> 'collections.OrderedDict':
    """``state_dict()`` of the TorchScript module in ``source``, without running it.

    Args:
        source (str | file): A path or a seekable binary file of a ``torch.jit.save`` archive.
        name (str, optional): How to call the file in messages (default: ``source``).

    Returns:
        OrderedDict[str, torch.Tensor]: Dotted names (``visual.conv1.weight``) to CPU tensors
        with the archive's dtypes, shapes and strides (tensors that shared a storage share it).

    Raises:
        UnsafeCheckpointError: The module tree holds another Python object, or a class whose
            ``__setstate__`` would have to run; nothing was run.
        DamagedCheckpointError: Not a TorchScript archive, or records are missing or do not
            agree with each other.
    """
    name = name or str(source)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as err:
        raise DamagedCheckpointError(f'{name} is damaged or not a TorchScript archive '
                                     f'(truncated?): {err}') from None
    with archive:
        prefix = _archive_prefix(archive.namelist())
        if prefix is None or f'{prefix}data.pkl' not in archive.namelist():
            raise DamagedCheckpointError(f'{name} is not a TorchScript archive (no '
                                         f'constants.pkl and data.pkl records)')
        byteorder = (archive.read(f'{prefix}byteorder').decode().strip()
                     if f'{prefix}byteorder' in archive.namelist() else 'little')
        if byteorder != sys.byteorder:
            raise DamagedCheckpointError(f'{name} was saved with {byteorder}-endian tensors; '
                                         f'this machine is {sys.byteorder}-endian')
        infos = _class_infos(archive, prefix, name)
        data = io.BytesIO(archive.read(f'{prefix}data.pkl'))
        try:
            root = _WeightsUnpickler(data, archive, prefix, name).load()
        except (UnsafeCheckpointError, DamagedCheckpointError):
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
                IndexError, KeyError, RuntimeError, RecursionError, zipfile.BadZipFile) as err:
            reason = ' '.join(str(err).split())[:200] or type(err).__name__
            raise DamagedCheckpointError(f'{name}: the module tree data.pkl cannot be read: '
                                         f'{reason}') from None
        if not isinstance(root, ScriptObjectRecord):
            raise DamagedCheckpointError(f'{name}: data.pkl holds a {type(root).__name__}, not '
                                         f'a scripted module')
        out = collections.OrderedDict()
        try:
            _collect(root, '', infos, out, name, (root, ))
        except RecursionError:
            raise DamagedCheckpointError(f'{name}: the module tree is nested too deeply') from None
    return out
