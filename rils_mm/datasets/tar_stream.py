"""Reading a tar shard front to back in one stream, with reconnects from the last whole sample.

This is how webdataset reads shards (one sequential GET per shard, members parsed as they
arrive), plus what exact resume needs: every sample carries the byte offset of its first tar
header and the offset where the next whole sample starts, so a stream can be opened again at
any sample boundary.

Where the bytes come from (:func:`open_byte_stream`):

- a local path: ``open()`` and a seek;
- ``http://`` / ``https://``: one GET (``urllib``), with ``Range: bytes=OFFSET-`` when starting
  mid-shard; a server that ignores the range and answers 200 with the whole file works too
  (the bytes before the offset are read and dropped);
- any other protocol fsspec knows (``s3://``, ``gs://``, ``memory://``, ...): an fsspec file read
  sequentially through a large read-ahead block (:data:`STREAM_BLOCK_SIZE`, one ranged request
  per block);
- ``pipe:COMMAND`` (webdataset's syntax): the command's standard output; a command that exits
  with a non-zero status makes the shard unreadable, its last stderr line in the message.

A connection lost mid-shard (an error :func:`.remote_io.is_transient` accepts, or a stream that
ends before its announced length) is reopened from the last whole sample's offset, up to
``retries`` times in a row with exponential backoff; a sample is never yielded twice or half.
"""
import http.client
import logging
import os
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from typing import Dict, Iterator, NamedTuple, Optional, Sequence, Tuple

from .remote_io import PermanentReadError, describe_error, is_remote, is_transient

__all__ = ['STREAM_BLOCK_SIZE', 'StreamSample', 'is_pipe', 'open_byte_stream',
           'stream_shard_samples']

# Read-ahead block of fsspec files read as streams (object stores): one request per block.
STREAM_BLOCK_SIZE = 16 * 1024 * 1024
# Seconds without any byte from an HTTP server before the read counts as a lost connection.
HTTP_TIMEOUT = 60
_BLOCK = tarfile.BLOCKSIZE
_logger = logging.getLogger(__name__)


class StreamSample(NamedTuple):
    """One sample read from a shard stream.

    Attributes:
        shard (str): Shard path or URL.
        key (str): Sample key (member name up to the first dot).
        members (dict): Lower-case extension -> member bytes (None for members not kept).
        offset (int): Byte offset of the sample's first tar header in the shard.
        index (int): Index of the sample in the shard (0 for the first).
        next_offset (int): Byte offset where the next sample (or the end marker) starts.
    """
    shard: str
    key: str
    members: Dict[str, Optional[bytes]]
    offset: int
    index: int
    next_offset: int


def is_pipe(url: str) -> bool:
    """True for webdataset's ``pipe:COMMAND`` shards."""
    return str(url).startswith('pipe:')


class StreamCutShort(ConnectionError):
    """The byte stream ended before the length its server announced (a lost connection)."""


class _ByteStream:
    """Sequential reads with an absolute offset and a check of the announced length."""

    def __init__(self, raw, url: str, offset: int, expected_end: Optional[int] = None,
                 on_close=None) -> None:
        self.raw = raw
        self.url = url
        self.offset = offset
        self.expected_end = expected_end
        self._on_close = on_close

    def read(self, size: int) -> bytes:
        try:
            data = self.raw.read(size) if size > 0 else b''
        except http.client.HTTPException as error:  # a chunked answer cut short, say
            raise StreamCutShort(f'connection lost after byte {self.offset}: '
                                 f'{describe_error(error)}') from error
        self.offset += len(data)
        if len(data) < size and self.expected_end is not None and \
                self.offset < self.expected_end:
            raise StreamCutShort(f'connection lost after byte {self.offset} of '
                                 f'{self.expected_end}')
        return data

    def skip(self, size: int) -> None:
        """Read and drop ``size`` bytes (member data not kept, a server that ignored Range)."""
        while size > 0:
            data = self.read(min(size, 1 << 20))
            if not data:
                return
            size -= len(data)

    def close(self) -> None:
        try:
            self.raw.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _http_error(url: str, error: urllib.error.HTTPError) -> OSError:
    """An HTTP error answer as the error type the retry and accounting logic expects."""
    what = f'HTTP {error.code} {error.reason} for {url}'
    if error.code == 404:
        return FileNotFoundError(what)
    if error.code in (401, 403):
        return PermissionError(what)
    if error.code >= 500 or error.code in (408, 429):
        return ConnectionError(what)
    return PermanentReadError(what)


def _open_http(url: str, offset: int) -> _ByteStream:
    headers = {'Range': f'bytes={offset}-'} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=HTTP_TIMEOUT)
    except urllib.error.HTTPError as error:
        raise _http_error(url, error) from None
    length = response.headers.get('Content-Length')
    start = 0
    if response.status == 206:
        content_range = response.headers.get('Content-Range', '')
        try:
            start = int(content_range.split()[1].split('-')[0])
        except (IndexError, ValueError):
            response.close()
            raise PermanentReadError(f'{url}: unreadable Content-Range {content_range!r}')
    stream = _ByteStream(response, url, start,
                         start + int(length) if length and length.isdigit() else None)
    if start > offset:
        stream.close()
        raise PermanentReadError(f'{url}: asked for bytes from {offset}, got from {start}')
    stream.skip(offset - start)  # a server that ignores Range sends the whole file
    return stream


