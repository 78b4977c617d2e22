"""Streaming image-text dataset over img2dataset tar shards, with exact, cheap resume.

Design (why streaming rather than map-style): bad samples are skipped, yet batches must keep
their size (the contrastive loss gathers equal-sized batches across ranks) and every good
sample must be seen exactly once per epoch. Only a stream whose batches are formed *after*
filtering gives all three (a map-style index with a sampler would have to replace a bad
sample by a duplicate, or shrink the batch), so this is a ``torch.utils.data.IterableDataset``
that the DataLoader batches inside each worker. Shards are read as webdataset reads them, each
front to back in one stream (``access='stream'``, :mod:`rils_mm.datasets.tar_stream`): local
files with plain ``open()``, ``https://`` with one GET, object stores (``s3://``, ``gs://``)
through fsspec, ``pipe:COMMAND`` from a command's output; each sample carries the byte offset of
the next whole sample, which resume reopens a shard at. ``access='random'`` scans the tar
headers first and reads samples by their offsets (range reads through fsspec for remote shards,
see :mod:`rils_mm.datasets.remote_io`: the optional ``rils_mm[remote]`` extra). Credentials
for remote shards come only from the environment (the defaults of fsspec, s3fs, gcsfs), never
from the config. Configure the dataloader with ``sampler=None``; use ``IterBasedTrainLoop``
(one endless pass), or ``EpochBasedTrainLoop`` with ``samples_per_epoch`` and ``batch_size``
(nominal epochs: equal numbers of batches per rank, each pass continuing the stream where the
last stopped).

Order. Each DataLoader worker of each rank plays a *role* ``r`` of ``S = world_size x
num_workers``. For epoch ``e`` the shard list is cut into units (whole shards; when there are
fewer shards than roles, every shard is split into interleaved parts so that no role idles),
the units are shuffled with ``Random(seed, e)`` -- the same on every rank -- and role ``r``
takes units ``r, r + S, r + 2S, ...``. So the roles partition the epoch: no duplicates, no
gaps. A role reads its units (streams, or with ``access='random'`` the tar headers), passes the
samples through a shuffle buffer driven by ``Random(seed, e, r)`` (:class:`ShuffleBuffer`) and
decodes only what leaves the buffer. The stream is endless: after epoch ``e`` a role goes on
with ``e + 1``. Several shard sets mixed by weight, or shards drawn with replacement
(``resampled``), change only how a role's list of units is made: each role then draws from its
own fixed share of every set's units (:mod:`rils_mm.datasets.shard_mix`).

Resume. Every sample carries ``stream_state = (role in rank, epoch, position, num_workers)``
in its metainfo, where position counts raw stream entries (good and bad) of that epoch. The
DataLoader returns worker batches round-robin in order, so :class:`DataResumeHook` knows, from
the consumed batches alone, where each role stands and which role is due next; it stores that
per rank in checkpoints. On ``--resume`` it hands the state back with
:meth:`ImageTextShardDataset.set_resume_state`, restarts the dataloader iterator and makes the
loop's "advance ``iter`` batches" a no-op. A streaming role carries a cursor too (counts of the
shuffle buffer, byte offsets of its oldest held sample and of its reader; see
:meth:`ImageTextShardDataset._stream_entries`): it rebuilds the buffer by reading again from
the oldest held sample, one request per shard, and goes on; with ``access='random'`` a role
replays its epoch's order from the tar headers alone up to its position (no image decoded).
Either way the resumed run sees exactly the samples an uninterrupted run would have seen.
Augmentation randomness is drawn from a per-sample seed ``(seed, epoch, role, position)``, so
crops match too.

Bad samples raise :class:`BadSampleError` in the pipeline (or, for a missing image or
caption, before any decoding); they are skipped and their reasons travel with the next good sample
(``skipped_before`` in its metainfo) to :class:`BadSampleHook`. An unreadable shard (or tail)
travels the same way, counted as its estimated number of lost samples, with its path in
``bad_shards``. A remote shard is unreadable after ``remote_retries`` retries of a connection
error with exponential backoff (``remote_backoff * 2 ** attempt`` s); one whose reads fail
after its headers were scanned is counted once as an unreadable shard (path in ``bad_shards``)
and each of its samples met afterwards as an unreadable sample, without further waiting.
"""
import hashlib
import heapq
import json
import math
import os.path as osp
import random
import warnings
from collections import Counter
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import torch
from mmengine.dataset import Compose
from mmengine.dist import get_dist_info
from mmpretrain.registry import DATASETS, TRANSFORMS
from torch.utils.data import IterableDataset, get_worker_info

