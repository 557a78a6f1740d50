"""Kaggle submission files: strict reading, validation, scoring, and writes that cannot be invalid.

A submission is a UTF-8 CSV whose header is ``ImageId,EncodedPixels``, one row
per predicted nucleus (RLE as in :mod:`dsb.rle`), and one row with an empty
``EncodedPixels`` for an image without predictions. Whatever a standard CSV reader reads
is read, as Kaggle did: quoted fields and headers (R's ``write.csv``), CRLF or CR line
endings, a UTF-8 byte-order mark (with a :class:`SubmissionWarning`), and gzip or zip
compression. The file is read by :func:`dsb.rle.read_rle_rows`, the one reader of
run-length CSVs (labels and solution files are read by it too).

:func:`score_submission` scores a submission against a solution CSV or the held-out masks
of a stage, with the metric of :mod:`dsb.metrics` (which reads no file).

Two kinds of failure, two exits in ``dsb validate`` (and ``dsb score``):

* a file that is not such a CSV (missing, binary, damaged compression, not UTF-8,
  another header, a row without exactly two fields, broken quoting) raises
  :class:`~dsb.errors.SubmissionError` from :func:`read_submission` (exit 2);
* a well-formed file whose content is wrong gives a list of :class:`Problem`, each with
  its CSV line number (header = line 1) and ImageId, from :func:`check_submission`
  (exit 1). Every problem is reported, not only the first.

Rules checked (decisions where Kaggle's page is silent are marked *):

* every expected ImageId has a row, and no row has an unknown or empty ImageId;
* ``EncodedPixels`` is space-separated non-negative integers, an even number of them;
* every pair has ``start >= 1`` and ``length >= 1``; starts strictly increase and a run
  does not overlap the previous one (adjacent runs are allowed);
* every run ends inside the image (only when shapes are known);
* no pixel is claimed by two rows of the same image (checked with or without shapes:
  run positions identify pixels either way);
* an image with an empty row has no other row, and at most one empty row* (a duplicate
  empty row is harmless to the score but shows a bug in whatever wrote the file);
* blank lines are skipped* (as pandas, and so Kaggle, reads them).

Validation is vectorised over all rows at once (a 30,000-row file takes well under a
second): one byte buffer for all RLE strings, tokens and values found with NumPy.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dsb.data.kaggle import open_stage, read_rle_csv
from dsb.errors import DataError, InvalidSubmissionError, SubmissionError
from dsb.metrics import DatasetScore, image_score
from dsb.rle import HEADER, label_map_to_rows, read_rle_rows, runs_to_label_map
from dsb.utils import atomic_write

__all__ = [
    "HEADER",
    "Problem",
    "SubmissionWarning",
    "read_submission",
    "check_submission",
    "check_runs",
    "submission_runs",
    "score_submission",
    "write_submission",
    "write_submission_from_label_maps",
]

_COLUMNS = ("ImageId", "EncodedPixels")
# Characters allowed in EncodedPixels; anything else makes the row unparseable.
_NOT_RLE_CHAR = re.compile(r"[^0-9 ]")
# Characters an ImageId cannot contain and still be written as a plain CSV field.
_BAD_ID_CHAR = re.compile(r'[,"\r\n]')
# Values with more digits could overflow int64 (and no image has 10^18 pixels).
_MAX_DIGITS = 18
_SHOWN_PROBLEMS = 20


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a submission.

    Attributes
    ----------
    line : int or None
        CSV line number of the row (header = line 1); None for a problem with no row
        (an image missing from the file).
    image_id : str or None
    message : str
    """

    line: int | None
    image_id: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "no row"
        return f"{where}: {self.image_id or '(no ImageId)'}: {self.message}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- reading


class SubmissionWarning(UserWarning):
    """The submission was read but is not in the plain form (a byte-order mark)."""