def _open_fsspec(url: str, offset: int) -> _ByteStream:
    from .remote_io import open_remote
    handle = open_remote(url, cache_type='readahead', block_size=STREAM_BLOCK_SIZE)
    try:
        size = getattr(handle, 'size', None)
        handle.seek(offset)
    except Exception:
        handle.close()
        raise
    return _ByteStream(handle, url, offset, size)


def _open_pipe(url: str, offset: int) -> _ByteStream:
    command = url[len('pipe:'):]
    stderr = tempfile.TemporaryFile()
    process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=stderr)

    def finish() -> None:
        # Called when the stream is closed: after the whole output, the exit status says
        # whether the shard was read; an early close (the consumer stopped) is no error.
        process.stdout.close()
        if process.poll() is None:
            process.kill()
        process.wait()
        stderr.close()

    class PipeStdout:
        """``process.stdout``, turning a non-zero exit at the end of the output into an
        error naming the command's last stderr line."""

        def read(self, size: int) -> bytes:
            data = process.stdout.read(size)
            if len(data) < size:
                status = process.wait()
                if status != 0:
                    stderr.seek(0)
                    lines = stderr.read().decode('utf-8', 'replace').strip().splitlines()
                    last = lines[-1].strip() if lines else '(no stderr output)'
                    raise PermanentReadError(f'command {command!r} exited with status '
                                             f'{status}: {last}')
            return data

        def close(self) -> None:
            pass

    stream = _ByteStream(PipeStdout(), url, 0, on_close=finish)
    stream.skip(offset)
    stream.offset = max(stream.offset, offset)
    return stream


def open_byte_stream(url: str, offset: int = 0) -> _ByteStream:
    """A sequential byte stream of a shard from ``offset`` (local, HTTP, fsspec or pipe).

    Raises:
        OSError: The shard cannot be opened (transient or not, see
            :func:`.remote_io.is_transient`).
    """
    if is_pipe(url):
        return _open_pipe(url, offset)
    if not is_remote(url):
        handle = open(url, 'rb')
        handle.seek(offset)
        return _ByteStream(handle, url, offset, os.fstat(handle.fileno()).st_size)
    if url.split('://', 1)[0].lower() in ('http', 'https'):
        return _open_http(url, offset)
    return _open_fsspec(url, offset)


class _Header(NamedTuple):
    key: str
    ext: str
    offset: int  # of its first header (extended headers included)
    size: int
    padded: int


def _pax_path(data: bytes) -> Optional[str]:
    """The ``path`` record of a pax extended header (``LEN path=VALUE\\n`` records)."""
    pos = 0
    while pos < len(data):
        space = data.find(b' ', pos)
        if space < 0:
            break
        length = int(data[pos:space])
        record = data[space + 1:pos + length - 1]
        if record.startswith(b'path='):
            return record[5:].decode('utf-8', 'surrogateescape')
        pos += length
    return None


# The numeric fields tarfile parses (mode, uid, gid, size, mtime, checksum, device numbers).
_NUMERIC_FIELDS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (148, 156),
                   (329, 337), (337, 345))


def _is_octal(field: bytes) -> bool:
    """Whether tarfile reads ``field`` as a plain octal number (up to the first NUL, blanks
    stripped; base-256 and broken fields are left to tarfile)."""
    return not field.split(b'\0', 1)[0].strip().translate(None, b'01234567')


def _header_fields(block: bytes) -> Tuple[str, int, bytes]:
    """``(name, size, type)`` of a 512-byte tar header, as ``tarfile.TarInfo.frombuf`` reads
    them. The plain ustar/GNU header of a regular file is parsed here, three times faster than
    ``frombuf`` (a tenth of a streamed sample's bookkeeping); anything else (another checksum
    form, base-256 sizes, other member types) goes through ``frombuf``.

    Raises:
        tarfile.TarError: A broken header (``frombuf``'s errors).
    """
    member_type = block[156:157]
    if member_type in (tarfile.REGTYPE, tarfile.AREGTYPE) and all(
            _is_octal(block[start:stop]) for start, stop in _NUMERIC_FIELDS):
        checksum = int(block[148:156].split(b'\0', 1)[0].strip() or b'0', 8)
        size = int(block[124:136].split(b'\0', 1)[0].strip() or b'0', 8)
        # The unsigned checksum: all bytes, the checksum field counted as eight spaces.
        if checksum == sum(block) - sum(block[148:156]) + 256:
            name = block[:100].split(b'\0', 1)[0].decode(tarfile.ENCODING, 'surrogateescape')
            prefix = block[345:500].split(b'\0', 1)[0]
            if prefix:
                name = prefix.decode(tarfile.ENCODING, 'surrogateescape') + '/' + name
            if not name.endswith('/'):  # frombuf makes that a directory
                return name, size, member_type
    info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, 'surrogateescape')
    return info.name, info.size, info.type


