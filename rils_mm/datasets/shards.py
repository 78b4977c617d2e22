"""Reading img2dataset-style webdataset tar shards: shard lists and header-only scanning.

A shard is a tar file whose members come in groups sharing a key: ``KEY.jpg`` (or ``.png``,
``.webp``, ...), ``KEY.txt`` and optionally ``KEY.json``. :func:`scan_shard` walks only the tar
headers (tarfile seeks over the member data), returning one :class:`SampleRef` per key with the
byte offset and size of each member; :class:`ShardReader` later reads just the members needed.
Scanning a 10k-sample shard costs a fraction of a second and never decodes an image, which is
what makes skipping ahead on resume cheap.

Shards on object stores and HTTP. A shard named by a URL with a protocol (``s3://``, ``gs://``,
``https://``, ``memory://``, ...) is opened through fsspec (:mod:`.remote_io`), with range
reads: the scan fetches the headers through a small read-ahead block
(:data:`.remote_io.REMOTE_SCAN_BLOCK_SIZE`: a header and the short caption/json members after
it usually come in one request, never the image data), and :class:`ShardReader` fetches exactly
the bytes of the members read (no read-ahead cache; :meth:`ShardReader.prefetch` gets a
sample's members in one request), so header-only resume and sample-level shuffling work as on
local files; each read costs a round trip, though (about one request per sample for the scan,
one per sample read). Local paths keep using plain ``open()``. fsspec needs a package per
protocol (``aiohttp`` for HTTP, ``s3fs`` for S3, ``gcsfs`` for GCS); a missing one is named in
a one-line error when the shard list is expanded. See docs/data.md.

Credentials come only from the environment (see :mod:`.remote_io`), never from a config.

A connection error while opening, scanning or reading a remote shard (an ``OSError`` such as a
reset connection or a timeout, an aiohttp client error, an HTTP 5xx/408/429 answer; see
:func:`.remote_io.is_transient`) is retried with exponential backoff
(``backoff * 2 ** attempt`` seconds, ``retries`` times). A missing or forbidden object, a
broken tar and a server that ignores range requests are not retried. A shard that still fails
is reported like an unreadable local shard: :func:`scan_shard` returns it with an error, and
:class:`ShardReader` marks it failed so the rest of its samples fail at once instead of each
waiting through the retries.
"""
import glob
import os
import os.path as osp
import re
import tarfile
from collections import OrderedDict
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from braceexpand import braceexpand

from .remote_io import (REMOTE_BACKOFF, REMOTE_RETRIES, PermanentReadError, call_with_retries,
                        check_remote_support, describe_error, is_remote, is_transient,
                        open_remote)

IMAGE_EXTS = ('jpg', 'jpeg', 'png', 'webp', 'bmp', 'tif', 'tiff')
CAPTION_EXT = 'txt'

# webdataset's convention: the key is everything before the first dot of the file name.
_KEY_EXT = re.compile(r'^((?:.*/|)[^./]+)\.([^/]*)$')


class SampleRef(NamedTuple):
    """Where one sample's members lie inside a shard.

    Attributes:
        shard (str): Shard path.
        key (str): Sample key (file name up to the first dot).
        members (dict): Lower-case extension -> (byte offset of the data, size in bytes).
    """
    shard: str
    key: str
    members: Dict[str, Tuple[int, int]]


class ShardReadError(PermanentReadError):
    """A shard that cannot be opened or whose tar structure is broken (an ``OSError``, not
    retried)."""