def read_submission(path: str | os.PathLike, extra_columns: bool = False) -> pd.DataFrame:
    """Read a submission CSV strictly (with :func:`dsb.rle.read_rle_rows`).

    Anything a standard CSV reader reads is read: quoted fields and headers (R's
    ``write.csv`` writes ``"ImageId","EncodedPixels"``), CRLF or CR line endings, a
    UTF-8 byte-order mark (with a :class:`SubmissionWarning`), and a gzip- or
    zip-compressed file (Kaggle takes both; a zip must hold one CSV).

    Parameters
    ----------
    path : the CSV (or ``.gz``/``.zip``)
    extra_columns : bool
        Allow columns besides ``ImageId`` and ``EncodedPixels`` (e.g. a solution file's
        ``Height,Width,Usage``); they are read and dropped. Without it the header must
        be exactly ``ImageId,EncodedPixels``.

    Returns
    -------
    pandas.DataFrame
        Columns ``ImageId`` and ``EncodedPixels`` (str; ``""`` for an empty row), indexed
        by ``line``: the CSV line number where the row starts (header = line 1).

    Raises
    ------
    SubmissionError
        The file is missing, damaged (compressed), not UTF-8 text, has another header,
        broken quoting, or rows without exactly as many fields as the header (all such
        rows are listed).
    """
    rows = read_rle_rows(path, extra_columns=extra_columns, error=SubmissionError, warning=SubmissionWarning)
    return _frame(rows.columns["ImageId"], rows.columns["EncodedPixels"], rows.lines)


def _frame(image_ids: Sequence[str], rles: Sequence[str], lines: Sequence[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {"ImageId": list(image_ids), "EncodedPixels": list(rles)},
        index=pd.Index(np.asarray(lines, dtype=np.int64), name="line"),
        dtype=object,
    )


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------- parsing


@dataclasses.dataclass
class _Parsed:
    """All rows' RLE parsed at once: pairs in row order, and per-row parse errors."""

    starts: np.ndarray  # (n_pairs,) int64
    lengths: np.ndarray  # (n_pairs,) int64
    pair_row: np.ndarray  # (n_pairs,) int64 row index (position in the frame)
    errors: dict[int, str]  # row index -> message, for rows that did not parse


def _bad_token_message(text: str) -> str:
    for token in text.split():
        if not token.isascii() or not token.isdigit():
            return f"{_shorten(token, 20)!r} is not a non-negative integer"
    bad = _NOT_RLE_CHAR.search(text).group()
    return f"values must be separated by single spaces, found {bad!r}"


def _parse_rles(rles: Sequence[str]) -> _Parsed:
    """Parse every RLE string at once (NumPy over one byte buffer, no per-token Python)."""
    errors: dict[int, str] = {}
    good_rows: list[int] = []
    good_texts: list[str] = []
    for row, text in enumerate(rles):
        if _NOT_RLE_CHAR.search(text):
            errors[row] = _bad_token_message(text)
        elif text.strip():
            good_rows.append(row)
            good_texts.append(text)
    empty = np.zeros(0, np.int64)
    if not good_texts:
        return _Parsed(empty, empty, empty, errors)

    # One buffer, rows separated by "\n"; only digits, spaces and newlines remain.
    buf = np.frombuffer(("\n".join(good_texts) + "\n").encode("ascii"), dtype=np.uint8)
    is_digit = buf >= ord("0")
    row_of_byte = np.cumsum(buf == ord("\n"))  # newlines before a digit = its good-row index
    edge = np.diff(np.concatenate(([False], is_digit, [False])).view(np.int8))
    token_start = np.flatnonzero(edge == 1)
    token_end = np.flatnonzero(edge == -1)
    n_digits = token_end - token_start
    token_row = np.asarray(good_rows, dtype=np.int64)[row_of_byte[token_start]]

    # value = sum(digit * 10^(digits to its right)); over-long tokens are flagged below.
    digit_pos = np.flatnonzero(is_digit)
    token_of_digit = np.repeat(np.arange(token_start.size), n_digits)
    exponent = token_end[token_of_digit] - 1 - digit_pos
    weight = np.where(exponent < _MAX_DIGITS, 10 ** np.minimum(exponent, _MAX_DIGITS - 1), 0)
    digits = (buf[digit_pos] - ord("0")).astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(n_digits)[:-1]))
    values = np.add.reduceat(digits * weight, offsets)

    for row in np.unique(token_row[n_digits > _MAX_DIGITS]):
        errors[int(row)] = f"a value has more than {_MAX_DIGITS} digits"
    counts = np.bincount(token_row, minlength=len(rles))
    for row in np.flatnonzero(counts % 2):
        errors.setdefault(int(row), f"odd number of values ({counts[row]}); expected start/length pairs")

    keep = ~np.isin(token_row, np.fromiter(errors, np.int64, len(errors)))
    values, token_row = values[keep], token_row[keep]
    return _Parsed(values[0::2], values[1::2], token_row[0::2], errors)


