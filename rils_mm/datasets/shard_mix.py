"""Several shard sets mixed by weight, and resampled streams (shards drawn with replacement).

A mixed stream is still a list of *units* (a shard, or an interleaved part of one when a set
has fewer shards than roles) per role and epoch, as :class:`ImageTextShardDataset` reads them;
only the way that list is made changes, so reading, the shuffle buffer, bad-shard accounting
and the exact resume from a stream cursor stay those of the plain stream. The list of role
``r`` in epoch ``e`` depends only on ``(seed, e, r, number of roles)``: a resumed role rebuilds
it and its cursor points into it as before.

Which role reads what. Each set's units are dealt out to the ``S`` roles (world size x
dataloader workers) once, by a seeded shuffle that does not change between epochs; a role only
ever reads its own units. So two roles never read the same shard at the same time, even when
they stand in different epochs (with interleaved parts, several roles read one shard, each its
own samples). Why own shares rather than draws from all shards by a rule that avoids
collisions: such a rule has to know where the other roles stand, and roles run at different
speeds and resume each from its own cursor; with own shares a role's draws depend on nothing
but its seed, and the resume state stays one cursor per role. The price: a role sees only its
share (about ``1/S``) of each set, the roles together the whole set, and a resume needs the
same number of roles, as the plain stream already does. A role then draws which set gives its
next unit, from its own seeded generator:

- mixed (``resampled=False``): epoch ``e`` takes ``floor((e + 1) L q_i) - floor(e L q_i)``
  units of set ``i`` (``L`` units per role and epoch, ``q_i`` the set's share of draws), in a
  seeded order; a set's units are taken in seeded passes over the role's units of that set
  without replacement, the ``k``-th unit ever taken from set ``i`` being unit ``k mod m`` of
  pass ``k div m``. The counts are closed-form, so no earlier epoch is replayed to find them.
- resampled (``resampled=True``, open_clip's ``--dataset-resampled``): every unit is drawn
  with replacement (set by its share, then a unit of the role's units of that set), ``L`` per
  epoch from a generator seeded with ``(seed, e, r, S)``. The number of samples of an epoch
  is the dataset's ``samples_per_epoch`` (open_clip's ``--train-num-samples``).

Weights. ``dict(urls=..., weight=w)`` sets ask for shares of *samples*: a set is drawn with a
share proportional to ``w`` divided by its mean samples per unit (from ``sizes.json`` or
img2dataset's ``*_stats.json`` when every set has them; otherwise shards are taken to be of
equal size). open_clip's ``upsampling_factors`` weigh each *shard* of a ``::`` part by its
factor, as its ``ResampledShards2`` does: a part's share of draws is ``factor x its shards``.
Mixing is per unit, so a window of ``N`` units holds each set's share up to the binomial
spread of ``N`` draws (with ``resampled=False``, each epoch to within one unit per set);
the shuffle buffer blends the units' samples.
"""
import math
import numbers
import random
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

from .shards import expand_shard_urls

# (shard index, part, parts): the samples of shard ``shard`` whose index is ``part`` mod ``parts``.
Unit = Tuple[int, int, int]
# Last ints of the seeds of the three generators, apart from each other and from the shuffle
# buffer's ``(seed, epoch, role, num_roles)``.
DEAL, DRAW, PASS = -1, -2, -3


class ShardSet(NamedTuple):
    """Shards ``start:stop`` of the dataset's shard list; ``draw_weight``: the set's share
    of the draws were each draw a whole shard (see the module docs)."""
    start: int
    stop: int
    draw_weight: float


def mix_seed(*values: int) -> int:
    """A 63-bit seed from a tuple of ints (Python's tuple hash of ints is not salted)."""
    return hash(tuple(int(v) for v in values)) & 0x7FFF_FFFF_FFFF_FFFF


