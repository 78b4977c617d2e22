"""Writing and inspecting img2dataset-style shards (library side of the converter tools)."""
import io
import json
import os
import os.path as osp
import tarfile
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

from ..compat import atomic_write_bytes
from ..utils.progress import track
from .bad_samples import (MISSING_CAPTION, MISSING_IMAGE, UNREADABLE_SHARD, BadSampleError,
                          decode_caption)
from .caption_files import DroppedRows, read_csv_captions, read_jsonl_captions
from .shards import IMAGE_EXTS, ShardReader, expand_shard_urls, image_ext_of, scan_shard
from .transforms.loading import decode_image_rgb


class ShardWriter:
    """Write samples into numbered tar shards of ``samples_per_shard`` samples each.

    Members are written as img2dataset does (``KEY.jpg``, ``KEY.txt``, ``KEY.json``), with
    fixed owner and time stamps so equal inputs give byte-identical shards. ``close`` writes
    ``sizes.json`` (shard name -> sample count), which open_clip reads for dataset sizes.

    Shards are written as ``NAME.partial`` and renamed into place (``sizes.json`` last) only
    when the ``with`` block ends without an error; after an error (or :meth:`abort`) the
    partial files are removed, so a failed run never leaves what looks like a dataset.

    With ``commit_each_shard`` (for writers that resume after an interruption) each shard is
    instead renamed into place as soon as it is complete: when the next shard opens, when
    :meth:`finish_shard` is called, or at ``close``; :meth:`abort` then removes only the shard
    in progress. A resumed writer starts at ``first_index`` and is given the ``sizes`` of the
    shards already written, so its ``sizes.json`` lists them all.

    Args:
        out_dir (str): Output folder (created).
        samples_per_shard (int): Samples per shard.
        name_format (str): Shard file name for a shard number.
        commit_each_shard (bool): Move each shard into place once it is complete.
        first_index (int): Number of the first shard written.
        sizes (dict, optional): Shard name -> sample count of shards written before (by an
            interrupted run), kept in ``sizes.json``.
    """

    PARTIAL = '.partial'

    def __init__(self,
                 out_dir: str,
                 samples_per_shard: int = 1000,
                 name_format: str = '{:05d}.tar',
                 commit_each_shard: bool = False,
                 first_index: int = 0,
                 sizes: Optional[Dict[str, int]] = None) -> None:
        if samples_per_shard < 1:
            raise ValueError(f'samples_per_shard must be >= 1, got {samples_per_shard}')
        if first_index < 0:
            raise ValueError(f'first_index must be >= 0, got {first_index}')
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir = out_dir
        self.samples_per_shard = samples_per_shard
        self.name_format = name_format
        self.commit_each_shard = commit_each_shard
        self.first_index = first_index
        # Final names of the shards this writer opened; until committed they are PATH.partial.
        self.paths: List[str] = []
        self.sizes: Dict[str, int] = dict(sizes or {})
        self._tar: Optional[tarfile.TarFile] = None
        self._count = 0

    def write(self, key: str, members: Dict[str, Union[bytes, str, dict]]) -> None:
        """Add one sample: extension -> bytes (``str`` is UTF-8 encoded, ``dict`` as JSON)."""
        if self._tar is None or self._count == self.samples_per_shard:
            self._open_next()
        for ext, value in members.items():
            if isinstance(value, dict):
                value = json.dumps(value, sort_keys=True).encode('utf-8')
            elif isinstance(value, str):
                value = value.encode('utf-8')
            info = tarfile.TarInfo(f'{key}.{ext}')
            info.size, info.mtime, info.mode = len(value), 0, 0o644
            self._tar.addfile(info, io.BytesIO(value))
        self._count += 1
        self.sizes[osp.basename(self.paths[-1])] = self._count

    def finish_shard(self) -> Optional[str]:
        """Close the shard being written (full or not); the next sample starts a new one.

        Returns:
            str | None: The shard's final path (already in place with ``commit_each_shard``),
            or None when no shard was open.
        """
        if self._tar is None:
            return None
        self._tar.close()
        self._tar = None
        if self.commit_each_shard:
            os.replace(self.paths[-1] + self.PARTIAL, self.paths[-1])
        return self.paths[-1]

    def _open_next(self) -> None:
        self.finish_shard()
        path = osp.join(self.out_dir, self.name_format.format(self.first_index + len(self.paths)))
        self._tar = tarfile.open(path + self.PARTIAL, 'w', format=tarfile.USTAR_FORMAT)
        self.paths.append(path)
        self._count = 0

    def close(self) -> List[str]:
        """Finish the last shard, move the shards into place and write ``sizes.json``;
        returns the shard paths."""
        self.finish_shard()
        sizes_path = osp.join(self.out_dir, 'sizes.json')
        with open(sizes_path + self.PARTIAL, 'w') as file:
            json.dump(self.sizes, file, indent=1, sort_keys=True)
        pending = [] if self.commit_each_shard else self.paths
        for path in pending + [sizes_path]:
            os.replace(path + self.PARTIAL, path)
        return self.paths

    def abort(self) -> None:
        """Close and delete the shards not moved into place (all of them, unless
        ``commit_each_shard``)."""
        if self._tar is not None:
            try:
                self._tar.close()
            except OSError:  # the write that failed (a full disk) fails the close too
                pass
            self._tar = None
        for path in self.paths:
            if osp.exists(path + self.PARTIAL):
                os.remove(path + self.PARTIAL)

    def __enter__(self) -> 'ShardWriter':
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# Written by make_shards beside the shards: what was read, written and skipped (and where).
MAKE_SHARDS_REPORT = 'make_shards_report.json'


