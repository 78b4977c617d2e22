"""Remote files through fsspec: opening with range reads, whole small files, and retries of
transient errors with exponential backoff.

A URL with a protocol (``s3://``, ``gs://``, ``https://``, ``memory://``, ...; see
:func:`is_remote`) is opened through fsspec; anything else is a local path, which callers open
with plain ``open()``. fsspec needs a package per protocol (``aiohttp`` for HTTP, ``s3fs`` for
S3, ``gcsfs`` for GCS); :func:`check_remote_support` names a missing one in one line, without
network access. The shards (:mod:`rils_mm.datasets.shards`) and their ``sizes.json`` are read
this way.

Credentials come only from the environment, through the defaults of fsspec and its backends
(``AWS_*`` variables, ``~/.aws`` and instance roles for s3fs; ``GOOGLE_APPLICATION_CREDENTIALS``
or gcloud's defaults for gcsfs; ``FSSPEC_*`` variables for any backend); HTTP(S) files are
fetched as plain GETs (public or pre-signed URLs). Nothing here takes keys or storage options
from a config or from a file we load, so none end up in configs, logs or checkpoints.

A connection error (an ``OSError`` such as a reset connection or a timeout, an aiohttp client
error, an HTTP 5xx/408/429 answer; see :func:`is_transient`) is retried by
:func:`call_with_retries` with exponential backoff (``backoff * 2 ** attempt`` seconds,
``retries`` times). A missing or forbidden object, a broken tar (:class:`PermanentReadError`)
and a server that ignores range requests are not retried.
"""
import asyncio
import functools
import logging
import os
import re
import tarfile
import threading
import time
from typing import Callable, Dict, TypeVar

__all__ = ['REMOTE_BACKOFF', 'REMOTE_RETRIES', 'REMOTE_SCAN_BLOCK_SIZE', 'PermanentReadError',
           'call_with_retries', 'check_remote_support', 'describe_error', 'is_remote',
           'is_transient', 'open_remote', 'read_remote_bytes']

# Retries after the first attempt, and the first wait in seconds (doubled after each attempt);
# ImageTextShardDataset takes its own values as args.
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


class PermanentReadError(OSError):
    """A read error that retrying cannot fix (such as a broken file structure)."""


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
    :class:`PermanentReadError` (such as a shard's ``ShardReadError``) and anything else are
    not. The cause chain is followed because
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
        if isinstance(error, (PermanentReadError, tarfile.TarError, EOFError)):
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
