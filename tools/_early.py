"""Loading rils_mm's library modules without importing the ``rils_mm`` package.

The ``rils_mm`` package imports torch and the OpenMMLab stack to register its modules, which
takes seconds. The checks ``tools/train.py`` and ``tools/test.py`` make first
(``rils_mm/tools/arguments.py``) and the tools that need neither torch nor the toolboxes load
their library module by its file path instead, so a ``--help``, a mistyped option or a config
with a syntax error is answered in a fraction of a second. From an installed package without
this checkout's layout, the package's own module is imported.

Tools in sub-folders reach this module with ``sys.path.append(<tools folder>)``.
"""
import importlib
import importlib.util
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_library(name: str):
    """The module ``rils_mm.<name>`` (e.g. ``'tools.arguments'``), loaded by its file path.

    The module must not use relative imports (it is loaded outside its package).
    """
    path = osp.join(REPO, 'rils_mm', *name.split('.')) + '.py'
    if not osp.isfile(path):
        return importlib.import_module(f'rils_mm.{name}')
    spec = importlib.util.spec_from_file_location(f'_rils_mm_{name.replace(".", "_")}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_early(prog: str, tool: str, argv: list) -> None:
    """:func:`rils_mm.tools.arguments.check_early`, without importing ``rils_mm``."""
    load_library('tools.arguments').check_early(prog, tool, argv)