class MakeShardsResult(NamedTuple):
    """What :func:`make_shards` wrote and skipped.

    Attributes:
        paths (list[str]): The shards written.
        rows (int): Rows of the table (blank lines not counted).
        written (int): Samples written.
        skipped (DroppedRows): Rows skipped per reason, with their lines.
        report_file (str): The JSON report beside the shards.
    """
    paths: List[str]
    rows: int
    written: int
    skipped: DroppedRows
    report_file: str


def describe_skipped(skipped: DroppedRows, table: str, per_reason: int = 3) -> str:
    """``reason count (lines a, b, ...)`` per reason, the first ``per_reason`` lines of each."""
    parts = []
    for reason in sorted(skipped):
        lines = [place[len(table) + 1:] if place.startswith(f'{table}:') else place
                 for place in skipped.where.get(reason, [])]
        shown = ', '.join(lines[:per_reason]) + (', ...' if skipped[reason] > per_reason else '')
        parts.append(f'{reason} {skipped[reason]} '
                     f'({"line" if skipped[reason] == 1 else "lines"} {shown})')
    return ', '.join(parts)


def make_shards(image_root: str,
                captions_file: str,
                out_dir: str,
                samples_per_shard: int = 1000,
                img_key: str = 'filepath',
                caption_key: str = 'title',
                sep: str = '\t',
                quoting: str = 'minimal') -> MakeShardsResult:
    """Pack an image folder and a caption table into img2dataset-style shards.

    Images are copied byte for byte (no re-encoding); keys are ``SSSSSIIII`` like
    img2dataset's (shard number, index in shard). Rows whose caption is unusable (missing,
    empty, not UTF-8) or that name no image are skipped, and listed by reason and line in
    ``make_shards_report.json`` beside the shards; a row whose image file is missing raises,
    and then nothing is left in ``out_dir`` (see :class:`ShardWriter`).

    Args:
        image_root (str): Folder the table's image paths are relative to.
        captions_file (str): ``.csv``/``.tsv`` (columns ``img_key``, ``caption_key``,
            separated by ``sep``) or ``.jsonl``.
        out_dir (str): Where shards go.
        samples_per_shard (int): Samples per shard.
        img_key (str): Image path column/key.
        caption_key (str): Caption column/key.
        sep (str): CSV separator.
        quoting (str): CSV quoting, ``'minimal'`` or ``'none'`` (see
            :func:`read_csv_captions`).

    Returns:
        MakeShardsResult: The shards written, the row counts and the skipped rows.

    Raises:
        FileNotFoundError: An image is missing (names the table, its line and the image).
        ValueError: No row of the table can be written (nothing is written).
    """
    if captions_file.endswith('.jsonl'):
        rows, skipped = read_jsonl_captions(captions_file, img_key, caption_key)
    else:
        rows, skipped = read_csv_captions(captions_file, img_key, caption_key, sep,
                                          quoting=quoting)
    num_rows = len(rows) + sum(skipped.values())
    if not rows:
        raise ValueError(f'none of the {num_rows} rows of {captions_file} can be written: '
                         f'{describe_skipped(skipped, captions_file)}' if num_rows else
                         f'{captions_file} has no rows below its header')
    with ShardWriter(out_dir, samples_per_shard) as writer:
        for index, row in enumerate(track(rows, 'make_shards', 'sample')):
            path = osp.join(image_root, row['img_path'])
            if not osp.isfile(path):
                raise FileNotFoundError(f'{captions_file}:{row["line"]}: image {path} does not '
                                        f'exist (image paths are relative to {image_root})')
            ext = osp.splitext(path)[1].lstrip('.').lower() or 'jpg'
            ext = 'jpg' if ext == 'jpeg' else ext
            with open(path, 'rb') as file:
                image = file.read()
            shard, position = divmod(index, samples_per_shard)
            key = f'{shard:05d}{position:04d}' if samples_per_shard <= 10000 else f'{index:09d}'
            writer.write(key, {ext: image, 'txt': row['text'],
                               'json': dict(key=key, caption=row['text'],
                                            source=row['img_path'])})
    report_file = osp.join(out_dir, MAKE_SHARDS_REPORT)
    report = dict(captions=captions_file, rows=num_rows, written=len(rows),
                  shards=len(writer.paths), skipped=dict(sorted(skipped.items())),
                  skipped_rows={reason: skipped.where[reason] for reason in sorted(skipped)})
    atomic_write_bytes(json.dumps(report, indent=1).encode('utf-8'), report_file)
    return MakeShardsResult(writer.paths, num_rows, len(rows), skipped, report_file)


