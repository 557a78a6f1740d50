"""Kaggle run-length encoding for the 2018 Data Science Bowl.

The competition's rules: ``EncodedPixels`` is a space-separated list of
``start length`` pairs; pixels are numbered from 1, top to bottom, then left to right
(column-major, i.e. NumPy ``order="F"``); pairs are sorted by start and do not overlap.

>>> import numpy as np
>>> mask = np.zeros((3, 4), bool); mask[1:, 1] = True; mask[0, 3] = True
>>> rle_encode(mask)
'5 2 10 1'
>>> bool((rle_decode('5 2 10 1', (3, 4)) == mask).all())
True

Files of such strings, one row per nucleus (``ImageId,EncodedPixels``: submissions, the
train labels, solution files), are read by one reader, :func:`read_rle_rows`: it turns a
file into text rows with their CSV line numbers and refuses what is not such a CSV.
What the rows must contain is the caller's: :func:`dsb.submission.read_submission` and
:func:`dsb.submission.check_submission` for a submission, :func:`dsb.data.kaggle.read_rle_csv`
for labels.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import gzip
import io
import os
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import numba
import numpy as np
from scipy import ndimage

from dsb.errors import DataError, DsbError

__all__ = [
    "HEADER",
    "RleRows",
    "read_rle_rows",
    "rle_encode",
    "rle_decode",
    "runs_to_label_map",
    "rle_to_pairs",
    "pairs_to_rle",
    "mask_runs",
    "label_map_to_rows",
    "label_map_to_runs",
]


def mask_runs(mask: np.ndarray) -> np.ndarray:
    """Runs of a 2-D mask as an ``(n, 2)`` int64 array of 1-indexed ``(start, length)``.

    Parameters
    ----------
    mask : (H, W) array, any dtype; nonzero pixels are foreground.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    # Pad with False on both ends so every run has a rising and a falling edge.
    padded = np.concatenate(([False], flat, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    return np.stack([starts + 1, ends - starts], axis=1).astype(np.int64)


def pairs_to_rle(runs: np.ndarray) -> str:
    """Format an ``(n, 2)`` array of ``(start, length)`` as Kaggle's string."""
    if len(runs) == 0:
        return ""
    return " ".join(map(str, np.asarray(runs, dtype=np.int64).ravel().tolist()))


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D boolean mask as Kaggle RLE (empty string for an empty mask)."""
    return pairs_to_rle(mask_runs(mask))


def rle_to_pairs(rle: str | float | None) -> np.ndarray:
    """Parse an RLE string into an ``(n, 2)`` int64 array; empty/NaN gives ``(0, 2)``.

    Raises
    ------
    ValueError
        If a token is not an integer or the count of numbers is odd. Semantic checks
        (positive, sorted, inside the image) are the caller's: see
        :func:`dsb.submission.check_runs`.
    """
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return np.zeros((0, 2), np.int64)
    text = str(rle).strip()
    if not text:
        return np.zeros((0, 2), np.int64)
    try:
        values = np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next((t for t in text.split() if not t.lstrip("-").isdigit()), text[:20])
        raise ValueError(f"not an integer: {bad!r}") from None
    if values.size % 2:
        raise ValueError(f"odd number of values ({values.size}); expected start/length pairs")
    return values.reshape(-1, 2)


def _run_pixels(runs: np.ndarray, n_pixels: int, what: str = "RLE") -> np.ndarray:
    """0-indexed column-major pixel indices covered by ``runs``; checks their range."""
    if not len(runs):
        return np.zeros(0, dtype=np.int64)
    starts, lengths = runs[:, 0] - 1, runs[:, 1]
    if (starts < 0).any() or (lengths <= 0).any():
        raise DataError(f"{what} has a start < 1 or a length < 1")
    if (starts + lengths > n_pixels).any():
        raise DataError(f"{what} has a run past the last pixel (image has {n_pixels} pixels)")
    # O(area): each run's first index repeated over its length, plus 0..length-1.
    offsets = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - offsets, lengths)


def rle_decode(rle: str | float | None, shape: tuple[int, int]) -> np.ndarray:
    """Decode Kaggle RLE into an ``(H, W)`` bool mask.

    Raises :class:`dsb.errors.DataError` if a run is non-positive or falls outside the
    image, :class:`ValueError` if the string is not pairs of integers.
    """
    height, width = int(shape[0]), int(shape[1])
    flat = np.zeros(height * width, dtype=bool)
    flat[_run_pixels(rle_to_pairs(rle), flat.size)] = True
    return flat.reshape((width, height)).T


def runs_to_label_map(
    runs_per_instance: list[np.ndarray], shape: tuple[int, int]
) -> tuple[np.ndarray, int]:
    """Paint instances ``1..n`` (in list order) into an ``(H, W)`` int32 label map.

    Overlaps are resolved deterministically: a pixel claimed by several instances keeps
    the first one (the earliest row). Returns ``(label_map, n_overlap_px)`` so callers
    can report overlaps instead of hiding them.
    """
    height, width = int(shape[0]), int(shape[1])
    flat = np.zeros(height * width, dtype=np.int32)
    pixels = [_run_pixels(runs, flat.size, f"instance {label}") for label, runs in enumerate(runs_per_instance, 1)]
    if not pixels:
        return flat.reshape((width, height)).T.copy(), 0
    sizes = np.array([len(p) for p in pixels])
    all_pixels = np.concatenate(pixels)
    labels = np.repeat(np.arange(1, len(pixels) + 1, dtype=np.int32), sizes)
    flat[all_pixels] = labels
    n_overlap = int(all_pixels.size - np.count_nonzero(flat))
    if n_overlap:
        # Fancy assignment does not define which duplicate wins: make the first win.
        flat[all_pixels] = np.iinfo(np.int32).max
        np.minimum.at(flat, all_pixels, labels)
    return flat.reshape((width, height)).T.copy(), n_overlap


@numba.njit(cache=True, nogil=True)
def _bbox_runs(label_map, boxes, out):  # pragma: no cover - compiled
    """Runs of each instance inside its box; ``out`` rows are (label, start, length).

    ``boxes`` rows are (label, r0, r1, c0, c1). Returns the number of runs written and
    fills ``offsets``-free output in label order (boxes are given sorted by label).
    """
    height = label_map.shape[0]
    n = 0
    for b in range(boxes.shape[0]):
        label, r0, r1, c0, c1 = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3], boxes[b, 4]
        for c in range(c0, c1):
            r = r0
            while r < r1:
                if label_map[r, c] == label:
                    start = r
                    while r < r1 and label_map[r, c] == label:
                        r += 1
                    begin = c * height + start + 1
                    if n > 0 and out[n - 1, 0] == label and out[n - 1, 1] + out[n - 1, 2] == begin:
                        # A run that goes on from the bottom of one column into the top
                        # of the next (full-height boxes) is one run in Kaggle's numbering.
                        out[n - 1, 2] += r - start
                    else:
                        out[n, 0] = label
                        out[n, 1] = begin
                        out[n, 2] = r - start
                        n += 1
                else:
                    r += 1
    return n


def label_map_to_runs(label_map: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(label, runs)`` per instance of an int label map, in increasing label order.

    ``runs`` is an ``(n, 2)`` int64 array of 1-indexed ``(start, length)``. Each instance
    is encoded inside its bounding box (boxes from one :func:`scipy.ndimage.find_objects`
    pass, runs from one compiled kernel), never over the whole image, so the cost is
    proportional to the nuclei's boxes, not ``n_labels * H * W``.
    """
    if label_map.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label_map.shape}")
    if label_map.dtype.kind not in "iu":
        raise ValueError(f"label map must have an integer dtype, got {label_map.dtype}")
    if label_map.size and label_map.min() < 0:
        raise ValueError("label map has negative labels")
    slices = ndimage.find_objects(label_map)
    boxes = np.array(
        [(i + 1, s[0].start, s[0].stop, s[1].start, s[1].stop) for i, s in enumerate(slices) if s is not None],
        dtype=np.int64,
    ).reshape(-1, 5)
    if not len(boxes):
        return
    # A box of h x w pixels has at most ceil(h/2) runs per column.
    capacity = int((((boxes[:, 2] - boxes[:, 1] + 1) // 2) * (boxes[:, 4] - boxes[:, 3])).sum())
    out = np.empty((capacity, 3), dtype=np.int64)
    n = _bbox_runs(np.ascontiguousarray(label_map), boxes, out)
    out = out[:n]
    # Runs come out grouped by label in box order; split the groups.
    bounds = np.flatnonzero(np.diff(out[:, 0])) + 1
    for group in np.split(out, bounds):
        yield int(group[0, 0]), group[:, 1:]


def label_map_to_rows(image_id: str, label_map: np.ndarray) -> list[tuple[str, str]]:
    """Submission rows ``(image_id, rle)``, one per instance (bounding-box encoding).

    An image with no instance gets a single row with an empty ``EncodedPixels``, as the
    competition requires.
    """
    rows = [(image_id, pairs_to_rle(runs)) for _, runs in label_map_to_runs(label_map)]
    return rows or [(image_id, "")]


# --------------------------------------------------------------------------- RLE CSV files

#: The header of a submission; every run-length CSV has these two columns.
HEADER = "ImageId,EncodedPixels"
_COLUMNS = ("ImageId", "EncodedPixels")
#: Decompressed size above which a compressed CSV is refused (no file of the competition
#: comes near it; this stops a zip bomb).
_MAX_DECOMPRESSED = 1 << 30
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
#: Rows with a wrong number of fields listed in one message.
_SHOWN_ROWS = 20


@dataclasses.dataclass(frozen=True, eq=False)
class RleRows:
    """The rows of a run-length CSV as read: text fields, nothing parsed or judged.

    Attributes
    ----------
    name : str
        The file as messages name it (``sub.zip:sub.csv`` for a zipped CSV).
    columns : Mapping[str, list[str]]
        Each header column (its first occurrence) -> the field of every row, in file
        order. ``ImageId`` and ``EncodedPixels`` are always there.
    lines : (n,) int64 array
        The CSV line where each row starts (header = line 1). Blank lines are skipped;
        a quoted field may span lines.
    """

    name: str
    columns: Mapping[str, list[str]]
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.lines)


def read_rle_rows(
    path: str | os.PathLike,
    *,
    extra_columns: bool = False,
    error: type[DsbError] = DataError,
    warning: type[Warning] = UserWarning,
) -> RleRows:
    """Read a run-length CSV (a submission, train labels, a solution) into text rows.

    What a standard CSV reader reads is read, as Kaggle did: quoted fields and headers
    (R's ``write.csv`` writes ``"ImageId","EncodedPixels"``), CRLF or CR line ends,
    blank lines (skipped), a UTF-8 byte-order mark (read with a ``warning``), and gzip or
    zip compression (told by the content; a zip must hold one CSV). Only the file's form
    is checked here: what the rows say (ids, RLE, shapes) is the caller's to judge.

    Parameters
    ----------
    path : the CSV (or its ``.gz``/``.zip``)
    extra_columns : bool
        False: the header must be exactly ``ImageId,EncodedPixels`` (a submission).
        True: the header must name ``ImageId`` and ``EncodedPixels`` once each and may
        name others (a solution's ``Height,Width,Usage``). Names are compared as written
        (``" EncodedPixels"`` is another name).
    error : the :class:`~dsb.errors.DsbError` subclass to raise
        (:class:`~dsb.errors.SubmissionError` for a submission, ``DataError`` for labels).
    warning : the warning category for a byte-order mark

    Raises
    ------
    error
        The file is missing, unreadable, damaged (compressed), binary or not UTF-8 text,
        has no or another header, broken quoting, or rows without as many fields as the
        header (all such rows listed). Every message names the file and the line.
    """
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file")
    if not path.is_file():
        raise error(f"{path}: not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    data, name = _decompress(data, str(path), error)
    text = _decode_text(data, name, error, warning)
    return _parse_rows(text, name, error, extra_columns)


def _decompress(data: bytes, name: str, error: type[DsbError]) -> tuple[bytes, str]:
    """The CSV bytes of a gzip or zip file (``name`` then names the member), else ``data``."""
    if data.startswith(b"\x1f\x8b"):
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
                out = fh.read(_MAX_DECOMPRESSED + 1)
        except Exception as exc:  # BadGzipFile, EOFError (truncated), zlib.error, ...
            raise error(f"{name}: a damaged gzip file ({type(exc).__name__}: {exc})") from None
        if len(out) > _MAX_DECOMPRESSED:
            raise error(f"{name}: decompresses to more than {_MAX_DECOMPRESSED >> 20} MiB; not a CSV of RLE")
        return out, name
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                members = [m for m in zf.infolist()
                           if not m.is_dir() and "__MACOSX" not in m.filename.split("/")
                           and not m.filename.rsplit("/", 1)[-1].startswith(".")]
                if len(members) != 1:
                    shown = ", ".join(m.filename for m in members[:5]) or "nothing"
                    raise error(f"{name}: a zip must hold exactly one CSV file; it holds {len(members)} ({shown})")
                member = members[0]
                if member.file_size > _MAX_DECOMPRESSED:
                    raise error(f"{name}:{member.filename}: larger than {_MAX_DECOMPRESSED >> 20} MiB; not a CSV of RLE")
                with zf.open(member) as fh:
                    out = fh.read(_MAX_DECOMPRESSED + 1)
        except error:
            raise
        except Exception as exc:  # BadZipFile, zlib.error, EOFError, encrypted, unsupported method, ...
            raise error(f"{name}: a damaged or unsupported zip file ({type(exc).__name__}: {exc})") from None
        if len(out) > _MAX_DECOMPRESSED:
            raise error(f"{name}: decompresses to more than {_MAX_DECOMPRESSED >> 20} MiB; not a CSV of RLE")
        return out, f"{name}:{member.filename}"
    return data, name


def _line_of(data: bytes, offset: int) -> int:
    """1-based line of the byte at ``offset`` (CRLF, CR and LF all end a line)."""
    return len(_LINE_BREAK.findall(data[:offset].decode("latin-1"))) + 1


def _decode_text(data: bytes, name: str, error: type[DsbError], warning: type[Warning]) -> str:
    if not data.strip():
        raise error(f"{name}: empty file; expected the header {HEADER!r}")
    if b"\x00" in data:
        line = _line_of(data, data.index(b"\x00"))
        raise error(f"{name}: not a CSV file (binary data): a NUL byte on line {line}")
    if data.startswith(codecs.BOM_UTF8):
        # The caller's caller (read_submission, read_rle_csv) is who the user called.
        warnings.warn(f"{name}: starts with a UTF-8 byte-order mark; read without it", warning, stacklevel=4)
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{name}: not a CSV file (not UTF-8 text): byte 0x{data[exc.start]:02x} on line {_line_of(data, exc.start)}"
        ) from None


def _header_names(header: list[str] | None, extra_columns: bool) -> list[str] | None:
    """The column names of a good header, else None."""
    if header is None:
        return None
    if not extra_columns:
        return header if header == list(_COLUMNS) else None
    return header if all(header.count(c) == 1 for c in _COLUMNS) else None


def _header_problem(header: list[str] | None, first_line: str, extra_columns: bool) -> str:
    found = f"found {_shorten(first_line)!r}"
    if not extra_columns:
        quoting = " (quoting allowed)" if first_line.startswith('"') else ""
        return f"line 1 must be exactly {HEADER!r}{quoting}, {found}"
    names = header or []
    missing = [c for c in _COLUMNS if c not in names]
    twice = [c for c in _COLUMNS if names.count(c) > 1]
    what = (f"missing {', '.join(missing)}" if missing else f"{', '.join(twice)} more than once") if header else "not a CSV header"
    return f"line 1: the header needs the columns ImageId and EncodedPixels, once each; {what} ({found})"


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _parse_rows(text: str, name: str, error: type[DsbError], extra_columns: bool) -> RleRows:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, [])
    except csv.Error:
        header = None
    names = _header_names(header, extra_columns)
    if names is None:
        first_line = _LINE_BREAK.split(text, 1)[0]
        raise error(f"{name}: {_header_problem(header, first_line, extra_columns)}")

    n_fields = len(names)
    # All fields in one flat list (row after row): no list per row is kept, which would
    # make the garbage collector walk tens of thousands of them.
    fields: list[str] = []
    lines: list[int] = []
    bad_rows: list[str] = []
    try:
        previous_end = reader.line_num
        for record in reader:
            line, previous_end = previous_end + 1, reader.line_num
            if not record:  # a blank line
                continue
            if len(record) != n_fields:
                bad_rows.append(f"line {line}: {len(record)} field(s), expected {n_fields}")
                continue
            fields.extend(record)
            lines.append(line)
    except csv.Error as exc:
        raise error(f"{name}: not a valid CSV (line {reader.line_num}: {exc})") from None
    if bad_rows:
        shown = "\n  ".join(bad_rows[:_SHOWN_ROWS])
        more = f"\n  ... and {len(bad_rows) - _SHOWN_ROWS} more" if len(bad_rows) > _SHOWN_ROWS else ""
        what = f"the two columns {HEADER!r}" if n_fields == 2 else f"the header's {n_fields} fields"
        raise error(f"{name}: not a valid CSV: {len(bad_rows)} row(s) do not have exactly {what}:\n  {shown}{more}")

    columns: dict[str, list[str]] = {}
    for index, column in enumerate(names):
        columns.setdefault(column, fields[index::n_fields])
    return RleRows(name, columns, np.asarray(lines, dtype=np.int64))
