"""Progress of long jobs: a bar on a terminal, a plain line now and then in logs.

On a terminal (``stderr`` is a tty) the job gets a tqdm bar; otherwise (CI, ``nohup``, a
pipe) a line such as ``make_shards: 3000/10000 samples (30 %), 12 s, about 28 s left`` at every
tenth of the job, at most one every ``min_interval`` seconds and at least one every
``max_interval`` seconds, so logs stay readable. Jobs that end within ``min_interval`` seconds
show nothing. Only rank 0 of a distributed run reports. Everything goes to ``stderr``: standard
output stays for results (``inspect_shards.py --json``).

Example::

    for row in track(rows, desc='make_shards', unit='sample'):
        ...
"""
import math
import sys
import time
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

__all__ = ['Progress', 'track']

T = TypeVar('T')


def _rank() -> int:
    try:
        from mmengine.dist import get_rank
    except ImportError:  # pragma: no cover (mmengine is a dependency)
        return 0
    return get_rank()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds} s'
    if seconds < 3600:
        return f'{seconds // 60} min {seconds % 60:02d} s'
    return f'{seconds // 3600} h {seconds % 3600 // 60:02d} min'


def _plural(unit: str) -> str:
    return unit + ('es' if unit.endswith(('s', 'sh', 'ch', 'x')) else 's')


class Progress:
    """Progress of one job of ``total`` units (None: unknown).

    Args:
        total (int, optional): Units in the job; None when unknown (lines then give the count
            and rate, every ``max_interval`` seconds).
        desc (str): What the job is, first on each line.
        unit (str): Name of one unit (``sample``, ``shard``, ``class``).
        initial (int): Units already done (a resumed job).
        stream (TextIO, optional): Where to write; default ``sys.stderr``.
        min_interval (float): Seconds before the first output and between plain lines.
        max_interval (float): Longest silence between plain lines.
        enabled (bool, optional): Report at all; default: on rank 0 only.
    """

    def __init__(self,
                 total: Optional[int] = None,
                 desc: str = '',
                 unit: str = 'it',
                 initial: int = 0,
                 stream: Optional[TextIO] = None,
                 min_interval: float = 5.0,
                 max_interval: float = 300.0,
                 enabled: Optional[bool] = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval, self.max_interval = min_interval, max_interval
        self.enabled = (_rank() == 0) if enabled is None else enabled
        self.start = self._last_line = time.monotonic()
        self._last_step = self._step(initial)
        self._bar = None
        self._reported = initial  # the count the last plain line gave
        if self.enabled and self._isatty():
            self._bar = self._make_bar()

    def _isatty(self) -> bool:
        isatty = getattr(self.stream, 'isatty', None)
        return bool(isatty and isatty())

    def _make_bar(self):
        try:
            from tqdm import tqdm
        except ImportError:  # plain lines then
            return None
        return tqdm(total=self.total, desc=self.desc, unit=self.unit, initial=self.initial,
                    file=self.stream, delay=self.min_interval, dynamic_ncols=True,
                    leave=True)

    def _step(self, n: int) -> int:
        """Tenths of the job done (0..10); -1 when the total is unknown."""
        if not self.total:
            return -1
        return min(10, math.floor(10 * n / self.total))

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        since_line = now - self._last_line  # since the start before the first line
        if since_line < self.min_interval:
            return
        step = self._step(self.n)
        if step > self._last_step or since_line >= self.max_interval:
            self._last_step = step
            self._write(now)

    def line(self, now: Optional[float] = None) -> str:
        """The plain progress line as it stands."""
        elapsed = (time.monotonic() if now is None else now) - self.start
        done = self.n - self.initial
        unit = self.unit if self.n == 1 else _plural(self.unit)
        prefix = f'{self.desc}: ' if self.desc else ''
        if self.total:
            text = (f'{prefix}{self.n}/{self.total} {unit} '
                    f'({min(100, math.floor(100 * self.n / self.total))} %), '
                    f'{_duration(elapsed)}')
            if 0 < done and self.n < self.total:
                text += f', about {_duration(elapsed / done * (self.total - self.n))} left'
            return text
        rate = f' ({done / elapsed:.1f} {self.unit}/s)' if elapsed > 0 and done else ''
        return f'{prefix}{self.n} {unit}, {_duration(elapsed)}{rate}'

    def _write(self, now: float) -> None:
        self.stream.write(self.line(now) + '\n')
        self.stream.flush()
        self._last_line, self._reported = now, self.n

    def close(self) -> None:
        """End the bar; in plain mode write the final count unless the job ended within
        ``min_interval`` seconds or the last line already gave it."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            return
        now = time.monotonic()
        if now - self.start >= self.min_interval and self._reported != self.n:
            self._write(now)

    def __enter__(self) -> 'Progress':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(iterable: Iterable[T], desc: str = '', unit: str = 'it',
          total: Optional[int] = None, **kwargs) -> Iterator[T]:
    """Iterate over ``iterable`` reporting progress (see :class:`Progress`, which takes the
    other arguments); ``total`` defaults to ``len(iterable)`` where it has one."""
    if total is None and hasattr(iterable, '__len__'):
        total = len(iterable)
    with Progress(total, desc, unit, **kwargs) as progress:
        for item in iterable:
            yield item
            progress.update()
