"""Reading img2dataset-style webdataset tar shards: shard lists and header-only scanning.

A shard is a tar file whose members come in groups sharing a key: ``KEY.jpg`` (or ``.png``,
``.webp``, ...), ``KEY.txt`` and optionally ``KEY.json``. :func:`scan_shard` walks only the tar
headers (tarfile seeks over the member data), returning one :class:`SampleRef` per key with the
byte offset and size of each member; :class:`ShardReader` later reads just the members needed.
Scanning a 10k-sample shard costs a fraction of a second and never decodes an image, which is
what makes skipping ahead on resume cheap.

Shards on object stores and HTTP. A shard named by a URL with a protocol (``s3://``, ``gs://``,
``https://``, ``memory://``, ...; see :func:`is_remote`) is opened through fsspec, with range
reads: the scan fetches the headers through a small read-ahead block
(:data:`REMOTE_SCAN_BLOCK_SIZE`: a header and the short caption/json members after it usually
come in one request, never the image data), and :class:`ShardReader` fetches exactly the bytes
of the members read (no read-ahead cache; :meth:`ShardReader.prefetch` gets a sample's members
in one request), so header-only resume and sample-level shuffling work as on local files; each
read costs a round trip, though (about one request per sample for the scan, one per sample
read). Local paths keep using plain ``open()``. fsspec needs a package per protocol
(``aiohttp`` for HTTP, ``s3fs`` for S3, ``gcsfs`` for GCS); a missing one is named in a
one-line error when the shard list is expanded. See docs/data.md.

Credentials come only from the environment, through the defaults of fsspec and its backends
(``AWS_*`` variables, ``~/.aws`` and instance roles for s3fs; ``GOOGLE_APPLICATION_CREDENTIALS``
or gcloud's defaults for gcsfs; ``FSSPEC_*`` variables for any backend); HTTP(S) shards are
fetched as plain GETs (public or pre-signed URLs). Nothing here takes keys or storage options
from a config or from a file we load, so none end up in configs, logs or checkpoints.

A connection error while opening, scanning or reading a remote shard (an ``OSError`` such as a
reset connection or a timeout, an aiohttp client error, an HTTP 5xx/408/429 answer; see
:func:`is_transient`) is retried with exponential backoff (``backoff * 2 ** attempt`` seconds,
``retries`` times). A missing or forbidden object, a broken tar and a server that ignores range
requests are not retried. A shard that still fails is reported like an unreadable local shard:
:func:`scan_shard` returns it with an error, and :class:`ShardReader` marks it failed so the
rest of its samples fail at once instead of each waiting through the retries.
"""
import asyncio
import functools
import glob
import logging
import os
import os.path as osp
import re
import tarfile
import threading
import time
from collections import OrderedDict
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, TypeVar, Union

from braceexpand import braceexpand

IMAGE_EXTS = ('jpg', 'jpeg', 'png', 'webp', 'bmp', 'tif', 'tiff')
CAPTION_EXT = 'txt'

# webdataset's convention: the key is everything before the first dot of the file name.
_KEY_EXT = re.compile(r'^((?:.*/|)[^./]+)\.([^/]*)$')

# Remote shards (see the module docs). Retries after the first attempt, and the first wait in
# seconds (doubled after each attempt); ImageTextShardDataset takes its own values as args.
REMOTE_RETRIES = 3
REMOTE_BACKOFF = 1.0
# Read-ahead of the header scan: one request usually covers a header and the short members
# (caption, json) and the next header after it, while never pulling in a whole image.
REMOTE_SCAN_BLOCK_SIZE = 8 * 1024
# Packages fsspec needs for a protocol, for a one-line error when one is missing.
_PROTOCOL_PACKAGES = {'http': 'aiohttp', 'https': 'aiohttp', 's3': 's3fs', 's3a': 's3fs',
                      'gs': 'gcsfs', 'gcs': 'gcsfs', 'az': 'adlfs', 'abfs': 'adlfs',
                      'abfss': 'adlfs', 'adl': 'adlfs'}
_URL = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')
_logger = logging.getLogger(__name__)
_T = TypeVar('_T')


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


class ShardReadError(OSError):
    """A shard that cannot be opened or whose tar structure is broken."""


def is_remote(path: str) -> bool:
    """True for a URL with a protocol (``s3://...``, ``https://...``): opened through fsspec.

    Anything else is a local path, opened with plain ``open()``.
    """
    return bool(_URL.match(str(path)))


def _import_fsspec():
    try:
        import fsspec
    except ImportError:
        raise ImportError("Remote shards need the Python package 'fsspec': pip install fsspec "
                          "(or pip install 'rils_mm[remote]')") from None
    return fsspec


def check_remote_support(url: str) -> None:
    """Import what fsspec needs for ``url``'s protocol, without any network access.

    Raises:
        ImportError: One line naming the missing package (``fsspec``, ``aiohttp``, ``s3fs``...).
        ValueError: fsspec knows no such protocol.
    """
    fsspec = _import_fsspec()
    protocol = url.split('://', 1)[0].lower()
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as error:
        package = _PROTOCOL_PACKAGES.get(protocol)
        hint = (f"the Python package '{package}': pip install {package}" if package else
                f'a package fsspec names: {error}')
        raise ImportError(f'Shard URL {url!r} needs {hint}') from None
    except ValueError as error:
        raise ValueError(f'Shard URL {url!r}: {error}') from None