def _run_problems(
    starts: np.ndarray, lengths: np.ndarray, pair_row: np.ndarray, n_pixels: np.ndarray | None
) -> list[tuple[int, str]]:
    """Per-row problems of runs grouped by row (rows contiguous, in pair order).

    ``n_pixels`` gives each pair's image size (``H * W``), or -1 / None where unknown.
    Returns ``(row, message)``, one message per row and kind, naming the first bad pair
    (1-based within the row).
    """
    problems: list[tuple[int, str]] = []
    if not starts.size:
        return problems
    first_of_row = np.concatenate(([True], pair_row[1:] != pair_row[:-1]))
    row_first_index = np.maximum.accumulate(np.where(first_of_row, np.arange(starts.size), 0))
    pair_number = np.arange(starts.size) - row_first_index + 1
    ends = starts + lengths - 1

    def report(bad: np.ndarray, describe) -> None:
        index = np.flatnonzero(bad)
        if not index.size:
            return
        rows, first, count = np.unique(pair_row[index], return_index=True, return_counts=True)
        for row, i, n in zip(rows.tolist(), index[first].tolist(), count.tolist()):
            more = f" (and {n - 1} more pair(s) like it)" if n > 1 else ""
            problems.append((row, describe(i) + more))

    report(
        (starts < 1) | (lengths < 1),
        lambda i: f"pair {pair_number[i]} ({starts[i]} {lengths[i]}): start and length must be at least 1",
    )
    previous_start = np.concatenate(([0], starts[:-1]))
    previous_end = np.concatenate(([0], ends[:-1]))
    same_row = ~first_of_row
    unsorted = same_row & (starts <= previous_start)
    report(
        unsorted,
        lambda i: f"pairs not sorted: pair {pair_number[i]} starts at {starts[i]}, "
        f"not after the previous start {previous_start[i]}",
    )
    report(
        same_row & ~unsorted & (starts <= previous_end),
        lambda i: f"runs overlap: pair {pair_number[i]} starts at {starts[i]}, inside the "
        f"previous run {previous_start[i]}..{previous_end[i]}",
    )
    if n_pixels is not None:
        known = n_pixels >= 0
        report(
            known & (lengths >= 1) & (ends > n_pixels),
            lambda i: f"pair {pair_number[i]} ({starts[i]} {lengths[i]}) ends at pixel {ends[i]}, "
            f"past the image's last pixel {n_pixels[i]}",
        )
    return problems


def check_runs(runs: np.ndarray, shape: tuple[int, int] | None = None) -> list[str]:
    """Problems of one row's runs: positive, sorted, non-overlapping, inside ``shape``.

    Parameters
    ----------
    runs : (n, 2) int array of 1-indexed ``(start, length)``
    shape : (H, W), optional; without it the in-image check is skipped.

    Returns
    -------
    list of str
        Empty when the runs are valid. The same checks :func:`check_submission` applies
        to every row.
    """
    runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    n_pixels = None if shape is None else np.full(len(runs), int(shape[0]) * int(shape[1]), np.int64)
    found = _run_problems(runs[:, 0], runs[:, 1], np.zeros(len(runs), np.int64), n_pixels)
    return [message for _, message in found]


# --------------------------------------------------------------------------- checking


