"""Exceptions that stop a training run on purpose.

A check that decides a run must not go on (too much bad data, a non-finite loss) raises
:class:`RunStopped` with a message written for the user. ``tools/train.py`` prints that message
as one line and exits with status 1; the checkpoints already written stay as they are.
"""
__all__ = ['RunStopped']


class RunStopped(RuntimeError):
    """A run was stopped by one of rils_mm's checks; ``str(err)`` says why and what to do."""
