"""Dependencies between rils_mm's subpackages flow one way.

Layers, bottom to top:

- ``utils`` (helpers such as progress reporting, importing nothing of rils_mm);
- ``compat``;
- ``datasets`` and ``evaluation`` (``evaluation`` may import ``datasets``, not the reverse);
- ``models``;
- ``visualization`` (drawing what a model computes);
- ``engine`` (what the Runner builds from a config: hooks, optimizer constructors, strategies);
- ``tools`` and ``apis`` (the user-facing calls: the tool drivers and the inference API).

So the engine never depends on the tool drivers, and datasets, evaluation and models depend on
neither the engine nor the tools.

A subpackage imports only from itself and the layers below it, and registers only its own kind
of module (datasets, metrics, models; the engine its hooks and optimizer constructors). Every
``.py`` file under ``rils_mm`` is parsed (not imported) and every import in it is checked:
module-level and function-level, relative and absolute, and ``import_module('rils_mm...')``
with a literal name. ``rils_mm`` itself (its ``__init__`` imports every subpackage) counts as
the top layer.
"""
import ast
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

PACKAGE = 'rils_mm'
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE
SUBPACKAGES = ('utils', 'compat', 'datasets', 'evaluation', 'models', 'visualization', 'engine',
               'tools', 'apis')
ROOT = PACKAGE  # ``import rils_mm`` / ``from rils_mm import __version__``
LEAF_MODULES = ('version', )  # modules directly under rils_mm that import nothing of it

_TOP = set(SUBPACKAGES) | {ROOT}
# What each subpackage may import of rils_mm (besides itself and the leaf modules).
ALLOWED = {
    'utils': set(),
    'compat': {'utils'},
    'datasets': {'utils', 'compat'},
    'evaluation': {'utils', 'compat', 'datasets'},
    'models': {'utils', 'compat', 'datasets', 'evaluation'},
    'visualization': {'utils', 'compat', 'datasets', 'evaluation', 'models'},
    'engine': {'utils', 'compat', 'datasets', 'evaluation', 'models', 'visualization'},
    'tools': _TOP,
    'apis': _TOP,
}


def module_name(path: Path, package_dir: Path) -> Tuple[str, bool]:
    """Dotted module name of ``path`` and whether it is a package ``__init__``."""
    parts = list(path.relative_to(package_dir.parent).with_suffix('').parts)
    is_package = parts[-1] == '__init__'
    if is_package:
        parts.pop()
    return '.'.join(parts), is_package


def resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> Optional[str]:
    """Absolute module named by ``from X import ...`` (None if ``X`` is not in rils_mm)."""
    if node.level == 0:
        return node.module
    package = module.split('.') if is_package else module.split('.')[:-1]
    if node.level - 1 > len(package) - 1:
        raise ValueError(f'{module}: relative import beyond the top-level package')
    base = package[:len(package) - (node.level - 1)]
    return '.'.join(base + ([node.module] if node.module else []))


def imported_modules(tree: ast.AST, module: str,
                     is_package: bool) -> Iterator[Tuple[ast.AST, str]]:
    """``(node, absolute rils_mm module)`` for every import of rils_mm in ``tree``."""
    for node in ast.walk(tree):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(node, module, is_package)
            # ``from rils_mm.x import y`` may name a submodule ``y``: it is in ``x``'s layer
            # either way, except directly under rils_mm, where ``y`` picks the layer.
            targets = ([f'{base}.{alias.name}' for alias in node.names]
                       if base == PACKAGE else [base])
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, 'attr', getattr(node.func, 'id', None))
              in ('import_module', '__import__')):
            targets = [node.args[0].value]
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + '.'):
                yield node, target


def layer_of(module: str) -> Optional[str]:
    """Subpackage of an absolute rils_mm module; ``ROOT`` for rils_mm's own namespace; None
    for a leaf module."""
    parts = module.split('.')
    if len(parts) == 1:
        return ROOT
    if parts[1] in SUBPACKAGES:
        return parts[1]
    if parts[1] in LEAF_MODULES:
        return None
    return ROOT  # an attribute of rils_mm/__init__.py


