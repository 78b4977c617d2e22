"""The method table, ``configs/methods.yml``: what the tools know of each pretraining method.

One file says, per method, which algorithm classes it builds, its configs and what it can do
(a text tower, captioning, which masks and which reconstruction), and lists the runs of
``tools/compare.py`` and the models of ``tools/benchmark_train.py`` in their order. The tools
read it here, so that adding a method touches its config, its module and the table.

This module imports nothing of rils_mm, torch or mmengine (only PyYAML): the benchmark reads the
table before it imports anything heavy, and every layer of rils_mm may use it.

Example::

    >>> table = load_method_table()
    >>> table.methods['RILS'].reconstruction
    'language'
    >>> [run.name for run in table.benchmark][:3]
    ['open_clip', 'clip', 'rils']
"""
import os
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

__all__ = ['METHOD_TABLE', 'MethodTableError', 'Method', 'CompareRun', 'BenchmarkRun',
           'MethodTable', 'load_method_table']

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
METHOD_TABLE = osp.join(REPO, 'configs', 'methods.yml')
MASKING = ('none', 'uniform', 'teacher-attention')
RECONSTRUCTION = ('none', 'pixel', 'feature', 'language')
INPUTS = ('images', 'image_features')


class MethodTableError(ValueError):
    """The method table is malformed; the message names the file and the entry, in one line."""


@dataclass(frozen=True)
class Method:
    """One pretraining method.

    Attributes:
        name (str): Its name in the table (``'MAE+CLIP'``).
        algorithms (tuple[str]): Class names of the models it builds (registered names).
        config (str, optional): Its ViT-B/16 recipe, relative to the repository.
        demo (str, optional): Its demo-scale config, relative to the repository.
        text_tower (bool): It embeds texts (zero-shot classification, retrieval).
        captioning (bool): It generates captions.
        masking (str): ``'none'``, ``'uniform'`` or ``'teacher-attention'`` (MILAN's).
        reconstruction (str): ``'none'``, ``'pixel'``, ``'feature'`` or ``'language'``.
    """
    name: str
    algorithms: Tuple[str, ...]
    config: Optional[str] = None
    demo: Optional[str] = None
    text_tower: bool = False
    captioning: bool = False
    masking: str = 'none'
    reconstruction: str = 'none'


@dataclass(frozen=True)
class CompareRun:
    """One run of the comparison: ``config`` or a two-stage ``chain`` (exactly one is set),
    and the ``(method, option)`` sources whose final checkpoints it loads (None: none)."""
    name: str
    method: Method
    config: Optional[str] = None
    chain: Optional[str] = None
    sources: Optional[Tuple[Tuple[str, str], ...]] = None


@dataclass(frozen=True)
class BenchmarkRun:
    """One model of the training benchmark (``method`` None: open_clip's own CLIP)."""
    name: str
    method: Optional[Method]
    config: Optional[str] = None
    optional: bool = False
    inputs: str = 'images'


@dataclass(frozen=True)
class MethodTable:
    """The whole table: methods by name, and the tools' runs in their order."""
    path: str
    methods: Dict[str, Method]
    compare: List[CompareRun]
    benchmark: List[BenchmarkRun]

    def method_of(self, model) -> Optional[Method]:
        """The method of a model (or model class): the first class of its MRO that a method
        lists; None for a model no method builds (open_clip's, a zero-shot wrapper)."""
        cls = model if isinstance(model, type) else type(model)
        by_class = {name: method for method in self.methods.values()
                    for name in method.algorithms}
        for base in cls.__mro__:
            if base.__name__ in by_class:
                return by_class[base.__name__]
        return None


class _Entry:
    """Reads one mapping of the table, naming it in every error."""

    def __init__(self, path: str, where: str, entry, known: Tuple[str, ...]) -> None:
        self.path, self.where = path, where
        if not isinstance(entry, dict):
            self.fail(f'expected a mapping, got {entry!r}')
        unknown = sorted(set(entry) - set(known))
        if unknown:
            self.fail(f'unknown key {unknown[0]!r}; expected one of {", ".join(known)}')
        self.entry = entry

    def fail(self, message: str):
        raise MethodTableError(f'{self.path}: {self.where}: {message}')

    def get(self, key: str, kind=str, default=None, choices=None):
        value = self.entry.get(key, default)
        if value is not None and not isinstance(value, kind):
            self.fail(f'{key} must be a {kind.__name__}, got {value!r}')
        if choices and value not in choices:
            self.fail(f'{key} must be one of {", ".join(choices)}, got {value!r}')
        return value

    def method(self, methods: Dict[str, Method], key: str = 'Method',
               required: bool = True) -> Optional[Method]:
        name = self.get(key)
        if name is None and not required:
            return None
        if name not in methods:
            self.fail(f'{key} {name!r} is not in Methods ({", ".join(methods)})')
        return methods[name]