def _as_frame(submission: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    if isinstance(submission, pd.DataFrame):
        missing = [c for c in _COLUMNS if c not in submission.columns]
        if missing:
            raise SubmissionError(f"submission frame lacks column(s) {missing}")
        return submission
    return read_submission(submission)


def _row_lines(frame: pd.DataFrame) -> np.ndarray:
    """CSV line of each row: the ``line`` index from :func:`read_submission`, else as written."""
    if frame.index.name == "line":
        return np.asarray(frame.index, dtype=np.int64)
    return np.arange(len(frame), dtype=np.int64) + 2


def _inspect(
    frame: pd.DataFrame,
    image_shapes: Mapping[str, tuple[int, int]] | None,
    image_ids: Iterable[str] | None,
) -> tuple[list[Problem], _Parsed, np.ndarray]:
    """All problems, plus the parsed runs and each row's ImageId (for callers that go on)."""
    ids = np.array([("" if pd.isna(v) else str(v)) for v in frame["ImageId"]], dtype=object)
    rles = ["" if pd.isna(v) else str(v) for v in frame["EncodedPixels"]]
    lines = _row_lines(frame)
    if image_ids is None and image_shapes is not None:
        image_ids = list(image_shapes)
    expected = None if image_ids is None else dict.fromkeys(str(i) for i in image_ids)

    found: list[tuple[int, str]] = []  # (row, message)

    # ImageIds: empty, unwritable, unknown.
    for row, image_id in enumerate(ids):
        if not image_id:
            found.append((row, "empty ImageId"))
        elif expected is not None and image_id not in expected:
            hint = " (it has leading/trailing whitespace)" if image_id.strip() in expected else ""
            found.append((row, f"unknown ImageId{hint}"))
        elif _BAD_ID_CHAR.search(image_id):
            found.append((row, "ImageId contains a comma, quote or line break"))

    # RLE syntax, then the runs of every row at once.
    parsed = _parse_rles(rles)
    found.extend(parsed.errors.items())
    n_pixels = None
    if image_shapes is not None:
        size_of = {str(k): int(v[0]) * int(v[1]) for k, v in image_shapes.items()}
        n_pixels = np.array([size_of.get(i, -1) for i in ids], dtype=np.int64)[parsed.pair_row]
    found.extend(_run_problems(parsed.starts, parsed.lengths, parsed.pair_row, n_pixels))

    # Empty rows: one per image without predictions, and nothing else for that image.
    is_empty = np.array([not r.strip() for r in rles], dtype=bool)
    first_empty: dict[str, int] = {}
    pixel_rows: dict[str, list[int]] = {}
    for row in range(len(ids)):
        if is_empty[row]:
            if ids[row] in first_empty:
                found.append((row, f"duplicate empty row for this image (first at line {lines[first_empty[ids[row]]]})"))
            else:
                first_empty[ids[row]] = row
        else:
            pixel_rows.setdefault(ids[row], []).append(row)
    for image_id, row in first_empty.items():
        if image_id in pixel_rows:
            other = pixel_rows[image_id]
            shown = ", ".join(str(lines[r]) for r in other[:5]) + (", ..." if len(other) > 5 else "")
            found.append((row, f"empty row, but this image also has {len(other)} row(s) with pixels (line {shown})"))

    # No pixel claimed twice within an image (rows whose own runs are fine).
    bad_rows = {row for row, _ in found}
    found.extend(_cross_row_overlaps(parsed, ids, lines, bad_rows))

    problems = [Problem(int(lines[row]), str(ids[row]), message) for row, message in found]
    problems.sort(key=lambda p: p.line)
    if expected is not None:
        present = set(ids.tolist())
        problems.extend(
            Problem(None, image_id, "no row for this image (an image without nuclei needs one row with empty EncodedPixels)")
            for image_id in expected
            if image_id not in present
        )
    return problems, parsed, ids


def _cross_row_overlaps(
    parsed: _Parsed, ids: np.ndarray, lines: np.ndarray, bad_rows: set[int]
) -> list[tuple[int, str]]:
    """Rows of one image that claim the same pixels, reported on the later line."""
    keep = ~np.isin(parsed.pair_row, np.fromiter(bad_rows, np.int64, len(bad_rows)))
    starts, lengths, rows = parsed.starts[keep], parsed.lengths[keep], parsed.pair_row[keep]
    if not starts.size:
        return []
    _, image_of_row = np.unique(ids.astype(str), return_inverse=True)
    image_index = image_of_row[rows]
    order = np.lexsort((starts, image_index))
    starts, ends, rows, image_index = starts[order], (starts + lengths - 1)[order], rows[order], image_index[order]
    # Running max of run ends, restarted per image by an offset larger than any end.
    offset = image_index.astype(np.int64) * (int(ends.max()) + 2)
    running_end = np.maximum.accumulate(ends + offset)
    holder = np.maximum.accumulate(np.where(ends + offset == running_end, np.arange(ends.size), 0))
    clash = np.flatnonzero(
        (image_index[1:] == image_index[:-1]) & (starts[1:] + offset[1:] <= running_end[:-1])
    ) + 1
    if not clash.size:
        return []
    other = holder[clash - 1]
    n_shared = np.minimum(ends[clash], ends[other]) - starts[clash] + 1
    shared: dict[tuple[int, int], int] = {}
    for a, b, n in zip(rows[clash].tolist(), rows[other].tolist(), n_shared.tolist()):
        later, earlier = (a, b) if lines[a] > lines[b] else (b, a)
        shared[(later, earlier)] = shared.get((later, earlier), 0) + n
    return [
        (later, f"{n} pixel(s) also claimed by line {lines[earlier]} (same image); a pixel may belong to one nucleus only")
        for (later, earlier), n in shared.items()
    ]


def check_submission(
    submission: pd.DataFrame | str | os.PathLike,
    image_shapes: Mapping[str, tuple[int, int]] | None = None,
    image_ids: Iterable[str] | None = None,
) -> list[Problem]:
    """Every problem of a submission (empty list when it is valid).

    Parameters
    ----------
    submission : DataFrame from :func:`read_submission`, or a path
        A frame without a ``line`` index gets lines ``2, 3, ...`` (as it would be written).
    image_shapes : {ImageId: (H, W)}, optional
        Enables the in-image check; also the expected ids when ``image_ids`` is None.
    image_ids : iterable of str, optional
        The expected ids (every one needs a row; any other id is unknown). With neither
        argument only the per-row checks run.

    Returns
    -------
    list of Problem
        Row problems by line number, then images with no row.

    Raises
    ------
    SubmissionError
        ``submission`` is a path to a malformed file (see :func:`read_submission`).
    """
    return _inspect(_as_frame(submission), image_shapes, image_ids)[0]


def _raise_problems(name: str, problems: list[Problem], what: str) -> None:
    shown = "\n".join(f"  {p}" for p in problems[:_SHOWN_PROBLEMS])
    more = f"\n  ... and {len(problems) - _SHOWN_PROBLEMS} more" if len(problems) > _SHOWN_PROBLEMS else ""
    raise InvalidSubmissionError(f"{name}: {len(problems)} problem(s); {what}:\n{shown}{more}", problems)


def submission_runs(
    submission: pd.DataFrame | str | os.PathLike,
    image_shapes: Mapping[str, tuple[int, int]] | None = None,
    image_ids: Iterable[str] | None = None,
    name: str | None = None,
) -> dict[str, list[np.ndarray]]:
    """The runs of a valid submission, per image: ``{ImageId: [(n, 2) int64 arrays]}``.

    Rows keep their file order; an image with only an empty row maps to ``[]``. Checks
    as :func:`check_submission` (one parse serves both).

    ``name`` names the file in messages when ``submission`` is a frame.

    Raises
    ------
    SubmissionError
        The file is malformed; :class:`~dsb.errors.InvalidSubmissionError` (a subclass,
        exit code 1, with every problem in ``.problems``) when it has any problem.
    """
    frame = _as_frame(submission)
    problems, parsed, ids = _inspect(frame, image_shapes, image_ids)
    if problems:
        if name is None:
            name = str(submission) if not isinstance(submission, pd.DataFrame) else "submission"
        _raise_problems(name, problems, "Kaggle would refuse it (`dsb validate` lists them all)")
    runs: dict[str, list[np.ndarray]] = {str(i): [] for i in dict.fromkeys(ids.tolist())}
    pairs = np.stack([parsed.starts, parsed.lengths], axis=1)
    bounds = np.flatnonzero(np.diff(parsed.pair_row)) + 1
    for group, row_pairs in zip(np.split(parsed.pair_row, bounds), np.split(pairs, bounds)):
        if group.size:
            runs[str(ids[group[0]])].append(row_pairs)
    return runs


# --------------------------------------------------------------------------- scoring


class _Solution:
    """Truth for scoring: ids, shapes and label maps from a solution CSV or a stage."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if path.is_file() and not zipfile.is_zipfile(path):
            table = read_rle_csv(path)
            missing = [i for i in table.image_ids if table.shape(i) is None]
            if missing:
                raise DataError(
                    f"{path}: a solution CSV needs Height and Width columns (no shape for "
                    f"{len(missing)} image(s), e.g. {missing[0]}); give the Kaggle-layout "
                    "folder or zip with masks/ instead"
                )
            self.all_ids = list(table.image_ids)
            self.shapes = {i: table.shape(i) for i in self.all_ids}
            self.label_map = table.label_map
            ignored = table.ignored_ids
        else:
            stage = open_stage(path, labels="masks")
            if not stage.has_labels:
                raise DataError(f"{path}: no <ImageId>/masks/*.png; a solution folder or zip needs the held-out masks")
            self.all_ids = list(stage.image_ids)
            self.shapes = {i: stage.image_shape(i) for i in self.all_ids}
            self.label_map = stage.read_label_map
            ignored = set()
        self.ignored_ids = tuple(i for i in self.all_ids if i in ignored)
        self.scored_ids = [i for i in self.all_ids if i not in ignored]


def score_submission(
    submission_csv: str | os.PathLike, solution: str | os.PathLike
) -> DatasetScore:
    """Score a submission CSV against the held-out truth, as Kaggle would.

    Parameters
    ----------
    submission_csv : path
        ``ImageId,EncodedPixels`` file (extra columns are ignored; read as by
        :func:`read_submission`). It must pass :func:`check_submission` against the
        solution's ids and shapes (Kaggle refused invalid submissions), else
        :class:`~dsb.errors.InvalidSubmissionError` carries every problem.
    solution : path
        Either a solution CSV (``ImageId,EncodedPixels,Height,Width`` and optionally
        ``Usage``; images whose rows say ``Usage == "Ignored"`` must be in the submission
        but are not scored), or a Kaggle-layout folder/zip with ``<id>/masks/*.png``
        (shapes from the images).

    Returns
    -------
    DatasetScore
        Images in the solution's order; the metric is :func:`dsb.metrics.image_score`.
    """
    truth = _Solution(solution)
    # Whatever columns the file carries (a solution file scored as a submission has
    # Height/Width/Usage too; they are ignored), its rows pass the same checks as
    # `dsb validate`: a duplicate, unknown id or unsorted pair is refused, not scored.
    frame = read_submission(submission_csv, extra_columns=True)
    runs_by_id = submission_runs(frame, image_shapes=truth.shapes, image_ids=truth.all_ids,
                                 name=str(submission_csv))
    records = []
    for image_id in truth.scored_ids:
        true_labels = truth.label_map(image_id)
        # A valid submission has no overlaps, so painting loses nothing.
        pred_labels, _ = runs_to_label_map(runs_by_id[image_id], truth.shapes[image_id])
        records.append(image_score(true_labels, pred_labels, image_id=image_id))
    return DatasetScore.from_images(records, ignored_ids=truth.ignored_ids)


# --------------------------------------------------------------------------- writing


def write_submission(
    path: str | os.PathLike,
    rows: Iterable[tuple[str, str]],
    image_shapes: Mapping[str, tuple[int, int]] | None,
) -> Path:
    """Check ``(ImageId, EncodedPixels)`` rows and write them atomically; never an invalid file.

    Parameters
    ----------
    path : output CSV path (parent folders are created)
    rows : iterable of (str, str)
        RLE strings as from :func:`dsb.rle.label_map_to_rows`; ``""`` or None for an
        image without nuclei.
    image_shapes : {ImageId: (H, W)} or None
        The images the file must cover, with their shapes (None: only per-row checks).

    Raises
    ------
    SubmissionError
        Listing the problems (line numbers as the file would have had); nothing is written.
    """
    image_ids: list[str] = []
    rles: list[str] = []
    for image_id, rle in rows:
        image_ids.append(str(image_id))
        rles.append("" if rle is None else str(rle))
    frame = _frame(image_ids, rles, range(2, len(image_ids) + 2))
    problems = check_submission(frame, image_shapes)
    if problems:
        _raise_problems(str(path), problems, "nothing was written")
    path = Path(path)
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(HEADER + "\n")
        fh.writelines(f"{image_id},{rle}\n" for image_id, rle in zip(image_ids, rles))
    return path


def write_submission_from_label_maps(
    path: str | os.PathLike,
    label_maps: Iterable[tuple[str, np.ndarray]],
    image_shapes: Mapping[str, tuple[int, int]] | None = None,
) -> Path:
    """Encode ``(ImageId, label_map)`` pairs one at a time and write a checked submission.

    Only the RLE strings are kept, so ``label_maps`` can be a generator over a large
    test set. ``image_shapes`` (e.g. from the stage's images) makes every expected id
    required and every label map's shape checked; without it the ids and shapes seen
    are used.
    """
    rows: list[tuple[str, str]] = []
    seen_shapes: dict[str, tuple[int, int]] = {}
    for image_id, label_map in label_maps:
        image_id = str(image_id)
        shape = tuple(int(v) for v in np.shape(label_map))
        if image_shapes is not None and image_id in image_shapes and tuple(image_shapes[image_id]) != shape:
            raise SubmissionError(
                f"{image_id}: label map has shape {shape}, the image is {tuple(image_shapes[image_id])}"
            )
        seen_shapes[image_id] = shape  # type: ignore[assignment]
        rows.extend(label_map_to_rows(image_id, label_map))
    return write_submission(path, rows, image_shapes if image_shapes is not None else seen_shapes)
