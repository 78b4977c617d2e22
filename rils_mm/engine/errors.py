"""Exceptions that stop a training run on purpose, and the one line for a full disk.

A check that decides a run must not go on (too much bad data, a non-finite loss) raises
:class:`RunStopped` with a message written for the user. ``tools/train.py`` prints that message
as one line and exits with status 1; the checkpoints already written stay as they are.
"""
import errno
import os
from typing import Optional

__all__ = ['RunStopped', 'storage_full_message']

# Write failures that mean "no room": a full disk or quota, a file size limit, a read-only
# file system. Not bugs: the user frees space (or points the output elsewhere) and reruns.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


class RunStopped(RuntimeError):
    """A run was stopped by one of rils_mm's checks; ``str(err)`` says why and what to do."""


def storage_full_message(error: BaseException, where: Optional[str] = None) -> Optional[str]:
    """``writing FILE: No space left on device`` for a write that found no room (see
    :data:`STORAGE_ERRNOS`); None for any other error.

    Args:
        error: The exception.
        where (str, optional): What to name when the error names no file (a folder).
    """
    if not isinstance(error, OSError) or error.errno not in STORAGE_ERRNOS:
        return None
    reason = error.strerror or os.strerror(error.errno)
    target = error.filename or (f'in {where}' if where else None)
    # Without a file the error may come from anywhere (a full /dev/shm, say): its traceback
    # says more than a line would.
    return f'writing {target}: {reason}' if target else None
