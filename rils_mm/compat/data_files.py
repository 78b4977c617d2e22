"""Data files are read as data: pickle refused, YAML through PyYAML's safe loader.

mmengine 0.10's ``mmengine.load`` (``mmengine.fileio.load``) picks a handler by the file's
extension, and two of them run code while reading: ``.pkl``/``.pickle`` go to
``pickle.load`` (an object's ``__reduce__`` calls any function) and ``.yaml``/``.yml`` to
PyYAML's full ``Loader`` (a ``!!python/object/apply:os.system`` tag calls ``os.system``). The
toolboxes read annotation files with it (mmengine's ``BaseDataset.load_data_list``, on which
the mmdet, mmseg and mmpretrain datasets build; mmpretrain's retrieval, caption and VQA
datasets; our ``KarpathyRetrieval``), so a config pointing ``ann_file`` at such a file ran its
code. Both handlers are registered anew through mmengine's ``register_handler``, so every
``mmengine.load`` of any toolbox gets them:

- pickle: reading is refused, in one line naming the file; writing is kept
  (``tools/test.py --out metrics.pkl`` and mmengine's ``DumpResults`` dump pickles).
- YAML: read with the safe loader (mappings, lists, strings, numbers, booleans, null, dates);
  a tag that would build a Python object, or a syntax error, is one line naming the file.
  Writing is unchanged.

Configs are not data files: a config is the user's own code by design (a ``.py`` config runs
as Python, and ``custom_imports`` imports any module). ``Config.fromfile`` therefore keeps
reading ``.yaml``/``.yml`` configs with mmengine's own loader, which also reads back the
``!!python/tuple`` tags that ``Config.dump`` writes for tuples.
"""
import sys
from typing import IO, Union

import yaml
from mmengine.fileio.handlers import PickleHandler, YamlHandler, file_handlers, register_handler
# The loader mmengine's YAML handler uses (PyYAML's full loader, in C when available).
from mmengine.fileio.handlers.yaml_handler import Loader as MMENGINE_YAML_LOADER

try:
    from yaml import CSafeLoader as SafeLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader

__all__ = ['DataFileError', 'UnsafeDataFileError', 'install_data_file_handlers']

PICKLE_FORMATS = ('pkl', 'pickle')
YAML_FORMATS = ('yaml', 'yml')


class DataFileError(ValueError):
    """A data file could not be read; the message names the file and says why."""


class UnsafeDataFileError(DataFileError):
    """A data file whose reading would build Python objects (and so could run code); nothing
    in it was run."""


def _name_of(file: Union[str, IO]) -> str:
    """The path of the file a handler is reading, for messages.

    ``mmengine.load(path)`` hands the handler an in-memory copy of the file's bytes, which has
    no name; the path is then the ``file`` argument of that ``load`` call, a few frames up.
    """
    name = getattr(file, 'name', None)
    if isinstance(name, str):
        return name
    import mmengine.fileio.io as fileio_io
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            break
        if frame.f_code is fileio_io.load.__code__:
            path = frame.f_locals.get('file')
            if isinstance(path, str):
                return path
            break
        frame = frame.f_back
    return 'a data file'


class RefusingPickleHandler(PickleHandler):
    """mmengine's pickle handler that writes pickles but refuses to read them."""

    def load_from_fileobj(self, file, **kwargs):
        raise UnsafeDataFileError(f'refused to read {_name_of(file)}: a pickle file can run '
                                  f'code when read; convert it to JSON')


class SafeYamlHandler(YamlHandler):
    """mmengine's YAML handler reading with PyYAML's safe loader unless a ``Loader`` is
    passed (as ``Config.fromfile`` does for configs)."""

    def load_from_fileobj(self, file, **kwargs):
        kwargs.setdefault('Loader', SafeLoader)
        try:
            return yaml.load(file, **kwargs)
        except yaml.YAMLError as error:
            raise _one_line_yaml_error(_name_of(file), error) from None


def _one_line_yaml_error(name: str, error: yaml.YAMLError) -> DataFileError:
    """PyYAML's several-line message as one line naming the file and the line."""
    problem = ' '.join(str(getattr(error, 'problem', None) or error).split())
    mark = getattr(error, 'problem_mark', None)
    where = f' (line {mark.line + 1})' if mark is not None else ''
    if isinstance(error, yaml.constructor.ConstructorError):
        return UnsafeDataFileError(
            f'refused to read {name}: {problem}{where}; YAML data files are read with the '
            f'safe loader, which builds no Python objects')
    return DataFileError(f'{name}: not valid YAML: {problem}{where}')


def _install_config_loading() -> None:
    """Read YAML configs with mmengine's own loader: a config is the user's code."""
    import mmengine.config.config as config_module
    from mmengine.config import Config
    from mmengine.config.config import BASE_KEY
    load = config_module.load
    if getattr(load, 'reads_configs', False):
        return

    def load_config(file, file_format=None, **kwargs):
        """``mmengine.load`` for a config file: YAML through mmengine's full loader."""
        if file_format is None and isinstance(file, str):
            file_format = file.split('.')[-1]
        if file_format in YAML_FORMATS:
            kwargs.setdefault('Loader', MMENGINE_YAML_LOADER)
        return load(file, file_format=file_format, **kwargs)

    load_config.reads_configs = True
    config_module.load = load_config  # Config._file2dict's ``load``
    get_base_files = Config._get_base_files

    def get_config_base_files(filename: str) -> list:
        """``Config._get_base_files`` reading a YAML config the same way."""
        if not filename.endswith(tuple(f'.{ext}' for ext in YAML_FORMATS)):
            return get_base_files(filename)
        base_files = load_config(filename).get(BASE_KEY, [])
        return base_files if isinstance(base_files, list) else [base_files]

    Config._get_base_files = staticmethod(get_config_base_files)


def install_data_file_handlers() -> None:
    """Register the refusing pickle and safe YAML handlers (idempotent)."""
    if not isinstance(file_handlers.get('pkl'), RefusingPickleHandler):
        register_handler(list(PICKLE_FORMATS))(RefusingPickleHandler)
    if not isinstance(file_handlers.get('yaml'), SafeYamlHandler):
        register_handler(list(YAML_FORMATS))(SafeYamlHandler)
    _install_config_loading()