def _positive(value, where: str) -> float:
    """``value`` as a positive finite float, else a ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f'{where}={value!r}: expected a number > 0')
    return float(value)


def parse_shard_sets(shards, upsampling_factors: Optional[Union[str, Sequence[float]]] = None
                     ) -> Tuple[List[str], List[Tuple[int, int, str, float]]]:
    """Expand the ``shards`` argument into one shard list and its sets.

    Args:
        shards: A pattern or list of patterns (one set; ``::`` joins patterns), or a list of
            ``dict(urls=PATTERN(S), weight=W)`` (one set each; weight 1 when left out).
        upsampling_factors (str | Sequence[float], optional): open_clip's per-part factors
            (``'1::2'``) for a ``::``-joined ``shards`` string: each part becomes a set.

    Returns:
        tuple: The shard paths, and per set ``(start, stop, kind, value)`` with kind
        ``'weight'`` (a share of samples) or ``'factor'`` (a weight per shard).

    Raises:
        ValueError: One line naming the key and the value that is wrong.
    """
    if isinstance(shards, (list, tuple)) and any(isinstance(s, dict) for s in shards):
        if upsampling_factors is not None:
            raise ValueError(f'upsampling_factors={upsampling_factors!r} applies to a '
                             f"'::'-joined shards string; with shards=[dict(urls=..., "
                             f'weight=...)] give each set its weight instead')
        specs = []
        for index, spec in enumerate(shards):
            where = f'shards[{index}]'
            if not isinstance(spec, dict):
                raise ValueError(f'{where}={spec!r}: expected dict(urls=..., weight=...) '
                                 f'like the other entries')
            unknown = sorted(set(spec) - {'urls', 'weight'})
            if unknown:
                raise ValueError(f'{where} has unknown key(s) {unknown}: expected urls and '
                                 f'weight')
            urls = spec.get('urls')
            patterns = [urls] if isinstance(urls, str) else urls
            if not (isinstance(patterns, (list, tuple)) and patterns and all(
                    isinstance(pattern, str) and pattern for pattern in patterns)):
                raise ValueError(f'{where}.urls={urls!r} names no shard: expected a path '
                                 f'pattern, URL or list of them')
            specs.append((urls, 'weight', _positive(spec.get('weight', 1.0),
                                                   f'{where}.weight')))
    elif upsampling_factors is not None:
        if not isinstance(shards, str):
            raise ValueError(f'upsampling_factors={upsampling_factors!r} needs shards as one '
                             f"'::'-joined string (open_clip's syntax), got {shards!r}")
        parts = shards.split('::')
        factors = (upsampling_factors.split('::') if isinstance(upsampling_factors, str)
                   else list(upsampling_factors))
        if len(factors) != len(parts):
            raise ValueError(f'upsampling_factors={upsampling_factors!r} has {len(factors)} '
                             f"factor(s) but shards={shards!r} has {len(parts)} '::'-separated "
                             f'part(s)')
        specs = []
        for index, (part, factor) in enumerate(zip(parts, factors)):
            where = f'upsampling_factors[{index}]'
            try:
                factor = float(factor) if isinstance(factor, str) else factor
            except ValueError:
                raise ValueError(f'{where}={factor!r}: expected a number > 0') from None
            if not part:
                raise ValueError(f"shards={shards!r}: '::'-separated part {index} is empty")
            specs.append((part, 'factor', _positive(factor, where)))
    else:
        paths = expand_shard_urls(shards)
        return paths, [(0, len(paths), 'weight', 1.0)]
    paths: List[str] = []
    sets = []
    for urls, kind, value in specs:
        expanded = expand_shard_urls(urls)
        sets.append((len(paths), len(paths) + len(expanded), kind, value))
        paths.extend(expanded)
    return paths, sets


def draw_weights(sets, sizes: Sequence[Optional[int]]) -> List[ShardSet]:
    """:class:`ShardSet` per set, with its share of whole-shard draws.

    Args:
        sets: ``(start, stop, kind, value)`` from :func:`parse_shard_sets`.
        sizes: Samples in each set (None where unknown).
    """
    known = all(size for size in sizes)
    result = []
    for (start, stop, kind, value), size in zip(sets, sizes):
        if kind == 'factor':
            weight = value * (stop - start)  # open_clip: each shard weighs its factor
        else:
            # A share of samples: fewer draws for a set whose shards hold more samples.
            weight = value / (size / (stop - start)) if known else value
        result.append(ShardSet(start, stop, weight))
    return result


def role_units(sets: Sequence[ShardSet], seed: int, epoch: int, role: int, num_roles: int,
               resampled: bool, shuffle: bool) -> List[Unit]:
    """The units role ``role`` (of ``num_roles``) reads in ``epoch`` (see the module docs)."""
    mine, shares, total_units = [], [], 0
    for number, shard_set in enumerate(sets):
        count = shard_set.stop - shard_set.start
        parts = max(1, math.ceil(num_roles / count))
        units = [(shard, part, parts) for shard in range(shard_set.start, shard_set.stop)
                 for part in range(parts)]
        if shuffle or resampled:
            random.Random(mix_seed(seed, number, num_roles, DEAL)).shuffle(units)
        total_units += len(units)
        mine.append(units[role::num_roles])
        shares.append(shard_set.draw_weight * parts)  # per unit: parts units make a shard
    length = max(1, math.ceil(total_units / num_roles))  # per role and epoch
    shares = [share / sum(shares) for share in shares]
    rng = random.Random(mix_seed(seed, epoch, role, num_roles, DRAW))
    if resampled:
        picks = rng.choices(range(len(sets)), weights=shares, k=length)
        return [rng.choice(mine[number]) for number in picks]
    taken = [math.floor(epoch * length * share) for share in shares]  # before this epoch
    counts = [math.floor((epoch + 1) * length * share) - before
              for share, before in zip(shares, taken)]
    if shuffle:
        labels = [number for number, count in enumerate(counts) for _ in range(count)]
        rng.shuffle(labels)
    else:  # spread each set evenly over the epoch, in a fixed order
        labels = [number for _, number in sorted(
            ((k + 0.5) / count, number) for number, count in enumerate(counts)
            for k in range(count))]
    passes = {}
    units = []
    for number in labels:
        rounds, index = divmod(taken[number], len(mine[number]))
        taken[number] += 1
        order = passes.get((number, rounds))
        if order is None:
            order = list(range(len(mine[number])))
            if shuffle:
                random.Random(mix_seed(seed, number, role, num_roles, rounds, PASS)).shuffle(
                    order)
            passes[(number, rounds)] = order
        units.append(mine[number][order[index]])
    return units