def expand_shard_urls(urls: Union[str, Sequence[str]], check_exists: bool = True) -> List[str]:
    """Expand a shard specification into a list of paths.

    Args:
        urls (str | Sequence[str]): A path pattern with brace ranges
            (``data/laion/{00000..01023}.tar``), a folder (all its ``*.tar``, sorted), several
            of these joined by ``::`` (open_clip's syntax, so fsspec's chained ``a::b://`` URLs
            are not supported), or a list of them. Remote URLs (``s3://bucket/{000..099}.tar``,
            ``https://...``; see :func:`is_remote`) take brace patterns and lists, not folders.
        check_exists (bool): Raise when a listed local shard does not exist. Remote shards are
            not looked up here (that would cost a request per shard); a missing one is
            reported as unreadable when the stream reaches it.

    Returns:
        list[str]: Shard paths in order.

    Raises:
        FileNotFoundError: Naming the first missing shards and the pattern they came from.
        ValueError: When the specification expands to nothing.
        ImportError: A remote URL whose fsspec backend is not installed (one line naming it).
    """
    patterns = [urls] if isinstance(urls, str) else list(urls)
    paths: List[str] = []
    for pattern in patterns:
        for part in str(pattern).split('::'):
            if part.startswith('pipe:'):  # webdataset's pipe:COMMAND; braces as for paths
                paths.extend(braceexpand(part))
                continue
            if is_remote(part):
                expanded = list(braceexpand(part))
                check_remote_support(part)  # imports only: fail early, in one line
                paths.extend(expanded)
                continue
            if osp.isdir(part):
                expanded = sorted(glob.glob(osp.join(part, '*.tar')))
                if not expanded:
                    raise FileNotFoundError(f'Shard folder {part!r} holds no .tar file')
            else:
                expanded = list(braceexpand(part))
            if check_exists:
                missing = [path for path in expanded if not osp.isfile(path)]
                if missing:
                    shown = ', '.join(missing[:3]) + (' ...' if len(missing) > 3 else '')
                    raise FileNotFoundError(
                        f'{len(missing)} of {len(expanded)} shard(s) from pattern {part!r} do '
                        f'not exist: {shown}')
            paths.extend(expanded)
    if not paths:
        raise ValueError(f'Shard specification {urls!r} names no shard')
    return paths


def split_key(name: str) -> Tuple[Optional[str], Optional[str]]:
    """Split a member name into (key, lower-case extension); (None, None) if it has no dot."""
    match = _KEY_EXT.match(name)
    if match is None:
        return None, None
    return match.group(1), match.group(2).lower()


def scan_shard(path: str, retries: int = REMOTE_RETRIES,
               backoff: float = REMOTE_BACKOFF) -> Tuple[List[SampleRef], Optional[ShardReadError]]:
    """List the samples of a shard from its tar headers, without reading member data.

    Consecutive members with the same key form a sample (as in webdataset); a key that
    repeats an extension starts a new sample.

    Args:
        path (str): Shard path, or URL of a remote shard (read by ranges through fsspec).
        retries (int): Remote shards: retries of a scan that met a transient error
            (:func:`is_transient`), each a fresh scan of the whole shard.
        backoff (float): Remote shards: seconds before the first retry, doubled after each.

    Returns:
        tuple: The samples read, and a :class:`ShardReadError` if the shard could not be read
        to its end (the samples before the damage are still returned; none when a remote
        shard could not be fetched at all, after the retries).
    """
    if is_remote(path):
        return _scan_remote(path, retries, backoff)
    refs: List[SampleRef] = []
    try:
        file_size = osp.getsize(path)
        with tarfile.open(path, mode='r:') as tar:
            _collect_refs(path, tar, file_size, refs)
    except (tarfile.TarError, OSError, EOFError) as exc:
        return refs, ShardReadError(f'Cannot read shard {path}: {exc}')
    return refs, None


def _collect_refs(path: str, tar: tarfile.TarFile, file_size: int,
                  refs: List[SampleRef]) -> None:
    """Append the samples of an open tar to ``refs``; raise at the first damage (the sample
    being read then is incomplete and left out)."""
    key, members = None, {}
    for info in tar:
        if not info.isfile():
            continue
        member_key, ext = split_key(info.name)
        if member_key is None:
            continue
        if info.offset_data + info.size > file_size:
            raise EOFError(f'member {info.name} runs past the end of the file')
        if member_key != key or ext in members:
            if members:
                refs.append(SampleRef(path, key, members))
            key, members = member_key, {}
        members[ext] = (info.offset_data, info.size)
    # A complete tar ends with two zero blocks; without them it was cut short (a cut
    # at a member boundary is otherwise invisible to tarfile).
    if tar.offset + 2 * tarfile.BLOCKSIZE > file_size:
        raise EOFError('no end-of-archive marker, the file was cut short')
    if members:
        refs.append(SampleRef(path, key, members))