# fsspec file systems of this process, by (pid, protocol, options fsspec reads from the URL).
# Kept here rather than in fsspec's instance cache: a forked dataloader worker empties that
# cache, and garbage-collecting an inherited HTTP file system there closes its pooled
# connections through the epoll set it shares with the parent, so the parent's next request
# on them would wait for aiohttp's 5-minute timeout. Inherited entries stay referenced, unused.
_FILESYSTEMS: Dict[tuple, object] = {}


def _filesystem(url: str):
    """(fsspec file system, path within it) of a URL; one instance per process and protocol,
    configured by fsspec's defaults (environment) only."""
    check_remote_support(url)
    fsspec = _import_fsspec()
    protocol = url.split('://', 1)[0].lower()
    cls = fsspec.get_filesystem_class(protocol)
    options = cls._get_kwargs_from_urls(url)
    # As fsspec does: one instance per thread too, unless the file system is asynchronous.
    thread = None if getattr(cls, 'async_impl', False) else threading.get_ident()
    key = (os.getpid(), thread, protocol, repr(sorted(options.items())))
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        fs = _FILESYSTEMS[key] = fsspec.filesystem(protocol, skip_instance_cache=True,
                                                   **options)
    return fs, fs._strip_protocol(url)


def open_remote(url: str, cache_type: str = 'none', block_size: int = REMOTE_SCAN_BLOCK_SIZE):
    """Open a remote file for seekable, ranged reading.

    Args:
        url (str): File URL.
        cache_type (str): fsspec cache: ``'none'`` fetches exactly the bytes read,
            ``'readahead'`` fetches ``block_size`` more than each read that misses it.
        block_size (int): fsspec block size (must be > 0: 0 gives an unseekable stream).

    Returns:
        A binary file object with ``seek``/``read``/``close``.
    """
    fs, path = _filesystem(url)
    return fs.open(path, 'rb', block_size=block_size, cache_type=cache_type)


def read_remote_bytes(url: str) -> bytes:
    """The whole content of a (small) remote file, e.g. ``sizes.json``."""
    fs, path = _filesystem(url)
    return fs.cat_file(path)


@functools.lru_cache(maxsize=None)
def _transient_types() -> tuple:
    types = [OSError, asyncio.TimeoutError]
    try:
        import aiohttp
        types.append(aiohttp.ClientError)
    except ImportError:
        pass
    return tuple(types)


# Errors that say the object is not there (or not ours): retrying cannot help.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(error: BaseException) -> bool:
    """Whether a remote I/O error may go away when retried (a connection problem).

    Connection and timeout errors (``OSError``, ``asyncio.TimeoutError``, aiohttp's client
    errors) and HTTP 5xx/408/429 answers are; a missing or forbidden object, a broken tar,
    :class:`ShardReadError` and anything else are not. The cause chain is followed because
    fsspec wraps errors: its HTTP file system reports any failed HEAD-then-GET as
    ``FileNotFoundError`` raised from the real error (a 404, or a 500, or a reset connection).
    """
    transient = _transient_types()
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        status = None if isinstance(error, OSError) else getattr(error, 'status', None)
        if isinstance(status, int):  # aiohttp's ClientResponseError
            return status >= 500 or status in (408, 429)
        if isinstance(error, (ShardReadError, tarfile.TarError, EOFError)):
            return False
        if isinstance(error, _PERMANENT):
            error = error.__cause__  # a transient cause wrapped by fsspec, or a real 404
            continue
        if isinstance(error, transient):
            return True
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return False


def call_with_retries(fn: Callable[[], _T], what: str, retries: int, backoff: float) -> _T:
    """``fn()``, retried with exponential backoff while it raises a transient error.

    Args:
        fn (callable): Takes no argument.
        what (str): What is being read, for the log.
        retries (int): Retries after the first attempt.
        backoff (float): Seconds before the first retry; doubled before each further one.

    Raises:
        The last error, when it is not transient or the retries are used up.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as error:
            if attempt >= retries or not is_transient(error):
                raise
            delay = backoff * 2**attempt
            attempt += 1
            _logger.warning('Reading %s failed (%s); retry %d of %d in %.3g s', what,
                            describe_error(error), attempt, retries, delay)
            time.sleep(delay)


def describe_error(error: BaseException) -> str:
    """``Type: message`` (many network errors have an empty message), with the error it was
    raised from (fsspec's HTTP file system reports a 500 as ``FileNotFoundError``). fsspec's
    advice for a server without range requests (open the file as a stream) does not apply to
    shards, which are read by ranges; that case is said in our words."""
    if isinstance(error, ValueError) and 'support range requests' in str(error):
        return ('the HTTP server does not answer range requests (the Range header), which '
                'reading shards needs; serve them with one that does (nginx, Apache, S3, GCS; '
                'not Python\'s http.server)')
    text = f'{type(error).__name__}: {error}' if str(error) else type(error).__name__
    if error.__cause__ is not None:
        text += f' (from {describe_error(error.__cause__)})'
    return text


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
