"""Readers for caption tables: CSV/TSV (open_clip's layout), JSONL and COCO captions JSON.

Structural problems (a missing column or key, a line that is not JSON) raise errors naming
the file, the line and what was expected. Per-row caption problems (missing, empty, not UTF-8)
are not errors: the row is dropped and counted (with where the first ones were, in
:class:`DroppedRows`), so one bad caption never stops a run.
"""
import csv
import json
from collections import Counter
from typing import Dict, Iterator, List, Optional, Tuple

from .bad_samples import (CAPTION_NOT_UTF8, MISSING_CAPTION, MISSING_IMAGE, BadSampleError,
                          decode_caption)


class DroppedRows(Counter):
    """Dropped rows per reason (a ``Counter``), and where the first of each reason were.

    Attributes:
        where (dict[str, list[str]]): Reason -> the first :attr:`MAX_LISTED` places
            (``path:line``, or ``path: annotation #i`` in a COCO file), in file order.
    """

    MAX_LISTED = 1000

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.where: Dict[str, List[str]] = {}

    def add(self, reason: str, where: str) -> None:
        """Count one dropped row and remember where it was."""
        self[reason] += 1
        listed = self.where.setdefault(reason, [])
        if len(listed) < self.MAX_LISTED:
            listed.append(where)


def _clean_caption(value, where: str, dropped: DroppedRows) -> Optional[str]:
    """The caption, or None (counted in ``dropped``) when it is unusable."""
    if isinstance(value, str):
        # Files are read with surrogateescape: re-encoding recovers the original bytes, so
        # non-UTF-8 captions are detected per row instead of failing the whole file.
        try:
            value = value.encode('utf-8', 'surrogateescape')
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape: not valid text
            dropped.add(CAPTION_NOT_UTF8, where)
            return None
    try:
        return decode_caption(value, where)
    except BadSampleError as error:
        dropped.add(error.reason, where)
        return None


# read_csv_captions' ``quoting`` names -> the csv module's constants.
QUOTING = {'minimal': csv.QUOTE_MINIMAL, 'none': csv.QUOTE_NONE}
_QUOTE_HINT = "if captions hold literal quote characters, read the table with quoting='none'"


def _csv_rows(file, path: str, sep: str, quoting: str) -> Iterator[Tuple[int, List[str]]]:
    """(line number, fields) of each non-blank row; a row that is not one line raises.

    A quoted field may legally hold line breaks, but in caption tables that almost always
    means an unterminated quote swallowing the following rows, so it is an error here.
    """
    if quoting not in QUOTING:
        raise ValueError(f'{path}: quoting={quoting!r}; expected one of {sorted(QUOTING)}')
    reader = csv.reader(file, delimiter=sep, quoting=QUOTING[quoting], strict=True)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise ValueError(f'{path}:{start}: {error} in the row starting on this line (an '
                             f'unterminated or stray quote?); {_QUOTE_HINT}') from None
        if reader.line_num > start or any('\n' in f or '\r' in f for f in fields):
            raise ValueError(f'{path}:{start}: a quoted field holds a line break, reading on '
                             f'to line {reader.line_num} (an unterminated quote?); expected '
                             f'one row per line; {_QUOTE_HINT}')
        line, start = start, reader.line_num + 1
        if any(field.strip() for field in fields):
            yield line, fields


def read_csv_captions(path: str,
                      img_key: str = 'filepath',
                      caption_key: str = 'title',
                      sep: str = '\t',
                      extra_keys: Tuple[str, ...] = (),
                      quoting: str = 'minimal') -> Tuple[List[Dict], DroppedRows]:
    """Read an open_clip-style CSV/TSV (``--csv-img-key``, ``--csv-caption-key``,
    ``--csv-separator``).

    Args:
        path (str): The table, with a header row.
        img_key (str): Column holding image paths.
        caption_key (str): Column holding captions.
        sep (str): Field separator (``'\\t'`` for open_clip's default TSV).
        extra_keys (tuple[str]): Further columns to keep when present.
        quoting (str): ``'minimal'`` (``csv.QUOTE_MINIMAL``): a field may be quoted with
            ``"`` to hold the separator, and ``""`` inside it stands for one quote.
            ``'none'`` (``csv.QUOTE_NONE``): quote characters are plain text; use it for
            tables whose captions contain literal quotes (the separator then cannot occur
            inside a field).

    Returns:
        tuple[list[dict], DroppedRows]: Rows as ``dict(img_path, text, key, line, **extra)``
        (``line``: the row's line in the file) and the dropped rows per reason.

    Raises:
        KeyError: A required column is missing (names the column, the file and the columns
            found).
        ValueError: A row is not one line with as many fields as the header (an
            unterminated quote, a stray separator), naming ``path:line``.
    """
    rows, dropped = [], DroppedRows()
    with open(path, newline='', encoding='utf-8', errors='surrogateescape') as file:
        records = _csv_rows(file, path, sep, quoting)
        _, columns = next(records, (1, []))
        for key in (img_key, caption_key):
            if key not in columns:
                raise KeyError(f'{path}: column {key!r} not found; the header (split on '
                               f'{sep!r}) has {columns}. Set img_key/caption_key/sep to match.')
        for index, (line, fields) in enumerate(records):
            where = f'{path}:{line}'
            if len(fields) != len(columns):
                raise ValueError(f'{where} has {len(fields)} fields, the header has '
                                 f'{len(columns)} (separator {sep!r}); a stray separator or '
                                 f'quote?')
            row = dict(zip(columns, fields))
            image = row[img_key]
            if not image:
                dropped.add(MISSING_IMAGE, where)
                continue
            text = _clean_caption(row[caption_key], where, dropped)
            if text is None:
                continue
            entry = dict(img_path=image, text=text, key=f'{index}', line=line)
            entry.update({k: row[k] for k in extra_keys if row.get(k) not in (None, '')})
            rows.append(entry)
    return rows, dropped


