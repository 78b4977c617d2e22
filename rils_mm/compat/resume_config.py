"""A resumed run reads the config text its checkpoint carries as literals, never runs it.

mmengine 0.10's ``Runner.resume`` and ``FlexibleRunner.resume`` pass ``meta['config']`` of the
checkpoint to ``Config.fromstring``, which executes a ``.py`` text: a checkpoint that passes the
weights-only load would run code on ``--resume``. They read only ``gpu_ids`` from it (to refuse
a resume on another number of GPUs), so during a resume ``Config.fromstring`` reads the text's
top-level literal assignments instead (:func:`rils_mm.utils.config_literals.read_config_text`);
the ``gpu_ids`` check keeps working. Checkpoints our Runner writes carry ``meta['cfg']``, not
``meta['config']``: nothing changes for them.
"""
import functools

from ..utils.config_literals import read_config_text


def literal_config(cfg_str: str, file_format: str = '.py'):
    """``Config`` of the literal top-level assignments of ``cfg_str`` (see module doc)."""
    from mmengine.config import Config
    fields = read_config_text(cfg_str) if file_format == '.py' else None
    return Config(fields or {})


def install_literal_resume_configs() -> None:
    """Wrap both runners' ``resume`` (once)."""
    from mmengine.config import Config
    from mmengine.runner import FlexibleRunner, Runner
    for runner_class in (Runner, FlexibleRunner):
        original = runner_class.resume
        if getattr(original, '_reads_literal_configs', False):
            continue

        @functools.wraps(original)
        def resume(self, *args, _original=original, **kwargs):
            fromstring = Config.__dict__['fromstring']
            Config.fromstring = staticmethod(literal_config)
            try:
                return _original(self, *args, **kwargs)
            finally:
                Config.fromstring = fromstring

        resume._reads_literal_configs = True
        runner_class.resume = resume