from .bad_samples import (BAD_SHARDS_KEY, FILTERED, MISSING_IMAGE, SKIPPED_KEY,
                          UNREADABLE_SAMPLE, UNREADABLE_SHARD, UNREADABLE_SHARD_SAMPLES,
                          BadSampleError, decode_caption)
from .remote_io import (REMOTE_BACKOFF, REMOTE_RETRIES, call_with_retries, is_remote,
                        is_transient, read_remote_bytes)
from .shard_mix import ShardSet, draw_weights, mix_seed, parse_shard_sets, role_units
from .shards import (CAPTION_EXT, IMAGE_EXTS, SampleRef, ShardReader,
                     image_ext_of, scan_shard)
from .shuffle_buffer import ShuffleBuffer
from .tar_stream import ShardStreamError, StreamSample, is_pipe, stream_shard_samples
from .transforms.formatting import set_metainfo_fields
from .transforms.loading import fuse_transforms

STREAM_STATE_KEY = 'stream_state'
ACCESS_MODES = ('stream', 'random')
# Ints of a stream cursor (see ImageTextShardDataset._stream_entries).
CURSOR_LEN = 9


class DataStreamError(RuntimeError):
    """The stream has nothing left to yield (every shard unreadable, say a server that went
    away or ignores range requests); the message names the shards and the last shard error.
    ``tools/train.py`` prints it as one line."""


class LostSample:
    """Stream entry standing for a buffered sample that a resumed stream could not read again
    (its shard failed on the second reading); counted as an unreadable sample."""

    def __init__(self, number: int) -> None:
        self.number = number


class ShardFailure:
    """Stream entry standing for a shard (or its tail) that could not be read.

    ``lost`` is the estimated number of samples of the role's unit that were not read (see
    :meth:`ImageTextShardDataset.raw_stream`); they count as bad samples.
    """

    def __init__(self, shard: str, message: str, lost: int = 1) -> None:
        self.shard = shard
        self.message = message
        self.lost = lost


def _read_json_file(path: str, remote: bool, retries: int, backoff: float):
    """Parsed JSON file, or None when it does not exist (for a remote one: cannot be fetched,
    after ``retries`` retries of a transient error)."""
    if not remote:
        if not osp.isfile(path):
            return None
        with open(path) as file:
            return json.load(file)
    try:
        data = call_with_retries(lambda: read_remote_bytes(path), path, retries, backoff)
    except ImportError:
        raise
    except Exception as error:
        if is_transient(error):
            warnings.warn(f'Cannot fetch {path} ({error!r}); sample counts from it are unknown')
        return None  # missing (fsspec: FileNotFoundError), or unreachable
    return json.loads(data)


def count_from_size_files(shards: Sequence[str], retries: int = 0,
                          backoff: float = REMOTE_BACKOFF) -> Optional[int]:
    """Samples in ``shards`` according to ``sizes.json`` (ours, open_clip's) or img2dataset's
    ``NNNNN_stats.json`` files; None when some shard is not covered.

    Files beside remote shards are fetched through fsspec (one request per folder for
    ``sizes.json``, one per shard it does not cover for ``*_stats.json``), retried
    ``retries`` times after a transient error, with ``backoff`` seconds before the first retry.
    """
    sizes: Dict[str, dict] = {}
    total = 0
    for shard in shards:
        if is_pipe(shard):
            return None  # a command's output: no folder to look in
        remote = is_remote(shard)
        folder, name = osp.split(shard)
        if folder not in sizes:
            sizes[folder] = _read_json_file(osp.join(folder, 'sizes.json'), remote, retries,
                                            backoff) or {}
        stats_path = osp.join(folder, name[:-len('.tar')] + '_stats.json')
        if name in sizes[folder]:
            total += int(sizes[folder][name])
            continue
        stats = (_read_json_file(stats_path, remote, retries, backoff)
                 if name.endswith('.tar') else None)
        if stats is None:
            return None
        total += int(stats.get('successes', 0))
    return total


def _estimate_lost(path: str, refs: List[SampleRef], part: int, parts: int,
                   readable_sizes: Sequence[int]) -> int:
    """Estimated samples of part ``part`` (of ``parts``) of an unreadable shard not read.

    The shard's size is taken from ``sizes.json`` / img2dataset's ``*_stats.json`` when they
    list it; otherwise it is estimated as the mean size of the readable shards this role has
    scanned so far in this epoch (so a resumed run's replay gives the same number). At least
    1 is counted, so an unreadable shard never goes unnoticed in the bad fraction.
    """
    size = count_from_size_files([path])
    if size is None:
        size = round(sum(readable_sizes) / len(readable_sizes)) if readable_sizes else 0
    return max(1, len(range(part, size, parts)) - len(refs[part::parts]))