def layer_violations(package_dir: Path = PACKAGE_DIR) -> List[str]:
    """One line per import that breaks the layering, naming the file, line and import."""
    problems = []
    for path in sorted(package_dir.rglob('*.py')):
        module, is_package = module_name(path, package_dir)
        own = layer_of(module)
        if own not in ALLOWED:  # rils_mm/__init__.py and leaf modules are not layered
            continue
        source = path.read_text(encoding='utf-8')
        tree = ast.parse(source, filename=str(path))
        for node, target in imported_modules(tree, module, is_package):
            layer = layer_of(target)
            if layer is None or layer == own or layer in ALLOWED[own]:
                continue
            statement = ast.get_source_segment(source, node) or ast.dump(node)
            statement = ' '.join(statement.split())
            problems.append(f'{path.relative_to(package_dir.parent)}:{node.lineno}: '
                            f'`{statement}` imports {target}: {own} may not import {layer}')
    return problems


# Registries a subpackage may add to (``X.register_module`` or any ``register...(X, ...)``
# call): datasets register datasets, evaluation metrics, models models, the engine the rest.
REGISTRIES = {
    'datasets': {'DATASETS', 'DATA_SAMPLERS', 'TRANSFORMS'},
    'evaluation': {'METRICS', 'EVALUATOR'},
    'models': {'MODELS', 'MODEL_WRAPPERS', 'WEIGHT_INITIALIZERS', 'TASK_UTILS'},
    'engine': {
        'HOOKS', 'LOOPS', 'LOG_PROCESSORS', 'OPTIMIZERS', 'OPTIM_WRAPPERS',
        'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS', 'RUNNERS', 'RUNNER_CONSTRUCTORS',
        'STRATEGIES', 'VISBACKENDS', 'VISUALIZERS'
    },
}
ALL_REGISTRIES = set().union(*REGISTRIES.values()) | {'FUNCTIONS', 'INFERENCERS'}


def _registry_name(node: ast.AST) -> Optional[str]:
    """``'MODELS'`` for ``MODELS`` or ``registry.MODELS``; None for anything else."""
    name = node.id if isinstance(node, ast.Name) else getattr(node, 'attr', None)
    return name if name in ALL_REGISTRIES else None


def registrations(tree: ast.AST) -> Iterator[Tuple[ast.AST, str]]:
    """``(node, registry name)`` for every registration into a known registry."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == 'register_module':
            registry = _registry_name(func.value)
            if registry:
                yield node, registry
                continue
        called = getattr(func, 'attr', getattr(func, 'id', '')) or ''
        if 'register' in called.lower() and node.args:
            registry = _registry_name(node.args[0])
            if registry:
                yield node, registry


def registration_violations(package_dir: Path = PACKAGE_DIR) -> List[str]:
    """One line per registration into another layer's registry."""
    problems = []
    for path in sorted(package_dir.rglob('*.py')):
        own = layer_of(module_name(path, package_dir)[0])
        if own not in ALLOWED:
            continue
        source = path.read_text(encoding='utf-8')
        for node, registry in registrations(ast.parse(source, filename=str(path))):
            if registry not in REGISTRIES.get(own, ()):
                statement = ' '.join((ast.get_source_segment(source, node) or '').split())
                problems.append(f'{path.relative_to(package_dir.parent)}:{node.lineno}: '
                                f'`{statement}`: {own} may not register in {registry}')
    return problems


def test_package_is_found():
    """The checker sees the real package (an empty walk would pass vacuously)."""
    found = {layer_of(module_name(p, PACKAGE_DIR)[0]) for p in PACKAGE_DIR.rglob('*.py')}
    assert set(SUBPACKAGES) <= found


def test_dependencies_flow_one_way():
    problems = layer_violations()
    assert not problems, 'Imports against the layering (bottom to top: utils; compat; datasets, ' \
        'evaluation; models; visualization; engine; tools, apis):\n' + '\n'.join(problems)


def test_each_subpackage_registers_its_own_kind():
    """Datasets are registered by datasets, metrics by evaluation, optimizer constructors and
    hooks by the engine (in every toolbox), models by models."""
    problems = registration_violations()
    assert not problems, 'Registrations outside their layer:\n' + '\n'.join(problems)


def _write(root: Path, files: dict) -> Path:
    for name, text in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / PACKAGE


