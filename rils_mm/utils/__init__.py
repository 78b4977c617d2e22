"""Helpers every layer of rils_mm may use; they import nothing of rils_mm.

- :mod:`.progress`: progress bars on a terminal, occasional plain lines in logs.
"""
from .progress import Progress, track

__all__ = ['Progress', 'track']