def build_pipeline(pipeline: Sequence[Union[dict, callable]]) -> Compose:
    """Build transforms from mmpretrain's registry (configs need no ``default_scope``), with
    decoding and a following pillow crop fused (:func:`.transforms.loading.fuse_transforms`:
    the same result, fewer copies)."""
    return Compose(fuse_transforms([TRANSFORMS.build(t) if isinstance(t, dict) else t
                                    for t in pipeline]))


def attach_metainfo(output, info: dict):
    """Add ``info`` to a packed sample's DataSample metainfo, or to a plain results dict."""
    data_sample = output.get('data_samples') if isinstance(output, dict) else None
    if data_sample is not None and hasattr(data_sample, 'set_metainfo'):
        set_metainfo_fields(data_sample, info)
    else:
        output.update(info)
    return output


@contextmanager
def seeded_global_rngs(seed: int, restore: bool):
    """Seed ``random``, ``numpy`` and ``torch`` for one sample's augmentation.

    Args:
        seed (int): Per-sample seed.
        restore (bool): Put the previous states back afterwards; needed in the main process
            (``num_workers=0``) so data loading does not disturb the training's own RNG.
    """
    if restore:
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed & 0xFFFF_FFFF)
    torch.default_generator.manual_seed(seed)  # CPU only: never touch the CUDA generators
    try:
        yield
    finally:
        if restore:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


def shard_identity(url: str) -> str:
    """A shard URL without what may change between runs or must not be stored: the query
    and fragment (signed URLs) and the user part (``user:password@``)."""
    if is_pipe(url) or '://' not in url:
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rsplit('@', 1)[-1], parts.path, '', ''))


