"""Reading img2dataset-style webdataset tar shards: shard lists and header-only scanning.

A shard is a tar file whose members come in groups sharing a key: ``KEY.jpg`` (or ``.png``,
``.webp``, ...), ``KEY.txt`` and optionally ``KEY.json``. :func:`scan_shard` walks only the tar
headers (tarfile seeks over the member data), returning one :class:`SampleRef` per key with the
byte offset and size of each member; :class:`ShardReader` later reads just the members needed.
Scanning a 10k-sample shard costs a fraction of a second and never decodes an image, which is
what makes skipping ahead on resume cheap.
"""
import glob
import os.path as osp
import re
import tarfile
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from braceexpand import braceexpand

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


class ShardReadError(OSError):
    """A shard that cannot be opened or whose tar structure is broken."""


def expand_shard_urls(urls: Union[str, Sequence[str]], check_exists: bool = True) -> List[str]:
    """Expand a shard specification into a list of paths.

    Args:
        urls (str | Sequence[str]): A path pattern with brace ranges
            (``data/laion/{00000..01023}.tar``), a folder (all its ``*.tar``, sorted), several
            of these joined by ``::`` (open_clip's syntax), or a list of them.
        check_exists (bool): Raise when a listed shard does not exist.

    Returns:
        list[str]: Shard paths in order.

    Raises:
        FileNotFoundError: Naming the first missing shards and the pattern they came from.
        ValueError: When the specification expands to nothing.
    """
    patterns = [urls] if isinstance(urls, str) else list(urls)
    paths: List[str] = []
    for pattern in patterns:
        for part in str(pattern).split('::'):
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


def scan_shard(path: str) -> Tuple[List[SampleRef], Optional[ShardReadError]]:
    """List the samples of a shard from its tar headers, without reading member data.

    Consecutive members with the same key form a sample (as in webdataset); a key that
    repeats an extension starts a new sample.

    Args:
        path (str): Shard path.

    Returns:
        tuple: The samples read, and a :class:`ShardReadError` if the shard could not be read
        to its end (the samples before the damage are still returned).
    """
    refs: List[SampleRef] = []
    key, members = None, {}
    error = None
    try:
        file_size = osp.getsize(path)
        with tarfile.open(path, mode='r:') as tar:
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
    except (tarfile.TarError, OSError, EOFError) as exc:
        error = ShardReadError(f'Cannot read shard {path}: {exc}')
        members = {}  # the sample being read when the damage was found is incomplete
    if members:
        refs.append(SampleRef(path, key, members))
    return refs, error


class ShardReader:
    """Reads member bytes by offset, keeping a few shard files open.

    Args:
        max_open (int): Files kept open (a shuffle buffer spans a couple of shards).
    """

    def __init__(self, max_open: int = 4) -> None:
        self.max_open = max_open
        self._files: 'OrderedDict[str, object]' = OrderedDict()

    def read(self, ref: SampleRef, ext: str) -> bytes:
        """Bytes of member ``KEY.ext`` of ``ref``."""
        offset, size = ref.members[ext]
        handle = self._files.get(ref.shard)
        if handle is None:
            handle = open(ref.shard, 'rb')
            self._files[ref.shard] = handle
            if len(self._files) > self.max_open:
                self._files.popitem(last=False)[1].close()
        else:
            self._files.move_to_end(ref.shard)
        handle.seek(offset)
        data = handle.read(size)
        if len(data) != size:
            raise OSError(f'{ref.shard}: member {ref.key}.{ext} is cut short '
                          f'({len(data)} of {size} bytes)')
        return data

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def __getstate__(self):
        # Open files do not travel to dataloader workers; each worker opens its own.
        return dict(max_open=self.max_open, _files=OrderedDict())


def image_ext_of(ref: SampleRef, image_exts: Sequence[str] = IMAGE_EXTS) -> Optional[str]:
    """The first image extension present in a sample, or None."""
    for ext in image_exts:
        if ext in ref.members:
            return ext
    return None