def iter_jsonl(path: str) -> Iterator[Tuple[int, dict]]:
    """(line number, object) for each non-blank line; a bad line raises naming file:line."""
    with open(path, encoding='utf-8', errors='surrogateescape') as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ValueError(f'{path}:{line_number} is not a JSON object: {error}') from None
            if not isinstance(record, dict):
                raise ValueError(f'{path}:{line_number}: expected a JSON object, got '
                                 f'{type(record).__name__}')
            yield line_number, record


def read_jsonl_captions(path: str,
                        img_key: str = 'filepath',
                        caption_key: str = 'caption',
                        extra_keys: Tuple[str, ...] = ()) -> Tuple[List[Dict], DroppedRows]:
    """Read one ``{img_key: path, caption_key: text, ...}`` object per line.

    Returns:
        tuple[list[dict], DroppedRows]: Rows as ``dict(img_path, text, key, line, **extra)`` and
        the dropped rows per reason.

    Raises:
        KeyError: A line lacks ``img_key`` (names the key, file and line).
        ValueError: A line is not a JSON object.
    """
    rows, dropped = [], DroppedRows()
    for line_number, record in iter_jsonl(path):
        where = f'{path}:{line_number}'
        if img_key not in record:
            raise KeyError(f'{where}: key {img_key!r} not found; the object has keys '
                           f'{sorted(record)}. Set img_key to match.')
        if caption_key not in record:
            dropped.add(MISSING_CAPTION, where)
            continue
        text = _clean_caption(record[caption_key], where, dropped)
        if text is None:
            continue
        entry = dict(img_path=record[img_key], text=text,
                     key=str(record.get('key', line_number - 1)), line=line_number)
        entry.update({k: record[k] for k in extra_keys if k in record})
        rows.append(entry)
    return rows, dropped


def read_coco_captions(path: str) -> Tuple[List[Dict], DroppedRows]:
    """Read a COCO captions file (``captions_train2017.json`` layout).

    Returns:
        tuple[list[dict], DroppedRows]: One ``dict(img_path=file_name, captions=[...], key=id)``
        per image with at least one usable caption, and dropped captions per reason.

    Raises:
        KeyError: The file lacks ``images`` or ``annotations``, or an annotation names an
            image id that is not listed.
    """
    with open(path, encoding='utf-8') as file:
        coco = json.load(file)
    for section in ('images', 'annotations'):
        if section not in coco:
            raise KeyError(f'{path}: not a COCO captions file, {section!r} is missing '
                           f'(top-level keys: {sorted(coco)})')
    captions: Dict[int, List[str]] = {image['id']: [] for image in coco['images']}
    dropped = DroppedRows()
    for index, annotation in enumerate(coco['annotations']):
        image_id = annotation.get('image_id')
        if image_id not in captions:
            raise KeyError(f'{path}: annotation #{index} refers to image_id {image_id!r}, '
                           f'which is not in "images"')
        text = _clean_caption(annotation.get('caption'), f'{path}: annotation #{index}',
                              dropped)
        if text is not None:
            captions[image_id].append(text)
    rows = []
    for image in coco['images']:
        if captions[image['id']]:
            rows.append(dict(img_path=image['file_name'], captions=captions[image['id']],
                             key=str(image['id'])))
        else:
            dropped.add('image_without_caption', f'{path}: image id {image["id"]}')
    return rows, dropped