def _read_methods(path: str, entries) -> Dict[str, Method]:
    methods: Dict[str, Method] = {}
    for index, raw in enumerate(entries or []):
        entry = _Entry(path, f'Methods[{index}]', raw, (
            'Name', 'Algorithms', 'Config', 'Demo', 'Text tower', 'Captioning', 'Masking',
            'Reconstruction'))
        name = entry.get('Name')
        if not name or name in methods:
            entry.fail(f'Name must be given once per method, got {name!r}')
        entry.where = f'method {name!r}'
        algorithms = entry.get('Algorithms', list)
        if not algorithms or not all(isinstance(a, str) for a in algorithms):
            entry.fail(f'Algorithms must list class names, got {algorithms!r}')
        methods[name] = Method(
            name, tuple(algorithms), entry.get('Config'), entry.get('Demo'),
            entry.get('Text tower', bool, False), entry.get('Captioning', bool, False),
            entry.get('Masking', default='none', choices=MASKING),
            entry.get('Reconstruction', default='none', choices=RECONSTRUCTION))
    return methods


def _named(entry: _Entry, section: str, seen: set) -> str:
    name = entry.get('Name')
    if not name or name in seen:
        entry.fail(f'Name must be given once per run, got {name!r}')
    seen.add(name)
    entry.where = f'{section} run {name!r}'
    return name


def _read_compare(path: str, entries, methods: Dict[str, Method]) -> List[CompareRun]:
    runs: List[CompareRun] = []
    seen: set = set()
    for index, raw in enumerate(entries or []):
        entry = _Entry(path, f'Compare[{index}]', raw,
                       ('Name', 'Method', 'Config', 'Chain', 'Sources'))
        name = _named(entry, 'Compare', seen)
        method = entry.method(methods)
        chain = entry.get('Chain')
        config = None if chain else entry.get('Config', default=method.demo)
        if (chain is None) == (config is None):
            entry.fail('give either a Config (default: the method\'s Demo) or a Chain')
        sources = entry.get('Sources', list)
        if sources is not None:
            pairs = []
            for number, source in enumerate(sources):
                item = _Entry(path, f'{entry.where} Sources[{number}]', source,
                              ('Method', 'Option'))
                if not item.get('Method') or not item.get('Option'):
                    item.fail('a source needs a Method (a Compare run) and an Option (the '
                              'config key its checkpoint goes to)')
                pairs.append((item.get('Method'), item.get('Option')))
            sources = tuple(pairs)
        runs.append(CompareRun(name, method, config, chain, sources))
    for run in runs:  # sources name runs of the comparison, listed before or after
        for source, _ in run.sources or ():
            if source not in seen:
                raise MethodTableError(f'{path}: Compare run {run.name!r}: source {source!r} '
                                       f'is not a Compare run')
    return runs


def _read_benchmark(path: str, entries, methods: Dict[str, Method]) -> List[BenchmarkRun]:
    runs: List[BenchmarkRun] = []
    seen: set = set()
    for index, raw in enumerate(entries or []):
        entry = _Entry(path, f'Benchmark[{index}]', raw,
                       ('Name', 'Method', 'Config', 'Optional', 'Inputs'))
        name = _named(entry, 'Benchmark', seen)
        method = entry.method(methods, required=False)
        config = entry.get('Config', default=method.config if method else None)
        if method is not None and config is None:
            entry.fail(f'method {method.name!r} has no Config; give one')
        runs.append(BenchmarkRun(name, method, config, entry.get('Optional', bool, False),
                                 entry.get('Inputs', default='images', choices=INPUTS)))
    return runs


_cache: Dict[Tuple[str, int, int], MethodTable] = {}


def load_method_table(path: Optional[str] = None) -> MethodTable:
    """Read and check the method table (default: ``configs/methods.yml`` of this repository).

    Args:
        path (str, optional): A table file (its config paths are relative to the
            repository).

    Returns:
        MethodTable: The table (read again only when the file changes).

    Raises:
        MethodTableError: A missing or malformed file, an unknown key or value, a run that
            names an unknown method; one line naming the entry. (Whether the configs exist is
            for the tool that reads them to say.)
    """
    import yaml
    path = osp.abspath(path or METHOD_TABLE)
    if not osp.isfile(path):
        raise MethodTableError(f'method table not found: {path}')
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _cache:
        with open(path, encoding='utf-8') as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as error:
                raise MethodTableError(f'{path}: not valid YAML: '
                                       f'{" ".join(str(error).split())}') from None
        entry = _Entry(path, 'top level', data, ('Methods', 'Compare', 'Benchmark'))
        methods = _read_methods(path, entry.get('Methods', list))
        _cache[key] = MethodTable(path, methods,
                                  _read_compare(path, entry.get('Compare', list), methods),
                                  _read_benchmark(path, entry.get('Benchmark', list), methods))
    return _cache[key]
