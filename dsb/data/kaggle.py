"""Read a Kaggle DSB2018 stage (a folder or a zip) and its instance labels.

A *stage* is the competition's layout, at the top of a folder or zip or under one top
folder inside it::

    <ImageId>/images/<ImageId>.png      the image (RGBA, RGB, gray or 16-bit gray)
    <ImageId>/masks/<any>.png           one binary PNG per nucleus (training stages only)

Labels come either from those mask PNGs or from a run-length CSV
(``stage1_train_labels.csv``, the community ``_fixed`` variant, or a solution file with
``ImageId,EncodedPixels,Height,Width,Usage``), read by :func:`read_rle_csv` (on top of
:func:`dsb.rle.read_rle_rows`, the reader submissions are read with too).

Everything is lazy: :func:`open_stage` builds an index from file names once (a zip is
never unpacked) and pixels are decoded only when asked for::

    stage = open_stage("stage1_train.zip")
    image = stage.read_image(stage.image_ids[0])
    label_map = stage.read_label_map(stage.image_ids[0])
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import IO, Callable, Iterable

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from dsb.data.imagetypes import classify_image
from dsb.errors import DataError
from dsb.rle import RleRows, mask_runs, read_rle_rows, rle_to_pairs, runs_to_label_map

__all__ = ["DataWarning", "RleTable", "Stage", "open_stage", "read_rle_csv", "sixteen_bit_scale", "stage_summary"]


class DataWarning(UserWarning):
    """The data could be read but is not clean (overlapping or empty masks, stray ids)."""


#: What reading a damaged zip member can raise: a bad header or CRC (BadZipFile), corrupt
#: deflate data (zlib.error), a truncated member (EOFError), an encrypted member
#: (RuntimeError) or an unsupported compression method (NotImplementedError).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError)
_IMAGE_ERRORS = (UnidentifiedImageError, SyntaxError, ValueError, *_ZIP_ERRORS)


def _zip_reason(exc: BaseException) -> str:
    if isinstance(exc, zlib.error):
        return f"corrupt compressed data: {exc}"
    if isinstance(exc, EOFError):
        return f"truncated data{': ' + str(exc) if str(exc) else ''}"
    return f"{type(exc).__name__}: {exc}"


def _image_error(what: str, exc: BaseException, size: int | None = None) -> DataError:
    """A readable message for an image that cannot be decoded (no ``<_io.BytesIO ...>``)."""
    if size == 0:
        return DataError(f"{what}: empty file (0 bytes); not a PNG image")
    if isinstance(exc, UnidentifiedImageError):
        return DataError(f"{what}: not a readable PNG (not an image file Pillow recognises)")
    if isinstance(exc, (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError)) and ".zip:" in what:
        return DataError(f"{what}: cannot read from the zip, damaged member ({_zip_reason(exc)})")
    return DataError(f"{what}: not a readable PNG ({exc})")


# --------------------------------------------------------------------------- RLE CSV

#: Zero or more ``start length`` pairs separated by whitespace (digits and spaces are
#: disjoint classes, so this cannot backtrack badly).
_RLE_PATTERN = r"\s*(?:\d+\s+\d+(?:\s+\d+\s+\d+)*)?\s*"


def _row_where(name: str, lines: np.ndarray, row: int) -> str:
    """``file: data row N (line L)``; ``row`` is the 0-based data row index."""
    return f"{name}: data row {row + 1} (line {int(lines[row])})"


class RleTable:
    """Instances of a Kaggle run-length CSV, grouped by image; RLE is parsed on demand.

    Build it with :func:`read_rle_csv`. Rows of one image keep their file order, which
    is the order of the instances (label ``k`` is the ``k``-th non-empty row).

    Attributes
    ----------
    path : Path
        The CSV file, as given (messages about a row name it as read: a zipped CSV's
        member too, and the row's CSV line).
    image_ids : list of str
        Image ids in order of first appearance in the file.
    ignored_ids : set of str
        Images whose ``Usage`` is ``"Ignored"`` (dropped from scoring, as on Kaggle).
    """

    def __init__(
        self,
        path: Path,
        encoded: np.ndarray,
        rows: dict[str, np.ndarray],
        shapes: dict[str, tuple[int, int]],
        usage: dict[str, str],
        name: str,
        lines: np.ndarray,
    ) -> None:
        self.path = path
        # Row messages name the file as read (``labels.zip:labels.csv`` when zipped) and
        # each row's CSV line.
        self._name = name
        self._lines = lines
        self._encoded = encoded
        self._rows = rows
        self._shapes = shapes
        self._usage = usage
        self.image_ids: list[str] = list(rows)
        self.ignored_ids: set[str] = {i for i, u in usage.items() if u == "Ignored"}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._rows

    def __repr__(self) -> str:
        return f"RleTable({str(self.path)!r}, {len(self)} images)"

    def _row_indices(self, image_id: str) -> np.ndarray:
        try:
            return self._rows[image_id]
        except KeyError:
            raise DataError(f"{self.path} has no rows for image {image_id}") from None

    def runs(self, image_id: str) -> list[np.ndarray]:
        """One ``(n, 2)`` int64 array of 1-indexed ``(start, length)`` per instance.

        Rows with an empty ``EncodedPixels`` (an image without nuclei) give no instance.
        """
        encoded = self._encoded[self._row_indices(image_id)]
        return [rle_to_pairs(text) for text in encoded if text]

    def n_instances(self, image_id: str) -> int:
        """Number of non-empty rows of ``image_id`` (no RLE is parsed)."""
        return int(np.count_nonzero(self._encoded[self._row_indices(image_id)] != ""))

    def shape(self, image_id: str) -> tuple[int, int] | None:
        """``(H, W)`` from the ``Height``/``Width`` columns, or ``None`` without them."""
        self._row_indices(image_id)
        return self._shapes.get(image_id)

    def usage(self, image_id: str) -> str | None:
        """The ``Usage`` of ``image_id`` (``Public``, ``Private``, ``Ignored``), or ``None``."""
        self._row_indices(image_id)
        return self._usage.get(image_id)

    def label_map(self, image_id: str, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Paint the instances of ``image_id`` into an ``(H, W)`` int32 label map.

        ``shape`` is required when the file has no ``Height``/``Width``; when both are
        known they must agree. Instances are numbered ``1..n`` in row order; overlaps
        keep the earliest row and are reported with a :class:`DataWarning`.

        Raises
        ------
        DataError
            Unknown id, missing or conflicting shape, or a run outside the image (the
            message names the file, the row and the id).
        """
        rows = self._row_indices(image_id)
        file_shape = self._shapes.get(image_id)
        if shape is None:
            if file_shape is None:
                raise DataError(
                    f"{self.path} has no Height/Width columns; the size of image {image_id} "
                    "must come from its PNG"
                )
            shape = file_shape
        shape = (int(shape[0]), int(shape[1]))
        if file_shape is not None and file_shape != shape:
            raise DataError(
                f"{self.path}: image {image_id} is {file_shape[0]}x{file_shape[1]} in the CSV "
                f"but {shape[0]}x{shape[1]} in its PNG"
            )
        n_pixels = shape[0] * shape[1]
        runs = []
        for row in rows:
            text = self._encoded[row]
            if not text:
                continue
            pairs = rle_to_pairs(text)
            if len(pairs):
                starts, lengths = pairs[:, 0], pairs[:, 1]
                if (starts < 1).any() or (lengths < 1).any():
                    raise DataError(
                        f"{_row_where(self._name, self._lines, row)}, image {image_id}: "
                        "a start < 1 or a length < 1"
                    )
                if (starts + lengths - 1 > n_pixels).any():
                    raise DataError(
                        f"{_row_where(self._name, self._lines, row)}, image {image_id}: a run goes past "
                        f"the last pixel of the {shape[0]}x{shape[1]} image ({n_pixels} pixels)"
                    )
            runs.append(pairs)
        return _paint_instances(image_id, runs, shape)


def read_rle_csv(path: str | os.PathLike) -> RleTable:
    """Read a Kaggle run-length CSV (train labels, fixed labels or a solution file).

    The file is read by :func:`dsb.rle.read_rle_rows` (the reader of submissions too: gzip
    or zip compression, quoting, CRLF/CR, blank lines, a byte-order mark with a
    :class:`DataWarning`). The header must contain ``ImageId`` and ``EncodedPixels``;
    optional ``Height`` and ``Width`` give each image's size and ``Usage`` its scoring
    split (``Public``, ``Private`` or ``Ignored``). Every RLE string is checked to be
    start/length pairs of integers here (vectorised); the strings are turned into arrays
    only by :meth:`RleTable.runs`, so reading the 29,461-row train labels takes well under
    a second.

    Raises
    ------
    DataError
        Missing file, damaged compression, binary or non-UTF-8 content, a malformed CSV,
        missing columns, an empty ``ImageId``, an unparseable ``EncodedPixels``, a bad or
        inconsistent ``Height``/``Width``/``Usage``. Messages name the file and the data
        row (1-based, not counting the header or blank lines) with its line number.
    """
    path = Path(path)
    read = read_rle_rows(path, extra_columns=True, error=DataError, warning=DataWarning)
    df = pd.DataFrame(read.columns, dtype=object)
    image_ids = df["ImageId"].str.strip()
    encoded = df["EncodedPixels"].str.strip()
    empty_id = np.flatnonzero((image_ids == "").to_numpy())
    if len(empty_id):
        raise DataError(f"{_row_where(read.name, read.lines, int(empty_id[0]))}: empty ImageId")
    bad = np.flatnonzero(~encoded.str.fullmatch(_RLE_PATTERN).to_numpy(dtype=bool))
    if len(bad):
        row = int(bad[0])
        text = encoded.iat[row]
        try:
            rle_to_pairs(text)
            reason = "not start/length pairs of integers"
        except ValueError as exc:
            reason = str(exc)
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise DataError(
            f"{_row_where(read.name, read.lines, row)}, image {image_ids.iat[row]}: EncodedPixels {shown!r} "
            f"is not valid RLE ({reason})"
            + (f"; {len(bad)} bad rows in all" if len(bad) > 1 else "")
        )

    # Row indices of each image, images in order of first appearance, rows in file order.
    codes, order = pd.factorize(image_ids)
    bounds = np.cumsum(np.bincount(codes, minlength=len(order)))[:-1]
    rows = dict(zip(order.tolist(), np.split(np.argsort(codes, kind="stable"), bounds)))
    shapes = _read_shapes(read, df, image_ids, rows)
    usage = _read_usage(read, df, image_ids, rows)
    return RleTable(path, encoded.to_numpy(dtype=object), rows, shapes, usage, read.name, read.lines)


def _read_shapes(
    read: RleRows, df: pd.DataFrame, image_ids: pd.Series, rows: dict[str, np.ndarray]
) -> dict[str, tuple[int, int]]:
    """Per-image ``(Height, Width)`` when the file has both columns; checks consistency."""
    has = [c in df.columns for c in ("Height", "Width")]
    if not any(has):
        return {}
    if not all(has):
        raise DataError(f"{read.name}: line 1: has only one of the Height and Width columns")
    dims = []
    for column in ("Height", "Width"):
        values = pd.to_numeric(df[column].str.strip(), errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values) | (values < 1) | (values != np.round(values)))
        if len(bad):
            row = int(bad[0])
            raise DataError(
                f"{_row_where(read.name, read.lines, row)}, image {image_ids.iat[row]}: "
                f"{column} {df[column].iat[row]!r} is not a positive integer"
            )
        dims.append(values.astype(np.int64))
    heights, widths = dims
    shapes = {}
    for image_id, idx in rows.items():
        h, w = heights[idx], widths[idx]
        if (h != h[0]).any() or (w != w[0]).any():
            row = int(idx[np.flatnonzero((h != h[0]) | (w != w[0]))[0]])
            raise DataError(
                f"{_row_where(read.name, read.lines, row)}: image {image_id} has Height/Width "
                f"{heights[row]}x{widths[row]} but {h[0]}x{w[0]} on its first row"
            )
        shapes[image_id] = (int(h[0]), int(w[0]))
    return shapes