def _read_headers(stream: _ByteStream) -> Iterator[Optional[_Header]]:
    """Headers of the file members of a tar stream as they arrive (None at the end-of-archive
    marker). The consumer reads (or skips) each member's ``padded`` data bytes before asking
    for the next header.

    Raises:
        EOFError: The tar ends without its end-of-archive marker (cut short).
        tarfile.TarError: A broken header.
        OSError: The byte stream failed (a lost connection is :class:`StreamCutShort`).
    """
    from .shards import split_key  # shards imports this module
    extended = None  # (name from a GNU long-name or pax header, offset of that header)
    while True:
        header_offset = stream.offset
        block = stream.read(_BLOCK)
        if not block:
            raise EOFError('no end-of-archive marker, the file was cut short')
        if len(block) < _BLOCK:
            raise EOFError(f'truncated tar header at byte {header_offset}')
        if block == bytes(_BLOCK):
            yield None
            return
        member_name, size, member_type = _header_fields(block)
        padded = -(-size // _BLOCK) * _BLOCK
        if member_type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE):
            data = stream.read(padded)[:size]
            if len(data) < size:
                raise EOFError(f'member data cut short at byte {stream.offset}')
            name = (data.rstrip(b'\0').decode('utf-8', 'surrogateescape')
                    if member_type == tarfile.GNUTYPE_LONGNAME else _pax_path(data))
            # The extended header belongs to the next member, which starts here.
            extended = (name or (extended and extended[0]),
                        extended[1] if extended else header_offset)
            continue
        name, first_offset = ((extended[0] or member_name, extended[1]) if extended else
                              (member_name, header_offset))
        extended = None
        key, ext = (split_key(name) if member_type in tarfile.REGULAR_TYPES else
                    (None, None))
        if key is None:
            stream.skip(padded)  # directories, links, global headers, names without a dot
            continue
        yield _Header(key, ext, first_offset, size, padded)


def _samples_from(stream: _ByteStream, url: str, index: int,
                  keep: Sequence[str]) -> Iterator[StreamSample]:
    """Whole samples of a stream (consecutive members with one key; a repeated extension
    starts a new sample). A sample is yielded as soon as the next one's first header is read,
    before that one's data: a connection lost in it resumes from its header."""
    key, members, offset = None, {}, stream.offset
    for header in _read_headers(stream):
        end = stream.offset if header is None else header.offset
        if header is None or header.key != key or header.ext in members:
            if members:
                yield StreamSample(url, key, members, offset, index, end)
                index += 1
            if header is None:
                return
            key, members, offset = header.key, {}, header.offset
        if header.ext in keep:
            data = stream.read(header.size)
            if len(data) < header.size:
                raise EOFError(f'member {key}.{header.ext} is cut short')
            stream.skip(header.padded - header.size)
        else:
            data = None
            stream.skip(header.padded)
        members[header.ext] = data


class ShardStreamError(PermanentReadError):
    """A shard stream that could not be read to its end (after the retries)."""


def stream_shard_samples(url: str, offset: int = 0, index: int = 0,
                         keep: Sequence[str] = (), retries: int = 3,
                         backoff: float = 1.0) -> Iterator[StreamSample]:
    """Samples of a shard from byte ``offset`` (a sample boundary; its index ``index``) on.

    Args:
        url (str): Local path, URL or ``pipe:COMMAND``.
        offset (int): Byte offset of a sample's first header (0: the shard's start).
        index (int): Index in the shard of the sample at ``offset``.
        keep (Sequence[str]): Extensions whose bytes are kept (others are skipped: None).
        retries (int): Reconnects in a row (without a whole sample in between) after a
            transient error.
        backoff (float): Seconds before the first reconnect, doubled before each further one.

    Raises:
        ShardStreamError: The shard cannot be read (further); ``samples_read`` holds how many
            samples were yielded before.
    """
    keep = tuple(keep)
    attempt = read = 0
    while True:
        try:
            with open_byte_stream(url, offset) as stream:
                for sample in _samples_from(stream, url, index, keep):
                    yield sample
                    offset, index, attempt = sample.next_offset, index + 1, 0
                    read += 1
            return
        except Exception as error:  # noqa: B902 - judged by is_transient below
            transient = is_transient(error)
            if not transient or attempt >= retries:
                attempts = f' (after {attempt + 1} attempts)' if transient else ''
                failure = ShardStreamError(f'Cannot read shard {url}{attempts}: '
                                           f'{_describe(error)}')
                failure.samples_read = read
                raise failure from error
            delay = backoff * 2**attempt
            attempt += 1
            _logger.warning('Reading %s failed at byte %d (%s); reconnecting from there, '
                            'retry %d of %d in %.3g s', url, offset, _describe(error),
                            attempt, retries, delay)
            time.sleep(delay)


def _describe(error: BaseException) -> str:
    if isinstance(error, (EOFError, tarfile.TarError)):
        return f'{type(error).__name__}: {error}'
    if isinstance(error, PermanentReadError) and str(error).startswith('command '):
        return str(error)
    return describe_error(error)