def _scan_remote_once(url: str) -> Tuple[List[SampleRef], Optional[Exception]]:
    """One header scan by range reads; returns the damage found in the tar (not retried) and
    raises I/O errors (for :func:`call_with_retries` to judge)."""
    refs: List[SampleRef] = []
    with open_remote(url, cache_type='readahead') as handle:
        handle.seek(0, os.SEEK_END)
        file_size = handle.tell()
        handle.seek(0)
        try:
            with tarfile.open(fileobj=handle, mode='r:') as tar:
                _collect_refs(url, tar, file_size, refs)
        except (tarfile.TarError, EOFError) as exc:
            return refs, exc
    return refs, None


def _scan_remote(url: str, retries: int,
                 backoff: float) -> Tuple[List[SampleRef], Optional[ShardReadError]]:
    try:
        refs, damage = call_with_retries(lambda: _scan_remote_once(url), url, retries, backoff)
    except ImportError:
        raise  # a setup problem, not a bad shard
    except Exception as exc:
        # Any other failure (connection errors after the retries, a missing object, a
        # backend's own error type) skips the shard rather than stopping the run; the stream
        # counts it and warns with this message.
        attempts = f' (after {retries + 1} attempts)' if is_transient(exc) else ''
        return [], ShardReadError(f'Cannot read shard {url}{attempts}: {describe_error(exc)}')
    if damage is not None:
        return refs, ShardReadError(f'Cannot read shard {url}: {damage}')
    return refs, None