def inspect_shards(shards: Union[str, Sequence[str]],
                   decode: bool = True,
                   max_pixels: Optional[int] = 8192 * 8192,
                   max_aspect_ratio: Optional[float] = 20.0,
                   min_size: int = 8) -> dict:
    """Count the samples of shards and list the bad ones with reasons.

    Uses the same checks as training (:func:`decode_caption`, :func:`decode_image_rgb`).

    Args:
        shards (str | Sequence[str]): Shard paths or brace patterns.
        decode (bool): Decode images (False: headers and captions only, much faster).
        max_pixels, max_aspect_ratio, min_size: As in :class:`LoadImageRGB`.

    Returns:
        dict: ``num_shards``, ``num_samples``, ``num_good``, ``reasons`` (reason -> count),
        ``converted`` (PIL mode -> count), ``bad`` (list of ``(shard, key, reason, detail)``)
        and ``shard_errors`` (list of messages).
    """
    paths = expand_shard_urls(shards)
    reader = ShardReader()
    report = dict(num_shards=len(paths), num_samples=0, num_good=0, reasons=Counter(),
                  converted=Counter(), bad=[], shard_errors=[])
    for path in track(paths, 'inspect_shards', 'shard'):
        refs, error = scan_shard(path)
        if error is not None:
            report['shard_errors'].append(str(error))
            report['reasons'][UNREADABLE_SHARD] += 1
        for ref in refs:
            report['num_samples'] += 1
            where = f'{path}:{ref.key}'
            try:
                image_ext = image_ext_of(ref, IMAGE_EXTS)
                if image_ext is None:
                    raise BadSampleError(MISSING_IMAGE, f'{where} has {sorted(ref.members)}')
                if 'txt' not in ref.members:
                    raise BadSampleError(MISSING_CAPTION, where)
                decode_caption(reader.read(ref, 'txt'), where)
                if decode:
                    _, mode = decode_image_rgb(reader.read(ref, image_ext), where, max_pixels,
                                               max_aspect_ratio, min_size)
                    if mode != 'RGB':
                        report['converted'][mode] += 1
            except BadSampleError as bad:
                report['reasons'][bad.reason] += 1
                report['bad'].append((path, ref.key, bad.reason, bad.detail))
                continue
            report['num_good'] += 1
    reader.close()
    return report
