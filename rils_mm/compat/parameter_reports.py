"""mmengine's per-parameter reports go to the log file; the console gets one line for each.

- ``BaseModule._dump_init_info`` (end of every top-level ``init_weights``) writes three lines
  per parameter ("The value is the same before and after calling `init_weights` ...",
  "Initialized by ...") into the current logger's file handlers or, when that logger has none
  (a model built outside a Runner: tests, benchmarks, converters), logs them at INFO on the
  console: hundreds of lines for a ViT. The detail still goes into the log file when there is
  one (as mmengine writes it), otherwise it is logged at DEBUG; the console gets one INFO line
  counting the parameters by how they were initialised and saying where the detail is.
- ``DefaultOptimWrapperConstructor`` logs one INFO line per parameter and setting
  (``paramwise_options -- backbone.layers.0.ln1.weight:weight_decay=0.0``). They still reach
  the log file (and a console that shows DEBUG); the console gets one line counting them.

Applied by the command-line tools only (``rils_mm.compat.install_tool_conveniences``), not on
``import rils_mm``. Tested in ``tests/test_tools/test_console.py``.
"""
import logging
from collections import Counter
from logging import FileHandler
from typing import List, Set

from mmengine.dist import master_only
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.optim import DefaultOptimWrapperConstructor

__all__ = ['install_parameter_reports', 'init_summary']

UNCHANGED = 'The value is the same before and after'
BY_INIT_WEIGHTS = 'Initialized by user-defined `init_weights`'
PARAMWISE = 'paramwise_options -- '


def _log_files(logger: logging.Logger) -> List[str]:
    return [h.baseFilename for h in logger.handlers if isinstance(h, FileHandler)]


def _where(files: List[str]) -> str:
    if files:
        return f'per-parameter detail in {", ".join(files)}'
    return "per-parameter detail at log_level='DEBUG'"


# --- init_weights ---------------------------------------------------------------------------------
def init_summary(module: BaseModule) -> str:
    """One line counting ``module``'s parameters by how ``init_weights`` initialised them.

    Needs ``module._params_init_info``, which exists only while ``init_weights`` runs.
    """
    by_init_cfg = Counter()
    by_modules = unchanged = 0
    params = [param for _, param in module.named_parameters()]
    for param in params:
        info = module._params_init_info[param]['init_info'].strip()
        if info.startswith(UNCHANGED):
            unchanged += 1
        elif info.startswith(BY_INIT_WEIGHTS):
            by_modules += 1
        else:  # an initializer of an init_cfg: "TruncNormalInit: a=-2, ...", "PretrainedInit: ..."
            by_init_cfg[info.split(':', 1)[0]] += 1
    parts = [f'{count} by init_cfg {name}' for name, count in by_init_cfg.most_common()]
    if by_modules:
        parts.append(f"{by_modules} by their modules' init_weights")
    parts.append(f'{unchanged} unchanged')
    return (f'init_weights: {len(params)} parameters of {type(module).__name__} initialised '
            f'({", ".join(parts)})')


def _install_init_report() -> None:
    original = BaseModule._dump_init_info

    @master_only
    def dump_init_info(self) -> None:
        logger = MMLogger.get_current_instance()
        files = _log_files(logger)
        if files:
            original(self)  # the detail, into the file handlers only
        else:
            for name, param in self.named_parameters():
                logger.debug(f'{name} - {tuple(param.shape)}: '
                             f'{self._params_init_info[param]["init_info"].strip()}')
        logger.info(f'{init_summary(self)}; {_where(files)}')

    BaseModule._dump_init_info = dump_init_info


# --- paramwise_options ----------------------------------------------------------------------------
class _OffTheConsole(logging.Filter):
    """Keeps INFO records that start with ``prefix`` off a console handler (unless it shows
    DEBUG) and collects their messages."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.messages: Set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        if not message.startswith(self.prefix):
            return True
        self.messages.add(message)
        return False


def paramwise_summary(messages: Set[str]) -> str:
    """``paramwise_options: 30 parameters with their own settings (weight_decay 28, lr 2)``."""
    settings = [message[len(PARAMWISE):].rsplit('=', 1)[0] for message in messages]
    names = {setting.rsplit(':', 1)[0] for setting in settings}
    keys = Counter(setting.rsplit(':', 1)[-1] for setting in settings)
    counts = ', '.join(f'{key} {count}' for key, count in keys.most_common())
    return f'paramwise_options: {len(names)} parameters with their own settings ({counts})'


def _install_paramwise_report() -> None:
    original = DefaultOptimWrapperConstructor.__call__

    def build(self, model):
        logger = MMLogger.get_current_instance()
        consoles = [h for h in logger.handlers
                    if not isinstance(h, FileHandler) and h.level > logging.DEBUG]
        collect = _OffTheConsole(PARAMWISE)
        for handler in consoles:
            handler.addFilter(collect)
        try:
            return original(self, model)
        finally:
            for handler in consoles:
                handler.removeFilter(collect)
            if collect.messages:
                logger.info(f'{paramwise_summary(collect.messages)}; '
                            f'{_where(_log_files(logger))}')

    DefaultOptimWrapperConstructor.__call__ = build


def install_parameter_reports() -> None:
    """Replace the two reports (idempotent)."""
    if not getattr(BaseModule._dump_init_info, 'summarises_parameters', False):
        _install_init_report()
        BaseModule._dump_init_info.summarises_parameters = True
    if not getattr(DefaultOptimWrapperConstructor.__call__, 'summarises_parameters', False):
        _install_paramwise_report()
        DefaultOptimWrapperConstructor.__call__.summarises_parameters = True