@pytest.mark.parametrize('name,text,bad', [
    ('datasets/a.py', 'from ..evaluation.metrics import X\n', 'rils_mm.evaluation.metrics'),
    ('datasets/a.py', 'from rils_mm.evaluation import X\n', 'rils_mm.evaluation'),
    ('datasets/__init__.py', 'from .. import models\n', 'rils_mm.models'),
    ('evaluation/a.py', 'def f():\n    import rils_mm.models.x\n', 'rils_mm.models.x'),
    ('evaluation/a.py', 'import rils_mm\n', 'rils_mm'),
    ('models/a/b.py', 'from ...engine import optimizers\n', 'rils_mm.engine'),
    ('models/a.py', 'from ..tools.converters import f\n', 'rils_mm.tools.converters'),
    ('models/a.py', 'import importlib\nimportlib.import_module("rils_mm.engine")\n',
     'rils_mm.engine'),
    ('compat/a.py', 'from ..datasets import x\n', 'rils_mm.datasets'),
    ('compat/__init__.py', 'from rils_mm import __version__\n', 'rils_mm.__version__'),
    ('utils/a.py', 'from ..compat import x\n', 'rils_mm.compat'),
    # The engine (what the Runner builds) does not depend on the tool drivers or the API.
    ('engine/a.py', 'from ..tools.cli import UsageError\n', 'rils_mm.tools.cli'),
    ('engine/hooks/a.py', 'from rils_mm.tools import remote_checkpoints\n', 'rils_mm.tools'),
    ('engine/a.py', 'def f():\n    from ..apis import init_model\n', 'rils_mm.apis'),
    ('engine/a.py', 'import rils_mm\n', 'rils_mm'),
    # Datasets, evaluation and models depend on neither the engine nor the tools.
    ('datasets/a.py', 'from rils_mm.engine.errors import RunStopped\n', 'rils_mm.engine.errors'),
    ('datasets/a.py', 'from ..tools.feature_cache import x\n', 'rils_mm.tools.feature_cache'),
    ('evaluation/a.py', 'from ..engine import hooks\n', 'rils_mm.engine'),
    ('evaluation/a.py', 'from rils_mm.tools.compare import x\n', 'rils_mm.tools.compare'),
    ('models/a.py', 'import rils_mm.engine.hooks\n', 'rils_mm.engine.hooks'),
])
def test_checker_catches(tmp_path, name, text, bad):
    problems = layer_violations(_write(tmp_path, {'__init__.py': '', name: text}))
    assert len(problems) == 1 and f'{PACKAGE}/{name}' in problems[0] and bad in problems[0]


def test_checker_allows(tmp_path):
    package_dir = _write(
        tmp_path, {
            '__init__.py': 'from . import compat, datasets, engine, models\n',
            'version.py': '',
            'utils/progress.py': 'from rils_mm.version import v\n',
            'compat/__init__.py': 'from .a import x\nfrom rils_mm.version import v\n',
            'datasets/__init__.py': 'from ..compat import x\nfrom . import a\n'
                                    'from ..utils.progress import track\n',
            'evaluation/a.py': 'from ..datasets.a import x\nfrom . import b\n',
            'models/x/y.py': 'from ...datasets import a\nfrom ...evaluation import b\n',
            'engine/a.py': 'from ..models.x import y\nfrom rils_mm.datasets import a\n',
            'tools/a.py': 'import rils_mm\nfrom rils_mm.engine import a\n'
                          'from rils_mm import models\nfrom ..apis import b\n',
        })
    assert layer_violations(package_dir) == []


@pytest.mark.parametrize('name,text,ok', [
    ('evaluation/a.py', '@DATASETS.register_module()\nclass A:\n    pass\n', False),
    ('evaluation/a.py', '@METRICS.register_module()\nclass A:\n    pass\n', True),
    ('models/a.py', '_register(registry.OPTIM_WRAPPER_CONSTRUCTORS, A)\n', False),
    ('models/a.py', 'register_same_module(registry.MODELS, A)\n', True),
    ('engine/a.py', 'register_same_module(registry.OPTIM_WRAPPER_CONSTRUCTORS, A)\n', True),
    ('datasets/a.py', 'MODELS.register_module(name="A", module=A)\n', False),
])
def test_registration_checker(tmp_path, name, text, ok):
    problems = registration_violations(_write(tmp_path, {'__init__.py': '', name: text}))
    assert problems == [] if ok else (len(problems) == 1 and f'{PACKAGE}/{name}' in problems[0])
