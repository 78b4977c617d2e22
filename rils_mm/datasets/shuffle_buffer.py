"""A seeded sample shuffle buffer whose content can be rebuilt from two counts.

webdataset's ``shuffle(n)`` keeps ``n`` samples and, for each new one, yields a random one of
them in its place. Here the choice of slot depends only on the random generator and the
number of samples held, never on the samples, so the buffer after ``n_in`` samples went in and
``n_out`` came out is known from those counts alone: :meth:`ShuffleBuffer.simulate` replays
the choices on sample numbers, and a resumed stream then reads those samples again (from the
oldest one still held) to fill the slots. Checkpoints thus record positions, not images.
"""
import random
from typing import Iterator, List


class ShuffleBuffer:
    """Holds up to ``size`` items; :meth:`push` returns the item it lets out (or None).

    Args:
        size (int): Items held (1: no shuffling, each item leaves when the next comes in).
        rng (random.Random): Source of the slot choices (seeded by the caller).
    """

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = max(1, int(size))
        self.rng = rng
        self.items: List[object] = []
        self.n_in = 0
        self.n_out = 0
        self.draining = False

    def push(self, item):
        """Add ``item``; once full, let out a random held item in exchange."""
        self.n_in += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return None
        slot = self.rng.randrange(len(self.items))
        out, self.items[slot] = self.items[slot], item
        self.n_out += 1
        return out

    def drain(self) -> Iterator[object]:
        """Let out what is held, in a random order (the input has ended)."""
        if not self.draining:
            self.rng.shuffle(self.items)
            self.draining = True
        while self.items:
            self.n_out += 1
            yield self.items.pop()

    def simulate(self, n_in: int, n_out: int) -> None:
        """Replay the choices of ``n_in`` pushes and ``n_out`` items let out, on the numbers
        ``0 .. n_in - 1``: afterwards :attr:`items` holds the numbers of the items a buffer fed
        that way would hold, and the generator stands where it would."""
        for number in range(n_in):
            self.push(number)
        if n_out > self.n_out:
            drained = self.drain()
            for _ in range(n_out - self.n_out):
                next(drained)
