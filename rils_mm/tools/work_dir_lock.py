"""One training run per work dir: a lock file held for the run's lifetime.

Two ``tools/train.py`` runs given the same ``--work-dir`` would write the same ``iter_N.pth``,
``last_checkpoint`` and log folder, each overwriting the other's files, and both would end with
exit status 0. :class:`WorkDirLock` prevents that with ``<work dir>/train.lock``:

- The lock is an OS advisory lock (``fcntl.flock``) on that file, held while the run lives.
  The kernel drops it when the process ends in any way, ``kill -9`` included, so a killed run
  never blocks its own ``--resume``. A flock belongs to the open file, which forked children
  (DataLoader workers) would share and keep locked for a while after their parent was killed:
  the file is opened close-on-exec and a forked child closes its copy at once.
- The file's text says who holds it (host, pid, the process's start time, the start of the
  run, the command) for the message a second run prints: ``work dir W is in use by the
  training run of pid P on host H since T``. A run that ends normally, by an exception or by
  SIGTERM removes the file.
- A file left by a dead run (``kill -9``, a power cut) is found unlocked; when it names this
  host and its process is gone (or its pid now belongs to a younger process), the new run
  takes it over with a warning.
- Another host: ``flock`` on NFS is forwarded to the server's lock manager, but not on every
  mount (``nolock``, some FUSE file systems), and a process on another host cannot be looked
  up. A file naming another host that is not locked is therefore refused, with the command to
  remove it once the user knows that run is over. Losing a run's checkpoints silently is worse
  than one manual step after a crash on another node.
- The same check guards file systems where ``flock`` locks nothing: a file naming a live
  process of this host (same pid and start time) is refused even when ``flock`` succeeded.
- Distributed runs: only global rank 0 takes the lock (:func:`global_rank` reads the
  launchers' variables, so this works before the process group exists); the other ranks of
  the same run never see it as a conflict.

``tools/test.py`` takes no lock: it writes only its own timestamped log folder (and ``--out``)
and never a checkpoint or ``last_checkpoint``, so evaluating a checkpoint of a run that is
still training is safe and useful.
"""
import fcntl
import json
import os
import os.path as osp
import signal
import socket
import sys
import time
from contextlib import contextmanager
from typing import Iterator, Optional

__all__ = ['LOCK_NAME', 'WorkDirLock', 'WorkDirLocked', 'global_rank', 'hold_work_dir',
           'process_start', 'sigterm_exits']

LOCK_NAME = 'train.lock'


class WorkDirLocked(RuntimeError):
    """Another run holds the work dir; the message names it and says how to proceed."""


def global_rank() -> int:
    """This process's rank in its run, from the variables torchrun, Slurm and Open MPI set
    (0 outside a distributed launch)."""
    for name in ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK', 'PMI_RANK'):
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


def process_start(pid: int) -> Optional[int]:
    """Start time of process ``pid`` in clock ticks since boot (Linux), None if unknown."""
    try:
        with open(f'/proc/{pid}/stat') as file:
            # Field 22; the command name (field 2) may contain spaces, so split after it.
            return int(file.read().rsplit(')', 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f'/proc/{pid}/stat') as file:
            return file.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return True


# Descriptors of the locks this process holds; a forked child closes its copies at once.
_HELD_FDS = set()


def _close_held_locks_in_child() -> None:
    for fd in _HELD_FDS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_close_held_locks_in_child)


class WorkDirLock:
    """The lock of one work dir (see the module docstring).

    Args:
        work_dir (str): The run's work dir (created if needed).
    """

    def __init__(self, work_dir: str) -> None:
        self.work_dir = work_dir
        self.path = osp.join(work_dir, LOCK_NAME)
        self._fd: Optional[int] = None

    def _describe(self, holder: dict) -> str:
        since = holder.get('since')
        when = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since)) if since else '?'
        return (f'the training run of pid {holder.get("pid", "?")} on host '
                f'{holder.get("host", "?")} since {when}')

    def _read(self, fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 65536).decode('utf-8', 'replace').strip()
        if not text:
            return {}
        try:
            holder = json.loads(text)
        except ValueError:
            return {'text': text[:200]}
        return holder if isinstance(holder, dict) else {'text': text[:200]}

    def _open_locked(self) -> int:
        """Open the lock file and flock it; retry if it was replaced meanwhile."""
        os.makedirs(self.work_dir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                raise WorkDirLocked(
                    f'work dir {self.work_dir} is in use by {self._describe(holder)} (lock '
                    f'file {self.path}); wait for it to end or stop it, or give this run '
                    f'another --work-dir') from None
            except OSError:
                os.close(fd)
                raise
            # A run that ended between our open and flock removed the file: lock the new one.
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def acquire(self) -> 'WorkDirLock':
        """Take the lock, or raise :class:`WorkDirLocked` naming the holder."""
        fd = self._open_locked()
        try:
            holder = self._read(fd)
            self._check_previous(holder)
            record = dict(host=socket.gethostname(), pid=os.getpid(),
                          pid_start=process_start(os.getpid()), since=time.time(),
                          command=' '.join(sys.argv)[:500])
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(record) + '\n').encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _HELD_FDS.add(fd)
        return self

    def _check_previous(self, holder: dict) -> None:
        """Refuse or take over a lock file that no process holds (see the module docs)."""
        if not holder:
            return
        from mmengine.logging import print_log
        pid, host = holder.get('pid'), holder.get('host')
        if host != socket.gethostname():
            raise WorkDirLocked(
                f'work dir {self.work_dir} was locked by {self._describe(holder)}, another host, '
                f'whose process cannot be checked from here (lock file {self.path}); if that '
                f'run is over, remove the file (rm {self.path}) and start again, or give this '
                f'run another --work-dir')
        if (isinstance(pid, int) and pid != os.getpid() and _alive(pid)
                and process_start(pid) == holder.get('pid_start')):
            raise WorkDirLocked(
                f'work dir {self.work_dir} is in use by {self._describe(holder)}, which is still '
                f'running although the file system did not keep its lock (lock file '
                f'{self.path}); wait for it to end or stop it, or give this run another '
                f'--work-dir')
        print_log(f'Taking over the lock of work dir {self.work_dir} left by '
                  f'{self._describe(holder)}, which is no longer running', logger='current',
                  level=30)

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            os.remove(self.path)  # while still locked: no other run can hold this file
        except FileNotFoundError:
            pass
        finally:
            _HELD_FDS.discard(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> 'WorkDirLock':
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` in the main thread (so ``finally``
    blocks and context managers run, as for Ctrl-C), unless a handler is already installed."""
    import threading
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def hold_work_dir(work_dir: str) -> Iterator[Optional[WorkDirLock]]:
    """Hold the lock of ``work_dir`` on global rank 0 (None on the other ranks) for the block,
    released on any exit, SIGTERM included."""
    if global_rank() != 0:
        yield None
        return
    with sigterm_exits(), WorkDirLock(work_dir) as lock:
        yield lock
