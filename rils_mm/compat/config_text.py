"""A config's text without yapf's slow search on lines it cannot fit.

mmengine's ``Config.pretty_text`` builds the config as Python text and polishes it with yapf
(pep8 style, 79 columns). On a line that cannot be made to fit, such as a long path or URL,
yapf searches through the ways of splitting the whole enclosing statement: about a second per
call on a 2-core machine, against 0.1 s for the same config with a short path. A Runner formats
its config four times as it starts (the log, the dumped ``config.py`` twice, the runtime
information), so every training or test run paid seconds before its first step.

This fix keeps yapf for text whose lines all fit and hands back mmengine's own unpolished text,
which is equally valid Python (it reads back to the same config), when one does not; and it
remembers the last few results, so the Runner's four calls on one config format it once.

Applied by the command-line tools only (``rils_mm.compat.install_tool_conveniences``), not on
``import rils_mm``: it changes a config's text, which a program of one's own may compare.
"""
import functools
from typing import Tuple

# The column limit of mmengine's yapf style (pep8).
_COLUMN_LIMIT = 79


def install_fast_config_text() -> None:
    """Wrap the ``FormatCode`` that mmengine's config module calls (idempotent)."""
    import mmengine.config.config as config_module
    format_code = config_module.FormatCode
    if getattr(format_code, 'skips_unfittable_lines', False):
        return

    @functools.lru_cache(maxsize=8)
    def format_with_style(text: str, style: tuple) -> Tuple[str, bool]:
        return format_code(text, style_config=dict(style))

    def format_fitting_code(text: str, style_config=None, **kwargs) -> Tuple[str, bool]:
        """yapf's ``FormatCode`` when every line fits the column limit; else ``text``
        unchanged (yapf's ``(text, changed)`` return)."""
        if max((len(line) for line in text.splitlines()), default=0) > _COLUMN_LIMIT:
            return text, False
        if kwargs or not isinstance(style_config, dict):  # not mmengine's call: no cache
            return format_code(text, style_config=style_config, **kwargs)
        return format_with_style(text, tuple(sorted(style_config.items())))

    format_fitting_code.skips_unfittable_lines = True
    format_fitting_code.cache_info = format_with_style.cache_info
    config_module.FormatCode = format_fitting_code
