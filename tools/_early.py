"""The checks ``tools/train.py`` and ``tools/test.py`` make before torch loads.

``rils_mm/tools/arguments.py`` is loaded by its file path, so that the ``rils_mm`` package
(which imports torch and the OpenMMLab stack to register its modules) is not imported for a
``--help``, a mistyped option or a config with a syntax error; those answer in a fraction of
a second instead of the seconds that loading torch and the OpenMMLab stack takes. From an
installed package without this checkout's layout, the package's own module is used.
"""
import importlib.util
import os.path as osp

ARGUMENTS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'rils_mm', 'tools',
                     'arguments.py')


def check_early(prog: str, tool: str, argv: list) -> None:
    """:func:`rils_mm.tools.arguments.check_early`, without importing ``rils_mm``."""
    if not osp.isfile(ARGUMENTS):
        from rils_mm.tools.arguments import check_early as check
    else:
        spec = importlib.util.spec_from_file_location('_rils_mm_early_arguments', ARGUMENTS)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        check = module.check_early
    check(prog, tool, argv)