@DATASETS.register_module()
class ImageTextShardDataset(IterableDataset):
    """Endless, shuffled, rank- and worker-split stream of image-text pairs from tar shards.

    Args:
        shards (str | Sequence[str] | Sequence[dict]): Shard paths or brace patterns
            (``data/laion/{00000..01023}.tar``; several joined by ``::``), or several shard
            sets mixed by weight: ``[dict(urls=PATTERN(S), weight=0.7), dict(urls=...,
            weight=0.3)]``, a weight being the set's share of samples
            (:mod:`rils_mm.datasets.shard_mix`).
        pipeline (Sequence[dict]): Transforms applied to
            ``dict(key, shard, img_bytes, text[, json])``; usually ``LoadImageRGB``,
            ``RandomResizedCrop``, ``CLIPTokenize``, ``PackImageText``.
        seed (int): Seed of the shard and sample order; the same on every rank.
        shuffle (bool): Shuffle shards and samples (False: shard order, then file order).
        shuffle_buffer (int): Samples held by the shuffle buffer of each worker.
        rank (int, optional): This process's rank; default from ``mmengine.dist``.
        world_size (int, optional): Number of processes; default from ``mmengine.dist``.
        image_exts (Sequence[str]): Image extensions, in order of preference.
        caption_ext (str): Caption extension.
        load_json (bool): Parse ``KEY.json`` into ``results['json']`` when present.
        deterministic_augment (bool): Seed augmentation per sample (see module docs).
        max_warnings (int): Bad-sample warnings printed per worker (all are counted).
        num_samples (int, optional): Samples in one epoch (all shards), for ``len()``; read
            from ``sizes.json`` or img2dataset's ``*_stats.json`` beside the shards when not
            given. ``len()`` is nominal (the stream is endless); when unknown it is huge.
        samples_per_epoch (int, optional): For ``EpochBasedTrainLoop``: each pass over the
            dataloader yields this many samples (all ranks, rounded up to whole, equal numbers
            of batches per rank), continuing the stream where the last pass stopped. None:
            one endless pass (``IterBasedTrainLoop``).
        batch_size (int, optional): The dataloader's batch size; needed with
            ``samples_per_epoch``.
        remote_retries (int): Remote shards (URLs read through fsspec): retries of a scan or
            read that met a connection error (timeouts, resets, HTTP 5xx) before the shard is
            skipped and counted as unreadable.
        remote_backoff (float): Remote shards: seconds before the first retry, doubled before
            each further one.
        access (str): ``'stream'`` (default): each shard is read front to back in one stream
            (one request per remote shard, members parsed as they arrive; a resume opens each
            shard it reads from at the byte offset of a sample). ``'random'``: the tar headers
            are scanned first and each sample is read by its offsets (range requests for
            remote shards: about two requests per sample; not for ``pipe:`` shards).
        resampled (bool): Draw shards with replacement, seeded, each role from its own
            shards (open_clip's ``--dataset-resampled``; drawn at random even with
            ``shuffle=False``, which then only turns the sample buffer off); set
            ``samples_per_epoch`` (open_clip's ``--train-num-samples``) for
            ``EpochBasedTrainLoop``.
        upsampling_factors (str | Sequence[float], optional): open_clip's
            ``--train-data-upsampling-factors``: one factor per ``::``-joined part of
            ``shards`` (``'1::2'``), each shard of a part drawn with its factor's weight.
    """

    UNKNOWN_LENGTH = 1 << 40
    MAX_WORKERS = 64

    def __init__(self,
                 shards: Union[str, Sequence[str]],
                 pipeline: Sequence[dict] = (),
                 seed: int = 0,
                 shuffle: bool = True,
                 shuffle_buffer: int = 1000,
                 rank: Optional[int] = None,
                 world_size: Optional[int] = None,
                 image_exts: Sequence[str] = IMAGE_EXTS,
                 caption_ext: str = CAPTION_EXT,
                 load_json: bool = False,
                 deterministic_augment: bool = True,
                 max_warnings: int = 5,
                 num_samples: Optional[int] = None,
                 samples_per_epoch: Optional[int] = None,
                 batch_size: Optional[int] = None,
                 remote_retries: int = REMOTE_RETRIES,
                 remote_backoff: float = REMOTE_BACKOFF,
                 access: str = 'stream',
                 resampled: bool = False,
                 upsampling_factors: Optional[Union[str, Sequence[float]]] = None) -> None:
        super().__init__()
        if access not in ACCESS_MODES:
            raise ValueError(f'access={access!r}: expected one of {ACCESS_MODES}')
        self.access = access
        self.shards, sets = parse_shard_sets(shards, upsampling_factors)
        self.resampled = bool(resampled)
        if access == 'random' and any(is_pipe(shard) for shard in self.shards):
            raise ValueError("pipe: shards can only be streamed: use access='stream'")
        self.remote_retries = int(remote_retries)
        self.remote_backoff = float(remote_backoff)
        mixed = len(sets) > 1 or self.resampled
        # Samples per set (None: unknown), from sizes.json or img2dataset's *_stats.json: for
        # len() and for weights that are shares of samples (fetched only when needed).
        sizes = [None] * len(sets)
        if num_samples is None or (mixed and any(kind == 'weight' for _, _, kind, _ in sets)):
            sizes = [count_from_size_files(self.shards[start:stop], self.remote_retries,
                                           self.remote_backoff) for start, stop, _, _ in sets]
        self.num_samples = num_samples if num_samples is not None else (
            sum(sizes) if None not in sizes else None)
        # Mixed or resampled: units are drawn per role (shard_mix); else the plain epoch order.
        self.shard_sets: Optional[List[ShardSet]] = (draw_weights(sets, sizes) if mixed
                                                     else None)
        self.pipeline = build_pipeline(pipeline)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.shuffle_buffer = max(1, int(shuffle_buffer)) if shuffle else 1
        dist_rank, dist_world_size = get_dist_info()
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_world_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f'rank={self.rank} is outside world_size={self.world_size}')
        self.image_exts = tuple(ext.lower() for ext in image_exts)
        self.caption_ext = caption_ext
        self.load_json = load_json
        self.deterministic_augment = deterministic_augment
        self.max_warnings = max_warnings
        self.samples_per_epoch = samples_per_epoch
        self.batch_size = batch_size
        if samples_per_epoch is not None:
            if not batch_size:
                raise ValueError('samples_per_epoch needs batch_size (the dataloader\'s) to '
                                 'cut equal numbers of batches on every rank')
            self.batches_per_rank = math.ceil(samples_per_epoch / (self.world_size * batch_size))
        self._resume_state: Optional[dict] = None
        self._resume_batches_done = 0
        # (epoch, position, valid, has cursor, cursor...) per role, in shared memory so that
        # worker processes, persistent or not, pass their position on to the next pass over
        # the dataloader.
        self._positions = torch.zeros((self.MAX_WORKERS, 4 + CURSOR_LEN),
                                      dtype=torch.int64).share_memory_()
        self._reader = ShardReader(retries=self.remote_retries, backoff=self.remote_backoff)

    @property
    def metainfo(self) -> dict:
        """Dataset meta information (what the training loop logs)."""
        return dict(num_shards=len(self.shards), shards=f'{self.shards[0]} ...')

    def __len__(self) -> int:
        """Nominal samples per rank per epoch (mmengine's LoggerHook asks for a length)."""
        if self.samples_per_epoch is not None:
            return self.batches_per_rank * self.batch_size
        if self.num_samples is None:
            return self.UNKNOWN_LENGTH
        return math.ceil(self.num_samples / self.world_size)

    # ----------------------------------------------------------------- resume
    def stream_signature(self) -> dict:
        """What a saved stream position refers to: the shard list (its length, a digest, the
        first and last URL), the mixture's draw weights and the settings that order the
        stream. A position is meaningful only for a dataset with the same signature
        (:class:`~rils_mm.engine.hooks.DataResumeHook` compares them on resume)."""
        shards = [shard_identity(shard) for shard in self.shards]
        digest = hashlib.sha256('\n'.join(shards).encode('utf-8', 'surrogateescape'))
        return dict(
            num_shards=len(shards), shards_sha256=digest.hexdigest()[:16],
            first_shard=shards[0], last_shard=shards[-1],
            draw_weights=(None if self.shard_sets is None else
                          [(s.start, s.stop, round(s.draw_weight, 12)) for s in self.shard_sets]),
            resampled=self.resampled, seed=self.seed, shuffle=bool(self.shuffle),
            shuffle_buffer=self.shuffle_buffer, access=self.access,
            samples_per_epoch=self.samples_per_epoch)

    def set_resume_state(self, state: Optional[dict]) -> None:
        """Start the next iteration where a previous run of this rank stopped.

        Args:
            state (dict, optional): ``dict(num_workers, next_role, roles={role: (epoch,
                position)})`` as recorded by :class:`DataResumeHook`; None starts afresh.
        """
        self._resume_state = state
        self._resume_batches_done = 0
        self._positions.zero_()

    def skip_batches(self, done: int) -> None:
        """Make the next pass the rest of a nominal epoch whose first ``done`` batches (of this
        rank) were trained before the checkpoint (``EpochBasedTrainLoop`` resuming mid-epoch).

        The stream positions come from :meth:`set_resume_state`; this only shortens the pass
        and keeps each remaining batch with the role that would have produced it.
        """
        if done and (self.samples_per_epoch is None or not self._resume_state):
            raise ValueError('skip_batches needs samples_per_epoch and a resume state '
                             '(set_resume_state, done by DataResumeHook)')
        # Workers copy this when they start (a persistent worker clears its copy after the
        # pass); the loop calls skip_batches(0) after the pass for later worker starts.
        self._resume_batches_done = int(done)

    def _start_of(self, worker_id: int, num_workers: int) -> Tuple[int, int, int, int,
                                                                 Optional[tuple]]:
        """(role in this rank, first epoch, positions of that epoch already done, batches of
        the nominal epoch already trained, stream cursor or None) for a worker."""
        if num_workers > len(self._positions):
            raise ValueError(f'At most {len(self._positions)} dataloader workers are supported')
        finite = self.samples_per_epoch is not None
        done = self._resume_batches_done if finite else 0
        if finite and not done and self._positions[worker_id, 2]:
            # A later pass over the dataloader: go on where this role's last pass stopped.
            row = self._positions[worker_id].tolist()
            return worker_id, row[0], row[1], 0, tuple(row[4:]) if row[3] else None
        state = self._resume_state
        if not state:
            return worker_id, 0, 0, 0, None
        if state['num_workers'] != num_workers:
            raise ValueError(
                f'Cannot resume the shard stream exactly: the checkpoint was written with '
                f'num_workers={state["num_workers"]} per rank, this run uses {num_workers}. '
                f'Resume with the same num_workers (and world size).')
        # Endless stream, or the rest of a nominal epoch: the worker due next takes over role
        # 0's place in the round robin. A whole nominal epoch restarts it at worker 0.
        role = worker_id if finite and not done else (worker_id + state['next_role']) % num_workers
        saved = state['roles'].get(role, state['roles'].get(str(role), (0, 0)))
        cursor = saved[2] if len(saved) > 2 and saved[2] is not None else None
        if cursor is not None and (self.access != 'stream' or len(cursor) != CURSOR_LEN):
            cursor = None  # a position from the other access mode: replayed, not reopened
        return (role, int(saved[0]), int(saved[1]), done,
                tuple(int(v) for v in cursor) if cursor is not None else None)

    # ------------------------------------------------------------------ order
    def epoch_units(self, epoch: int, num_roles: int) -> Tuple[List[Tuple[int, int]], int]:
        """The shuffled list of (shard index, part) units of an epoch, and parts per shard."""
        parts = max(1, math.ceil(num_roles / len(self.shards)))
        units = [(shard, part) for shard in range(len(self.shards)) for part in range(parts)]
        if self.shuffle:
            random.Random(mix_seed(self.seed, epoch)).shuffle(units)
        return units, parts

    def role_units(self, epoch: int, role: int, num_roles: int) -> List[Tuple[int, int, int]]:
        """The (shard index, part, parts) units role ``role`` of ``num_roles`` reads in
        ``epoch``: its share of :meth:`epoch_units`, or, for mixed or resampled shard sets,
        its own draws (:func:`rils_mm.datasets.shard_mix.role_units`)."""
        if self.shard_sets is not None:
            return role_units(self.shard_sets, self.seed, epoch, role, num_roles,
                              self.resampled, self.shuffle)
        units, parts = self.epoch_units(epoch, num_roles)
        return [(shard, part, parts) for shard, part in units[role::num_roles]]

    def raw_stream(self, epoch: int, role: int, num_roles: int
                   ) -> Iterator[Union[SampleRef, StreamSample, ShardFailure, LostSample]]:
        """Samples (and shard failures) of one role in one epoch, shuffled: the order both
        training and a replay up to a position follow.

        ``access='stream'``: samples read from the shard streams (:class:`StreamSample`, with
        their bytes); ``'random'``: references from the tar headers (:class:`SampleRef`).
        """
        if self.access == 'random':
            yield from self._random_access_refs(epoch, role, num_roles)
            return
        for item, _ in self._stream_entries(epoch, role, num_roles):
            yield item

    def _random_access_refs(self, epoch: int, role: int,
                            num_roles: int) -> Iterator[Union[SampleRef, ShardFailure]]:
        """``access='random'``: references from the tar headers, shuffled."""
        rng = random.Random(mix_seed(self.seed, epoch, role, num_roles))
        buffer: List[SampleRef] = []
        readable_sizes: List[int] = []
        for shard_index, part, parts in self.role_units(epoch, role, num_roles):
            path = self.shards[shard_index]
            refs, error = scan_shard(path, self.remote_retries, self.remote_backoff)
            if error is None:
                readable_sizes.append(len(refs))
                self._reader.forget_failure(path)  # readable again: its samples are tried
            else:
                yield ShardFailure(path, str(error),
                                   _estimate_lost(path, refs, part, parts, readable_sizes))
            for ref in refs[part::parts]:
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(ref)
                    continue
                slot = rng.randrange(len(buffer))
                yield buffer[slot]
                buffer[slot] = ref
        rng.shuffle(buffer)
        yield from buffer

    def _stream_entries(self, epoch: int, role: int, num_roles: int,
                        cursor: Optional[tuple] = None) -> Iterator[tuple]:
        """``access='stream'``: (entry, cursor) pairs of one role in one epoch.

        The role's units are read one after the other as streams; the samples go through a
        :class:`ShuffleBuffer`. The cursor after each entry is ``(n_in, n_out, u0, o0, s0, i0,
        u1, o1, s1)``: samples that went into and came out of the buffer; where the oldest
        sample still held lies (unit number ``u0`` in this role's list, byte offset ``o0`` of
        its first header, index ``s0`` in its shard, number ``i0`` in this role's input); and
        where the reader stands (the next sample: unit ``u1``, offset ``o1``, index ``s1``).

        Given a cursor, the stream continues after it: the buffer's slots are found by
        :meth:`ShuffleBuffer.simulate`, filled by reading again from the oldest held sample
        (one request per shard, from that offset), and the reading goes on from the reader's
        position (in the same stream when it is the same shard).
        """
        mine = self.role_units(epoch, role, num_roles)
        buffer = ShuffleBuffer(self.shuffle_buffer,
                               random.Random(mix_seed(self.seed, epoch, role, num_roles)))
        keep = self.image_exts + (self.caption_ext, ) + (('json', ) if self.load_json else ())
        heap: List[tuple] = []  # (number, unit, offset, index) of held samples, lazily pruned
        held = set()
        restore: Dict[int, int] = {}  # sample number -> buffer slot, while refilling
        if cursor is not None:
            n_in, n_out, unit, offset, index, number, *reader = cursor
            buffer.simulate(n_in, n_out)
            restore = {item: slot for slot, item in enumerate(buffer.items)}
            if not restore:
                (unit, offset, index), number = reader, n_in
        else:
            n_in, unit, offset, index, number, reader = 0, 0, 0, 0, 0, [0, 0, 0]
        readable_sizes: List[int] = []
        skip_below = 0  # in the reader's shard after a refill: samples read before it

        def state() -> tuple:
            while heap and heap[0][0] not in held:
                heapq.heappop(heap)
            oldest = heap[0] if heap else (buffer.n_in, *reader)
            return (buffer.n_in, buffer.n_out, oldest[1], oldest[2], oldest[3], oldest[0],
                    *reader)

        def let_out(item):
            if isinstance(item, int):
                return LostSample(item)
            held.discard(item[0])
            return item[2]

        while unit < len(mine):
            shard_index, part, parts = mine[unit]
            path = self.shards[shard_index]
            jump = None
            try:
                for sample in stream_shard_samples(path, offset, index, keep,
                                                   self.remote_retries, self.remote_backoff):
                    reader = [unit, sample.next_offset, sample.index + 1]
                    if sample.index % parts != part or sample.offset < skip_below:
                        continue
                    entry = (number, unit, sample)
                    number += 1
                    if restore:
                        slot = restore.pop(entry[0], None)
                        if slot is not None:
                            buffer.items[slot] = entry
                            held.add(entry[0])
                            heapq.heappush(heap, (entry[0], unit, sample.offset, sample.index))
                        if number >= n_in or not restore:
                            # Refilled: go on where the interrupted reader stood, in this
                            # stream when it is the same shard.
                            restore.clear()
                            number = n_in
                            if unit != cursor[6]:
                                jump = cursor[6:]
                                break
                            skip_below = cursor[7]
                        continue
                    out = buffer.push(entry)
                    held.add(entry[0])
                    heapq.heappush(heap, (entry[0], unit, sample.offset, sample.index))
                    if out is not None:
                        out = let_out(out)
                        yield out, state()
                else:
                    readable_sizes.append(reader[2] if reader[0] == unit else index)
            except ShardStreamError as error:
                if restore:  # read before the interruption: its failure was reported then
                    restore.clear()
                    jump, number = cursor[6:], n_in
                else:
                    reached = reader[2] if reader[0] == unit else index
                    reader = [unit + 1, 0, 0]
                    yield ShardFailure(path, str(error), self._lost_in(
                        path, part, parts, reached, readable_sizes)), state()
            skip_below = 0
            if jump is not None:
                unit, offset, index = jump
                reader = list(jump)
                continue
            unit, offset, index = unit + 1, 0, 0
            reader = [unit, 0, 0]
        for out in buffer.drain():
            yield let_out(out), state()

    @staticmethod
    def _lost_in(path: str, part: int, parts: int, reached: int,
                 readable_sizes: Sequence[int]) -> int:
        """Estimated samples of part ``part`` (of ``parts``) of a shard whose stream failed
        after ``reached`` samples: its size from ``sizes.json`` (or img2dataset's
        ``*_stats.json``), else the mean size of the shards this role read whole; at least 1.
        """
        size = None if is_pipe(path) else count_from_size_files([path])
        if size is None:
            size = round(sum(readable_sizes) / len(readable_sizes)) if readable_sizes else 0
        return max(1, len(range(part, size, parts)) - len(range(part, min(reached, size),
                                                                parts)))

    # --------------------------------------------------------------- samples
    def load_sample(self, ref: SampleRef, seed: Optional[int] = None, restore_rng: bool = False):
        """Read, check and transform one sample.

        Raises:
            BadSampleError: The sample must be skipped.
        """
        where = f'{ref.shard}:{ref.key}'
        streamed = isinstance(ref, StreamSample)  # bytes at hand; else read by offsets
        read = (lambda ext: ref.members[ext]) if streamed else (
            lambda ext: self._reader.read(ref, ext))
        try:
            image_ext = image_ext_of(ref, self.image_exts)
            if image_ext is not None and not streamed:
                # Remote shards: one request for the members used (nothing for local files).
                self._reader.prefetch(ref, (self.caption_ext, image_ext) +
                                      (('json', ) if self.load_json else ()))
            caption_raw = read(self.caption_ext) if self.caption_ext in ref.members else None
            if image_ext is None:
                raise BadSampleError(MISSING_IMAGE, f'{where} has {sorted(ref.members)}')
            results = dict(key=ref.key, shard=ref.shard, text=decode_caption(caption_raw, where))
            results['img_bytes'] = read(image_ext)
            if self.load_json and 'json' in ref.members:
                try:
                    results['json'] = json.loads(read('json'))
                except ValueError:
                    results['json'] = None  # metadata is optional; a broken one costs nothing
        except OSError as error:
            raise BadSampleError(UNREADABLE_SAMPLE, f'{where}: {error}') from None
        if seed is None:
            output = self.pipeline(results)
        else:
            with seeded_global_rngs(seed, restore=restore_rng):
                output = self.pipeline(results)
        if output is None:
            raise BadSampleError(FILTERED, where)
        return output

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        worker_id, num_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        role, start_epoch, skip, done, cursor = self._start_of(worker_id, num_workers)
        global_role = self.rank * num_workers + role
        num_roles = self.world_size * num_workers
        # Nominal epochs: worker w yields batches w, w + W, ... of the rank's batches (of those
        # after the first ``done`` when resuming mid-epoch).
        quota = None
        if self.samples_per_epoch is not None:
            quota = len(range(done + worker_id, self.batches_per_rank,
                              num_workers)) * self.batch_size
            self._resume_batches_done = 0  # this worker's copy: the next pass is whole
            if quota == 0:
                return
        skipped: Counter = Counter()
        bad_shards: List[str] = []
        warnings_left = self.max_warnings
        epoch, idle_epochs = start_epoch, 0
        last_shard_error = None  # named in the error when nothing is readable
        while True:
            good_in_epoch = position = 0
            if cursor is not None:
                # Reopen the shards where the stream stood (the buffer is read again).
                entries = self._stream_entries(epoch, global_role, num_roles, cursor)
                first = skip + 1
            elif self.access == 'stream':
                entries = self._stream_entries(epoch, global_role, num_roles)
                first = 1
            else:
                entries = ((ref, None) for ref in self.raw_stream(epoch, global_role, num_roles))
                first = 1
            for position, (item, item_cursor) in enumerate(entries, first):
                if epoch == start_epoch and position <= skip:
                    # Replaying up to the resume point: tar headers only ('random'), or the
                    # streams without decoding (a checkpoint without a stream cursor).
                    continue
                if isinstance(item, LostSample):
                    skipped[UNREADABLE_SAMPLE] += 1
                    continue
                if isinstance(item, ShardFailure):
                    warnings.warn(f'Skipping unreadable shard (or its tail): {item.message} '
                                  f'(about {item.lost} sample(s) lost, counted as bad)')
                    skipped[UNREADABLE_SHARD] += 1
                    skipped[UNREADABLE_SHARD_SAMPLES] += item.lost
                    bad_shards.append(item.shard)
                    last_shard_error = item.message
                    continue
                seed = (mix_seed(self.seed, epoch, global_role, position)
                        if self.deterministic_augment else None)
                try:
                    output = self.load_sample(item, seed, restore_rng=worker is None)
                except BadSampleError as error:
                    skipped[error.reason] += 1
                    for shard in self._reader.pop_failures():
                        # A remote shard that stopped answering after its scan: counted once
                        # as a shard, its samples one by one as unreadable (no more waiting).
                        warnings.warn(f'Skipping the rest of remote shard {shard}: {error}')
                        skipped[UNREADABLE_SHARD] += 1
                        bad_shards.append(shard)
                    if warnings_left > 0:
                        warnings_left -= 1
                        warnings.warn(f'Skipping bad sample ({error}); further ones are '
                                      f'counted in the training log')
                    continue
                info = {STREAM_STATE_KEY: (role, epoch, position, num_workers, item_cursor),
                        SKIPPED_KEY: dict(skipped)}
                if bad_shards:
                    info[BAD_SHARDS_KEY] = bad_shards
                skipped, bad_shards = Counter(), []
                good_in_epoch += 1
                # Where this role stands, for the next pass over the dataloader.
                self._positions[role] = torch.tensor(
                    [epoch, position, 1, item_cursor is not None] +
                    list(item_cursor or (0, ) * CURSOR_LEN))
                yield attach_metainfo(output, info)
                if quota is not None:
                    quota -= 1
                    if quota == 0:
                        return
            # An endless stream with nothing to yield would hang the trainer: fail loudly.
            idle_epochs = idle_epochs + 1 if (skip == 0 and good_in_epoch == 0) else 0
            if idle_epochs >= 3:
                raise DataStreamError(
                    f'Rank {self.rank} dataloader worker {worker_id} (role {global_role} of '
                    f'{num_roles}) found no usable sample in {idle_epochs} epochs of '
                    f'{len(self.shards)} shard(s) (skipped: {dict(skipped) or "none"}). '
                    + (f'Last shard error: {last_shard_error}. ' if last_shard_error else '')
                    + 'Check the shards with tools/dataset_converters/inspect_shards.py.')
            epoch += 1
            skip, cursor = 0, None