def _read_usage(
    read: RleRows, df: pd.DataFrame, image_ids: pd.Series, rows: dict[str, np.ndarray]
) -> dict[str, str]:
    """Per-image ``Usage`` when the file has the column; one value per image."""
    if "Usage" not in df.columns:
        return {}
    values = df["Usage"].str.strip().to_numpy(dtype=object)
    usage = {}
    for image_id, idx in rows.items():
        first = values[idx[0]]
        differs = np.flatnonzero(values[idx] != first)
        if len(differs):
            row = int(idx[differs[0]])
            raise DataError(
                f"{_row_where(read.name, read.lines, row)}: image {image_id} has Usage {values[row]!r} "
                f"but {first!r} on its first row"
            )
        usage[image_id] = str(first)
    return usage


def _paint_instances(
    image_id: str, runs: list[np.ndarray], shape: tuple[int, int]
) -> np.ndarray:
    """Label map from per-instance runs; overlaps keep the first and are warned about.

    An instance hidden entirely by earlier ones would leave a gap in ``1..n``; labels
    are then renumbered so that they stay consecutive.
    """
    label_map, n_overlap = runs_to_label_map(runs, shape)
    if n_overlap:
        warnings.warn(
            f"{image_id}: {n_overlap} pixels claimed by more than one mask; kept the first",
            DataWarning,
            stacklevel=3,
        )
        present = np.bincount(label_map.ravel(), minlength=len(runs) + 1)[1:] > 0
        if not present.all():
            remap = np.zeros(len(runs) + 1, dtype=np.int32)
            remap[1:][present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
            label_map = remap[label_map]
    return label_map


# --------------------------------------------------------------------------- sources


class _DirSource:
    """Files under a folder, addressed by posix names relative to it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        # Only the two depths the Kaggle layout allows: <id>/... and <top>/<id>/...
        patterns = ("*/images/*", "*/masks/*")
        found = [p for pat in patterns for p in self.root.glob(pat)]
        if not found:
            found = [p for pat in patterns for p in self.root.glob("*/" + pat)]
        return [p.relative_to(self.root).as_posix() for p in found if p.is_file()]

    def open(self, name: str) -> IO[bytes]:
        try:
            return open(self.root / name, "rb")
        except OSError as exc:
            raise DataError(f"{self.describe(name)}: cannot read ({exc.strerror or exc})") from None

    def read(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except OSError as exc:
            raise DataError(f"{self.describe(name)}: cannot read ({exc.strerror or exc})") from None

    def describe(self, name: str) -> str:
        return str(self.root / name)


class _ZipSource:
    """Members of a zip, read in place. The handle is reopened in each process (a
    forked DataLoader worker must not share the parent's file offset) and dropped when
    pickled."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zf: zipfile.ZipFile | None = None
        self._pid = -1
        self._zipfile()  # fail early on a file that is not a zip

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zf is None or self._pid != os.getpid():
            try:
                self._zf = zipfile.ZipFile(self.path)
            except (*_ZIP_ERRORS, ValueError) as exc:
                raise DataError(f"{self.path}: a damaged zip file, not readable ({_zip_reason(exc)})") from None
            self._pid = os.getpid()
        return self._zf

    def __getstate__(self) -> dict:
        return {"path": self.path, "_zf": None, "_pid": -1}

    def names(self) -> list[str]:
        return [n for n in self._zipfile().namelist() if not n.endswith("/")]

    def open(self, name: str) -> IO[bytes]:
        try:
            return self._zipfile().open(name)
        except _ZIP_ERRORS as exc:
            raise DataError(f"{self.describe(name)}: cannot read from the zip, damaged member "
                            f"({_zip_reason(exc)})") from None

    def read(self, name: str) -> bytes:
        try:
            return self._zipfile().read(name)
        except _ZIP_ERRORS as exc:
            raise DataError(f"{self.describe(name)}: cannot read from the zip, damaged member "
                            f"({_zip_reason(exc)})") from None

    def describe(self, name: str) -> str:
        return f"{self.path}:{name}"

    def close(self) -> None:
        if self._zf is not None and self._pid == os.getpid():
            self._zf.close()
        self._zf = None


def _index(names: Iterable[str], where: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Map each ImageId to ``(image name, sorted mask names)`` from member names.

    The layout may sit at the top or under one folder (one common prefix for all ids).
    """
    images: dict[str, list[str]] = {}
    masks: dict[str, list[str]] = {}
    prefixes: set[str] = set()
    for name in names:
        parts = name.split("/")
        if len(parts) < 3 or parts[-2] not in ("images", "masks") or "__MACOSX" in parts:
            continue
        image_id, folder, file_name = parts[-3], parts[-2], parts[-1]
        prefixes.add("/".join(parts[:-3]))
        images.setdefault(image_id, [])
        masks.setdefault(image_id, [])
        if file_name.lower().endswith(".png") and not file_name.startswith("."):
            (images if folder == "images" else masks)[image_id].append(name)
    if len(prefixes) > 1:
        shown = ", ".join(repr(p + "/") for p in sorted(prefixes)[:3])
        raise DataError(f"{where}: images sit under several folders ({shown}); expected one stage")
    index = {}
    for image_id in sorted(images):
        expected = f"{image_id}.png"
        found = [n for n in images[image_id] if n.rsplit("/", 1)[-1] == expected]
        if not found:
            others = [n.rsplit("/", 1)[-1] for n in images[image_id]]
            raise DataError(
                f"{where}: image {image_id} has no images/{expected}"
                + (f" (found {', '.join(others[:3])})" if others else "")
            )
        index[image_id] = (found[0], tuple(sorted(masks[image_id])))
    return index


# --------------------------------------------------------------------------- images


def _decode_png(fh: IO[bytes], what: str) -> np.ndarray:
    """Pixels as ``(H, W, 3)`` uint8 or uint16 (16-bit gray); alpha dropped, gray replicated."""
    size = fh.getbuffer().nbytes if isinstance(fh, io.BytesIO) else None
    try:
        with Image.open(fh) as im:
            im.load()
            mode = im.mode
            if mode.startswith("I;16"):
                pixels = np.asarray(im).astype(np.uint16)
            elif mode == "I":  # 32-bit container: Pillow's form of some 16-bit PNGs
                pixels = np.asarray(im)
                if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
                    raise DataError(f"{what}: 32-bit gray values outside 0..65535")
                pixels = pixels.astype(np.uint16)
            elif mode in ("L", "RGB"):
                pixels = np.asarray(im)
            elif mode in ("LA", "RGBA"):
                pixels = np.asarray(im)[..., :-1]
            elif mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                pixels = np.asarray(im.convert("RGB"))
            else:
                raise DataError(f"{what}: unsupported image mode {mode!r}")
    except DataError:
        raise
    except _IMAGE_ERRORS as exc:
        raise _image_error(what, exc, size) from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return np.ascontiguousarray(pixels)


def _decode_mask(fh: IO[bytes], what: str) -> np.ndarray:
    """A mask PNG as ``(H, W)`` bool: any nonzero colour channel is foreground."""
    size = fh.getbuffer().nbytes if isinstance(fh, io.BytesIO) else None
    try:
        with Image.open(fh) as im:
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA")
            pixels = np.asarray(im)
            if im.mode in ("LA", "RGBA"):
                pixels = pixels[..., :-1]
    except _IMAGE_ERRORS as exc:
        raise _image_error(what, exc, size) from None
    return pixels.any(axis=-1) if pixels.ndim == 3 else pixels != 0


def _stream_size(fh: IO[bytes]) -> int | None:
    """Size of an open file or zip member, when it can be told cheaply."""
    try:
        if isinstance(fh, zipfile.ZipExtFile):
            return None
        return os.fstat(fh.fileno()).st_size
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return None


def sixteen_bit_scale(pixels: np.ndarray) -> int:
    """Full scale of the data in a 16-bit image: ``2**bits - 1`` for the fewest bits
    (at least 8) that hold its largest value.

    Cameras store 10-, 12- or 14-bit data in 16-bit PNGs; dividing 12-bit data by 65535
    leaves it within 0..0.06, nearly black, and a model trained on 8-bit images then sees
    no nuclei. Dividing by the data's own bit depth keeps the absolute scale of images of
    one camera comparable (no per-image stretch) while using the whole 0..1 range.
    """
    peak = int(pixels.max()) if pixels.size else 0
    return (1 << max(8, peak.bit_length())) - 1


# --------------------------------------------------------------------------- stage


class Stage:
    """A Kaggle stage: image ids, lazy image and label reading. Build with :func:`open_stage`.

    Attributes
    ----------
    path : Path
        The folder or zip, as given.
    image_ids : list of str
        Every image of the stage, sorted.
    labels : str or None
        ``"masks"``, the labels CSV path, or ``None`` (images only).
    labelled_ids : list of str
        The images whose labels can be read (sorted): all images when the stage has
        mask PNGs, the ids present in the labels CSV, or none.
    """

    def __init__(
        self,
        path: Path,
        source: _DirSource | _ZipSource,
        index: dict[str, tuple[str, tuple[str, ...]]],
        labels: str | None,
        table: RleTable | None,
    ) -> None:
        self.path = path
        self._source = source
        self._index = index
        self._table = table
        self._types: dict[str, str] = {}
        self.labels = labels
        self.image_ids: list[str] = sorted(index)
        if table is not None:
            self.labelled_ids = [i for i in self.image_ids if i in table]
        elif labels == "masks" and any(masks for _, masks in index.values()):
            # An image without mask files in a stage that has them has no nuclei.
            self.labelled_ids = list(self.image_ids)
        else:
            self.labelled_ids = []

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._index

    def __repr__(self) -> str:
        return f"Stage({str(self.path)!r}, {len(self)} images, labels={self.labels!r})"

    def __enter__(self) -> "Stage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the zip handle, if any (reading again reopens it)."""
        if isinstance(self._source, _ZipSource):
            self._source.close()

    @property
    def has_labels(self) -> bool:
        """Whether any label can be read (mask PNGs present, or a labels CSV given)."""
        return bool(self.labelled_ids)

    @property
    def table(self) -> RleTable | None:
        """The labels CSV as an :class:`RleTable`, when labels come from one."""
        return self._table

    def _entry(self, image_id: str) -> tuple[str, tuple[str, ...]]:
        try:
            return self._index[image_id]
        except KeyError:
            raise DataError(f"{self.path} has no image {image_id}") from None

    def describe(self, image_id: str) -> str:
        """Where the image lives, for messages: ``stage1_train.zip:<id>/images/<id>.png``."""
        return self._source.describe(self._entry(image_id)[0])

    def image_header(self, image_id: str) -> tuple[tuple[int, int], str]:
        """``((H, W), mode)`` from the PNG header; no pixel is decoded."""
        name = self._entry(image_id)[0]
        what = self._source.describe(name)
        with self._source.open(name) as fh:
            try:
                with Image.open(fh) as im:
                    return (im.size[1], im.size[0]), im.mode
            except _IMAGE_ERRORS as exc:
                raise _image_error(what, exc, _stream_size(fh)) from None

    def check_images(self, progress: Callable[[int], None] | None = None) -> None:
        """Check every image up front, so a damaged one fails before a long job starts.

        Each PNG's header is read and its chunks' checksums verified (Pillow's
        ``verify``: the file is read, not decoded), and a zip member's compressed data
        and CRC are read through. ``progress`` is called with the number checked.

        Raises
        ------
        DataError
            Naming the first image that is empty, truncated, corrupt or not a PNG.
        """
        for done, image_id in enumerate(self.image_ids, start=1):
            name = self._entry(image_id)[0]
            what = self._source.describe(name)
            data = self._source.read(name)
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.verify()
            except _IMAGE_ERRORS as exc:
                raise _image_error(what, exc, len(data)) from None
            if progress is not None:
                progress(done)

    def image_shape(self, image_id: str) -> tuple[int, int]:
        """``(H, W)`` from the PNG header (no pixel decoding)."""
        return self.image_header(image_id)[0]

    def image_mode(self, image_id: str) -> str:
        """The PIL mode the PNG is stored in (``RGBA``, ``RGB``, ``L``, ``I;16``...), from its header."""
        return self.image_header(image_id)[1]

    def _pixels(self, image_id: str) -> np.ndarray:
        name = self._entry(image_id)[0]
        return _decode_png(io.BytesIO(self._source.read(name)), self._source.describe(name))

    def read_image(self, image_id: str) -> np.ndarray:
        """The image as float32 ``(H, W, 3)`` in ``[0, 1]``.

        Normalisation: an alpha channel (RGBA, gray+alpha) is dropped; gray is
        replicated to three channels; 8-bit values are divided by 255; 16-bit gray values
        by the full scale of the bits the image really uses (:func:`sixteen_bit_scale`:
        4095 for 12-bit data stored in a 16-bit PNG, 65535 for full 16-bit data; no
        per-image contrast stretch); palette and other modes are converted to RGB by
        Pillow first.
        """
        pixels = self._pixels(image_id)
        scale = sixteen_bit_scale(pixels) if pixels.dtype == np.uint16 else 255
        return pixels.astype(np.float32) / np.float32(scale)

    def read_image_uint8(self, image_id: str) -> np.ndarray:
        """The image as uint8 ``(H, W, 3)`` (what training and overlays use); 16-bit
        images are scaled as in :meth:`read_image`, then rounded to 8 bits."""
        pixels = self._pixels(image_id)
        if pixels.dtype == np.uint16:
            scale = sixteen_bit_scale(pixels)
            pixels = ((pixels.astype(np.uint64) * 255 + scale // 2) // scale).astype(np.uint8)
        return pixels

    def read_label_map(self, image_id: str) -> np.ndarray:
        """Instances of ``image_id`` as an int32 ``(H, W)`` label map, 0 = background.

        Instances are ``1..n`` in sorted mask-file order (mask PNGs) or row order (CSV).
        A pixel claimed by several masks keeps the first and is reported with a
        :class:`DataWarning` naming the id; an empty mask PNG is skipped with a warning.

        Raises
        ------
        DataError
            The stage has no labels or the CSV has no rows for this image; a mask PNG
            is unreadable or of another size than the image; a run is outside it.
        """
        mask_names = self._entry(image_id)[1]
        if self._table is not None:
            if image_id not in self._table:
                raise DataError(
                    f"{self._table.path} has no rows for image {image_id} "
                    f"({self.describe(image_id)}); it labels {len(self.labelled_ids)} "
                    f"of the {len(self)} images"
                )
            return self._table.label_map(image_id, self.image_shape(image_id))
        if self.labels != "masks" or not self.labelled_ids:
            raise DataError(
                f"{self.path} has no labels (opened with labels={self.labels!r}"
                + (", and it holds no masks/*.png" if self.labels == "masks" else "")
                + "); give a labels CSV to read label maps"
            )
        shape = self.image_shape(image_id)
        runs = []
        for name in mask_names:
            what = self._source.describe(name)
            mask = _decode_mask(io.BytesIO(self._source.read(name)), what)
            if mask.shape != shape:
                raise DataError(
                    f"{what}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is "
                    f"{shape[0]}x{shape[1]}"
                )
            if not mask.any():
                warnings.warn(f"{image_id}: mask {what} is empty; skipped", DataWarning, stacklevel=2)
                continue
            runs.append(mask_runs(mask))
        return _paint_instances(image_id, runs, shape)

    def n_instances(self, image_id: str) -> int:
        """Nuclei in ``image_id`` counted without decoding: mask files or non-empty CSV rows."""
        mask_names = self._entry(image_id)[1]
        if self._table is not None:
            return self._table.n_instances(image_id) if image_id in self._table else 0
        return len(mask_names)

    def image_type(self, image_id: str) -> str:
        """``fluorescence``, ``brightfield`` or ``stained`` (see
        :func:`dsb.data.imagetypes.classify_image`); computed once per image."""
        if image_id not in self._types:
            self._types[image_id] = classify_image(self.read_image(image_id))
        return self._types[image_id]


def open_stage(path: str | os.PathLike, labels: str | os.PathLike | None = "masks") -> Stage:
    """Open a Kaggle stage folder or zip without unpacking it.

    Parameters
    ----------
    path : folder or ``.zip``
        ``<ImageId>/images/<ImageId>.png`` (and ``masks/*.png``) at the top or under
        one top folder.
    labels : ``"masks"``, a CSV path, or None
        ``"masks"`` reads ``<id>/masks/*.png`` (a stage without mask files then simply
        has no labels); a path reads a Kaggle RLE CSV (train labels, fixed labels or a
        solution file), whose ids must overlap the stage's; ``None`` opens images only.

    Raises
    ------
    DataError
        Missing path, unreadable zip, no Kaggle images, an id without
        ``images/<id>.png``, or a labels CSV that shares no id with the stage.
    """
    path = Path(path)
    if path.is_dir():
        source: _DirSource | _ZipSource = _DirSource(path)
    elif path.is_file():
        if not zipfile.is_zipfile(path):
            try:
                with open(path, "rb") as fh:
                    magic = fh.read(4)
            except OSError as exc:
                raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
            if magic.startswith(b"PK") or path.suffix.lower() == ".zip":
                raise DataError(
                    f"{path}: a damaged zip file (no end-of-archive record: truncated or "
                    "incompletely downloaded?); download it again"
                )
            raise DataError(f"{path}: not a folder or a zip file")
        source = _ZipSource(path)
    else:
        raise DataError(f"{path}: no such folder or zip file")
    index = _index(source.names(), path)
    if not index:
        raise DataError(
            f"{path}: no Kaggle images found (expected <ImageId>/images/<ImageId>.png "
            "at the top or under one folder)"
        )

    table = None
    if labels is not None and str(labels) != "masks":
        table = read_rle_csv(labels)
        labels = str(labels)
        stray = [i for i in table.image_ids if i not in index]
        if len(stray) == len(table):
            raise DataError(
                f"{labels} shares no ImageId with {path} (e.g. {table.image_ids[0]}); "
                "is it the labels file of another stage?"
            )
        if stray:
            warnings.warn(
                f"{labels}: {len(stray)} ImageIds are not in {path} (e.g. {stray[0]}); ignored",
                DataWarning,
                stacklevel=2,
            )
    elif labels is not None:
        labels = "masks"
    return Stage(path, source, index, labels, table)


#: How :func:`stage_summary` names the PIL modes images are stored in.
_MODE_NAMES = {"1": "binary", "L": "gray", "LA": "gray+alpha", "I;16": "gray16", "I;16B": "gray16",
               "I": "gray32", "P": "palette", "PA": "palette+alpha"}


def _count_stats(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values)
    return {"min": int(array.min()), "median": float(np.median(array)),
            "mean": round(float(array.mean()), 2), "max": int(array.max()), "total": int(array.sum())}


def stage_summary(
    stage: Stage, image_types: bool = True, progress: Callable[[int], None] | None = None
) -> dict:
    """What a stage holds, as one JSON-ready dict (``dsb data info``).

    Sizes and storage modes (``gray``, ``RGB``, ``RGBA``...) come from PNG headers and
    nuclei per image from mask file names or CSV rows, so nothing is decoded except for
    ``image_types`` (every image is read once; ``progress`` is called with the number
    done). Keys: ``path``, ``labels``, ``n_images``, ``n_labelled``, ``sizes`` (list of
    ``{height, width, count}``, most common first), ``modes``, ``nuclei_per_image``
    (``min/median/mean/max/total`` or None), ``image_types`` (or None), and ``usage``
    when the labels CSV has a ``Usage`` column.
    """
    sizes: Counter = Counter()
    modes: Counter = Counter()
    for image_id in stage.image_ids:
        shape, mode = stage.image_header(image_id)
        sizes[shape] += 1
        modes[_MODE_NAMES.get(mode, mode)] += 1
    summary: dict = {
        "path": str(stage.path),
        "labels": stage.labels,
        "n_images": len(stage),
        "n_labelled": len(stage.labelled_ids),
        "sizes": [
            {"height": h, "width": w, "count": c}
            for (h, w), c in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "modes": dict(modes.most_common()),
        "nuclei_per_image": _count_stats([stage.n_instances(i) for i in stage.labelled_ids]),
        "image_types": None,
    }
    table = stage.table
    if table is not None and any(table.usage(i) for i in stage.labelled_ids):
        summary["usage"] = dict(Counter(table.usage(i) for i in stage.labelled_ids).most_common())
    if image_types:
        types: Counter = Counter()
        for done, image_id in enumerate(stage.image_ids, start=1):
            types[stage.image_type(image_id)] += 1
            if progress is not None:
                progress(done)
        summary["image_types"] = dict(types.most_common())
    return summary