class ShardReader:
    """Reads member bytes by offset, keeping a few shard files open.

    Local shards are read with plain ``open()``. Remote shards (:func:`is_remote`) are opened
    through fsspec without a read-ahead cache, so a read fetches exactly one member, or, after
    :meth:`prefetch`, the members a sample needs in one request; a read that meets a transient
    error is retried on a freshly opened file, and a shard whose read still fails is marked
    failed: its later reads raise at once (see :meth:`pop_failures`).

    Args:
        max_open (int): Files kept open (a shuffle buffer spans a couple of shards).
        retries (int): Remote shards: retries of a read after a transient error.
        backoff (float): Remote shards: seconds before the first retry, doubled after each.
    """

    def __init__(self, max_open: int = 4, retries: int = REMOTE_RETRIES,
                 backoff: float = REMOTE_BACKOFF) -> None:
        self.max_open = max_open
        self.retries = retries
        self.backoff = backoff
        self._files: 'OrderedDict[str, object]' = OrderedDict()
        self._failed: Dict[str, str] = {}  # remote shard -> why its reads stopped
        self._new_failures: List[str] = []
        self._span: Optional[Tuple[str, int, bytes]] = None  # (shard, offset, bytes) prefetched
        self._pid = os.getpid()

    # Coalesce a sample's members into one request when the bytes between them (tar headers,
    # padding, members not asked for) stay below this.
    MAX_PREFETCH_GAP = 64 * 1024

    def prefetch(self, ref: SampleRef, exts: Sequence[str]) -> None:
        """Remote shards: fetch members ``exts`` of ``ref`` (adjacent in the tar) in one
        request, for the :meth:`read` calls that follow; nothing for local shards.

        Raises:
            OSError: As :meth:`read`.
        """
        if not is_remote(ref.shard):
            return
        self._check_process()
        spans = [ref.members[ext] for ext in dict.fromkeys(exts) if ext in ref.members]
        if len(spans) < 2:
            return
        start = min(offset for offset, _ in spans)
        end = max(offset + size for offset, size in spans)
        if end - start - sum(size for _, size in spans) > self.MAX_PREFETCH_GAP:
            return  # far apart: reading them one by one costs fewer bytes
        self._span = None
        self._span = (ref.shard, start, self._read_remote(ref.shard, start, end - start))

    def read(self, ref: SampleRef, ext: str) -> bytes:
        """Bytes of member ``KEY.ext`` of ``ref``.

        Raises:
            OSError: The member cannot be read (:class:`ShardReadError` for a remote shard
                that failed after the retries, or failed before).
        """
        offset, size = ref.members[ext]
        self._check_process()
        if is_remote(ref.shard):
            span = self._span
            if (span is not None and span[0] == ref.shard and span[1] <= offset
                    and offset + size <= span[1] + len(span[2])):
                data = span[2][offset - span[1]:offset - span[1] + size]
            else:
                data = self._read_remote(ref.shard, offset, size)
        else:
            handle = self._handle(ref.shard, lambda: open(ref.shard, 'rb'))
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise OSError(f'{ref.shard}: member {ref.key}.{ext} is cut short '
                          f'({len(data)} of {size} bytes)')
        return data

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            # Files inherited by a forked dataloader worker share their offsets (and, remote,
            # the parent's event loop) with the parent: this process opens its own.
            self._files.clear()
            self._span = None
            self._pid = os.getpid()

    def _handle(self, shard: str, opener: Callable[[], object]):
        """The open file of ``shard``, opened with ``opener()`` if needed (LRU of max_open)."""
        handle = self._files.get(shard)
        if handle is None:
            handle = opener()
            self._files[shard] = handle
            if len(self._files) > self.max_open:
                self._files.popitem(last=False)[1].close()
        else:
            self._files.move_to_end(shard)
        return handle

    def _read_remote(self, shard: str, offset: int, size: int) -> bytes:
        if shard in self._failed:
            raise ShardReadError(f'{shard}: not read, the shard failed before: '
                                 f'{self._failed[shard]}')

        def attempt() -> bytes:
            try:
                handle = self._handle(shard, lambda: open_remote(shard, cache_type='none'))
                handle.seek(offset)
                return handle.read(size)
            except Exception:
                self._drop(shard)  # the next attempt opens a fresh file (new connection)
                raise

        try:
            return call_with_retries(attempt, shard, self.retries, self.backoff)
        except ImportError:
            raise
        except Exception as exc:
            attempts = f' after {self.retries + 1} attempts' if is_transient(exc) else ''
            self._failed[shard] = f'{describe_error(exc)}{attempts}'
            self._new_failures.append(shard)
            raise ShardReadError(f'Cannot read shard {shard}{attempts}: '
                                 f'{describe_error(exc)}') from exc

    def _drop(self, shard: str) -> None:
        handle = self._files.pop(shard, None)
        if handle is not None:
            try:
                handle.close()
            except Exception:  # a broken remote file may fail to close; it is dropped anyway
                pass

    def pop_failures(self) -> List[str]:
        """Remote shards marked failed since the last call (each reported once)."""
        failures, self._new_failures = self._new_failures, []
        return failures

    def forget_failure(self, shard: str) -> None:
        """Try ``shard`` again (called when its headers were scanned again successfully)."""
        self._failed.pop(shard, None)

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self._span = None

    def __getstate__(self):
        # Open files do not travel to dataloader workers; each worker opens its own.
        return dict(max_open=self.max_open, retries=self.retries, backoff=self.backoff,
                    _files=OrderedDict(), _failed={}, _new_failures=[], _span=None,
                    _pid=os.getpid())


def image_ext_of(ref: SampleRef, image_exts: Sequence[str] = IMAGE_EXTS) -> Optional[str]:
    """The first image extension present in a sample, or None."""
    for ext in image_exts:
        if ext in ref.members:
            return ext
    return None
