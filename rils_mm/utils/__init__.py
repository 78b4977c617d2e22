"""Helpers every layer of rils_mm may use; they import nothing of rils_mm.

- :mod:`.progress`: progress bars on a terminal, occasional plain lines in logs;
- :mod:`.methods`: the method table, ``configs/methods.yml`` (what the tools know of each
  method).
"""
from .progress import Progress, track

__all__ = ['Progress', 'track']
