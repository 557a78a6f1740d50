"""Submission files: strict reading, every problem with its line, scoring, safe writing."""

from __future__ import annotations

import gzip
import zipfile

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsb.data.kaggle import open_stage, read_rle_csv
from dsb.data.synthetic import write_synthetic_dataset
from dsb.errors import DataError, SubmissionError
from dsb.metrics import image_score, score_label_maps
from dsb.rle import rle_to_pairs, runs_to_label_map
from dsb.submission import (
    HEADER,
    Problem,
    SubmissionWarning,
    _parse_rles,
    check_runs,
    check_submission,
    read_submission,
    score_submission,
    submission_runs,
    write_submission,
    write_submission_from_label_maps,
)

SHAPES = {"a": (4, 5), "b": (3, 3), "c": (10, 2)}


def write(tmp_path, text: str | bytes, name: str = "sub.csv"):
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


def csv_text(*rows: str) -> str:
    return "\n".join((HEADER,) + rows) + "\n"


def problems_of(tmp_path, *rows: str, shapes=SHAPES, ids=None) -> list[tuple[int | None, str, str]]:
    found = check_submission(write(tmp_path, csv_text(*rows)), image_shapes=shapes, image_ids=ids)
    return [(p.line, p.image_id, p.message) for p in found]


VALID = ("a,1 2 5 3", "a,9 2", "b,", "c,11 10")


# ----------------------------------------------------------------- reading


def test_read_valid_file_with_line_numbers(tmp_path):
    frame = read_submission(write(tmp_path, csv_text(*VALID)))
    assert list(frame.columns) == ["ImageId", "EncodedPixels"]
    assert frame.index.name == "line" and frame.index.tolist() == [2, 3, 4, 5]
    assert frame["EncodedPixels"].tolist() == ["1 2 5 3", "9 2", "", "11 10"]
    assert check_submission(frame, SHAPES) == []


def test_crlf_quotes_and_blank_lines(tmp_path):
    text = f'{HEADER}\r\n"a","1 2 5 3"\r\n\r\na,9 2\r\nb,\r\n"c",11 10\r\n'
    frame = read_submission(write(tmp_path, text))
    assert frame.index.tolist() == [2, 4, 5, 6]  # the blank line 3 is skipped
    assert check_submission(frame, SHAPES) == []


def test_multiline_field_is_reported_on_its_first_line(tmp_path):
    path = write(tmp_path, f'{HEADER}\na,1 2\nb,"1\n2"\nc,11 10\n')
    frame = read_submission(path)
    assert frame.index.tolist() == [2, 3, 5]
    problems = check_submission(frame, SHAPES)
    assert [(p.line, p.image_id) for p in problems] == [(3, "b")]
    assert "single spaces" in problems[0].message


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        (f"{HEADER}\na,1 2\nb,caf\u00e9\n".encode("latin-1"), "not UTF-8.*line 3"),
        (b"ImageId,Encoded\na,1 1\n", "line 1 must be exactly"),
        (b"EncodedPixels,ImageId\n1 1,a\n", "line 1 must be exactly"),
        (b"ImageId,EncodedPixels,Extra\na,1 1,x\n", "line 1 must be exactly"),
        (b"ImageId;EncodedPixels\na;1 1\n", "line 1 must be exactly"),
        (b"ImageId, EncodedPixels\na,1 1\n", "line 1 must be exactly"),
        (csv_text("a,1 1,extra", "b", "c,1 1").encode(), r"(?s)2 row\(s\).*line 2: 3 field.*line 3: 1 field"),
        (csv_text('a,"1 1').encode(), "not a valid CSV"),
        (bytes(range(256)) * 4, "binary"),
    ],
)
def test_malformed_files_raise_submission_error(tmp_path, content, message):
    with pytest.raises(SubmissionError, match=message):
        read_submission(write(tmp_path, content))
    with pytest.raises(SubmissionError):
        check_submission(write(tmp_path, content), SHAPES)


# ----------------------------------------------------------------- files Kaggle accepts (issue 11, defect 6)


def test_quoted_header_as_r_writes_it(tmp_path):
    text = '"ImageId","EncodedPixels"\n"a","1 2 5 3"\n"a","9 2"\n"b",""\n"c","11 10"\n'
    frame = read_submission(write(tmp_path, text))
    assert frame.index.tolist() == [2, 3, 4, 5]
    assert check_submission(frame, SHAPES) == []


def test_crlf_and_cr_only_line_endings(tmp_path):
    for newline in ("\r\n", "\r"):
        text = newline.join((HEADER, *VALID)) + newline
        frame = read_submission(write(tmp_path, text))
        assert frame.index.tolist() == [2, 3, 4, 5], newline
        assert check_submission(frame, SHAPES) == []


def test_bom_is_read_with_a_warning(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + csv_text(*VALID).encode())
    with pytest.warns(SubmissionWarning, match="byte-order mark"):
        frame = read_submission(path)
    assert check_submission(frame, SHAPES) == []


def test_gzip_and_zip_submissions(tmp_path):
    text = csv_text(*VALID).encode()
    gz = tmp_path / "sub.csv.gz"
    gz.write_bytes(gzip.compress(text))
    zipped = tmp_path / "sub.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("sub.csv", text)
    for path in (gz, zipped):
        frame = read_submission(path)
        assert frame.index.tolist() == [2, 3, 4, 5]
        assert check_submission(frame, SHAPES) == []
    # Problems in a compressed file name the member.
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("inner.csv", b"ImageId,Foo\na,1 1\n")
    with pytest.raises(SubmissionError, match=r"sub\.zip:inner\.csv: line 1"):
        read_submission(zipped)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x1f\x8b\x08\x00garbage", "damaged gzip"),
        (None, "damaged gzip"),  # truncated
        (b"PK\x03\x04" + b"\x00" * 40, "damaged or unsupported zip"),
    ],
)
def test_damaged_compressed_submissions(tmp_path, content, message):
    if content is None:
        content = gzip.compress(csv_text(*VALID).encode() * 50)[:-30]
    with pytest.raises(SubmissionError, match=message):
        read_submission(write(tmp_path, content))


def test_zip_with_two_files_is_refused(tmp_path):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.csv", csv_text(*VALID))
        zf.writestr("b.csv", csv_text(*VALID))
    with pytest.raises(SubmissionError, match="exactly one CSV"):
        read_submission(path)


def test_extra_columns_only_when_allowed(tmp_path):
    path = write(tmp_path, 'ImageId,EncodedPixels,Height,Width\na,1 2,4,5\nb,,3,3\nc,11 10,10,2\n')
    with pytest.raises(SubmissionError, match="line 1 must be exactly"):
        read_submission(path)
    frame = read_submission(path, extra_columns=True)
    assert frame["EncodedPixels"].tolist() == ["1 2", "", "11 10"]
    with pytest.raises(SubmissionError, match="line 3: 2 field"):
        read_submission(write(tmp_path, 'ImageId,EncodedPixels,Height\na,1 2,4\nb,\n'), extra_columns=True)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(SubmissionError, match="no such file"):
        read_submission(tmp_path / "nope.csv")
    with pytest.raises(SubmissionError, match="not a file"):
        read_submission(tmp_path)


def test_header_only_file_misses_every_image(tmp_path):
    problems = check_submission(write(tmp_path, HEADER + "\n"), SHAPES)
    assert [(p.line, p.image_id) for p in problems] == [(None, "a"), (None, "b"), (None, "c")]
    assert all("no row for this image" in p.message for p in problems)


# ----------------------------------------------------------------- every problem, with its line


def test_ids_unknown_missing_empty_and_whitespace(tmp_path):
    found = problems_of(tmp_path, "a,1 1", "zzz,1 1", ",1 1", " b,", "c,")
    assert found == [
        (3, "zzz", "unknown ImageId"),
        (4, "", "empty ImageId"),
        (5, " b", "unknown ImageId (it has leading/trailing whitespace)"),
        (None, "b", "no row for this image (an image without nuclei needs one row with empty EncodedPixels)"),
    ]


def test_rle_syntax_problems(tmp_path):
    found = problems_of(
        tmp_path, "a,1 x", "a,3", "a,1.5 2", "a,-3 2", "b,1\t2", "c,12345678901234567890 1", "c,1 1"
    )
    assert [(line, image_id) for line, image_id, _ in found] == [(2, "a"), (3, "a"), (4, "a"), (5, "a"), (6, "b"), (7, "c")]
    messages = [m for _, _, m in found]
    assert messages[0] == "'x' is not a non-negative integer"
    assert messages[1] == "odd number of values (1); expected start/length pairs"
    assert messages[2] == "'1.5' is not a non-negative integer"
    assert messages[3] == "'-3' is not a non-negative integer"
    assert messages[4] == "values must be separated by single spaces, found '\\t'"
    assert "more than 18 digits" in messages[5]


def test_run_problems(tmp_path):
    found = problems_of(
        tmp_path,
        "a,0 2",  # start 0
        "a,3 0",  # length 0
        "a,10 1 5 1",  # unsorted
        "a,10 3 12 2",  # overlapping runs
        "a,15 2 17 1",  # adjacent runs: fine
        "b,9 1 8 1 3 1",  # unsorted twice
        "c,19 2",  # 19..20 inside a 10x2 image: fine
        "c,1 1 20 2",  # past the last pixel (20)
    )
    assert found == [
        (2, "a", "pair 1 (0 2): start and length must be at least 1"),
        (3, "a", "pair 1 (3 0): start and length must be at least 1"),
        (4, "a", "pairs not sorted: pair 2 starts at 5, not after the previous start 10"),
        (5, "a", "runs overlap: pair 2 starts at 12, inside the previous run 10..12"),
        (7, "b", "pairs not sorted: pair 2 starts at 8, not after the previous start 9 (and 1 more pair(s) like it)"),
        (9, "c", "pair 2 (20 2) ends at pixel 21, past the image's last pixel 20"),
    ]


def test_pixels_claimed_twice_across_rows(tmp_path):
    found = problems_of(tmp_path, "a,1 3", "b,1 1", "a,3 2 10 1", "a,20 1", "a,10 2", "c,1 1", "c,1 1")
    assert found == [
        (4, "a", "1 pixel(s) also claimed by line 2 (same image); a pixel may belong to one nucleus only"),
        (6, "a", "1 pixel(s) also claimed by line 4 (same image); a pixel may belong to one nucleus only"),
        (8, "c", "1 pixel(s) also claimed by line 7 (same image); a pixel may belong to one nucleus only"),
    ]
    # Same pixel numbers in different images are fine (b and c above), and the check
    # runs without shapes too.
    assert [p.line for p in check_submission(write(tmp_path, csv_text("x,1 5", "x,5 5")))] == [3]


def test_empty_rows(tmp_path):
    found = problems_of(tmp_path, "a,", "a,1 1", "a,2 1", "b,", "b,", "b,", "c,1 1")
    assert found == [
        (2, "a", "empty row, but this image also has 2 row(s) with pixels (line 3, 4)"),
        (6, "b", "duplicate empty row for this image (first at line 5)"),
        (7, "b", "duplicate empty row for this image (first at line 5)"),
    ]
    # Whitespace-only counts as empty.
    assert problems_of(tmp_path, "a,  ", "b,", "c,1 1") == []


def test_every_problem_is_listed_and_lines_are_sorted(tmp_path):
    rows = [f"a,{i} 1" for i in range(1, 21)] + ["b,5 1 5 1"] * 3 + ["q,1 1"] * 4
    found = check_submission(write(tmp_path, csv_text(*rows)), SHAPES)
    lines = [p.line for p in found]
    assert lines[:-1] == sorted(lines[:-1]) and lines[-1] is None  # "c" has no row
    # 3 unsorted b rows, 2 of them also overlapping the first b row, 4 unknown q rows.
    assert sum("not sorted" in p.message for p in found) == 3
    assert sum(p.message == "unknown ImageId" for p in found) == 4
    assert str(found[0]).startswith("line 22: b: ")
    assert str(found[-1]).startswith("no row: c: ")


def test_without_shapes_only_per_row_checks(tmp_path):
    path = write(tmp_path, csv_text("a,1 99999", "whatever,2 1 1 1"))
    found = check_submission(path)
    assert [(p.line, p.message.split(":")[0]) for p in found] == [(3, "pairs not sorted")]
    # Ids only (as with --sample): unknown/missing ids but no in-image check.
    found = check_submission(path, image_ids=["a", "b"])
    assert [(p.line, p.image_id) for p in found] == [(3, "whatever"), (3, "whatever"), (None, "b")]


def test_plain_dataframe_gets_written_line_numbers():
    frame = pd.DataFrame({"ImageId": ["a", "b", "c"], "EncodedPixels": ["1 1", "5 1 2 1", None]})
    assert check_submission(frame, SHAPES) == [
        Problem(3, "b", "pairs not sorted: pair 2 starts at 2, not after the previous start 5")
    ]


def test_check_runs():
    assert check_runs(np.array([[1, 2], [4, 1]]), (2, 3)) == []
    assert check_runs(np.zeros((0, 2), np.int64), (2, 3)) == []
    assert check_runs([[5, 3]], (2, 3)) == ["pair 1 (5 3) ends at pixel 7, past the image's last pixel 6"]
    assert check_runs([[5, 3]]) == []
    assert check_runs([[4, 1], [1, 2], [0, 1]], (2, 3)) == [
        "pair 3 (0 1): start and length must be at least 1",
        "pairs not sorted: pair 2 starts at 1, not after the previous start 4 (and 1 more pair(s) like it)",
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(0, 10**12), max_size=9).map(lambda v: v),
        max_size=12,
    ),
    st.integers(0, 2**32 - 1),
)
def test_vectorised_parser_agrees_with_rle_to_pairs(rows, seed):
    rng = np.random.default_rng(seed)
    texts = []
    for values in rows:  # random spacing: leading, trailing, repeated spaces
        seps = [" " * int(n) for n in rng.integers(1, 3, size=len(values) + 1)]
        seps[0] = seps[0] if rng.random() < 0.3 else ""
        texts.append(seps[0] + " ".join(str(v) + s for v, s in zip(values, seps[1:])))
    parsed = _parse_rles(texts)
    for row, text in enumerate(texts):
        try:
            expected = rle_to_pairs(text)
        except ValueError:
            assert "odd number" in parsed.errors[row]
            continue
        assert row not in parsed.errors
        mine = np.stack([parsed.starts, parsed.lengths], axis=1)[parsed.pair_row == row]
        np.testing.assert_array_equal(mine, expected)


# ----------------------------------------------------------------- submission_runs


def test_submission_runs_groups_rows_per_image(tmp_path):
    runs = submission_runs(write(tmp_path, csv_text(*VALID)), SHAPES)
    assert list(runs) == ["a", "b", "c"]
    assert [r.tolist() for r in runs["a"]] == [[[1, 2], [5, 3]], [[9, 2]]]
    assert runs["b"] == []
    with pytest.raises(SubmissionError, match="(?s)1 problem.*line 3: a: pairs not sorted"):
        submission_runs(write(tmp_path, csv_text("a,1 1", "a,5 1 1 1", "b,", "c,")), SHAPES)


# ----------------------------------------------------------------- one reader for submissions and labels


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "ImageId,EncodedPixels\na,caf\u00e9\n".encode("cp1252"),
        b"ImageId,EncodedPixels\na,1 1\nb,1 1,extra\n",
        b'ImageId,EncodedPixels\na,"1 1\n',
        b"\x1f\x8b\x08\x00garbage",
        b"PK\x03\x04" + b"\x00" * 40,
    ],
)
def test_submissions_and_labels_are_read_alike(tmp_path, content):
    """A file that is not a CSV of RLE gets the same message from both readers (a
    submission read as a solution is, with extra columns allowed); only the error class
    differs (exit code 2 either way)."""
    path = write(tmp_path, content)
    with pytest.raises(SubmissionError) as as_submission:
        read_submission(path, extra_columns=True)
    with pytest.raises(DataError) as as_labels:
        read_rle_csv(path)
    assert str(as_submission.value) == str(as_labels.value)
    assert str(path) in str(as_labels.value)


# ----------------------------------------------------------------- score_submission


@pytest.fixture(scope="module")
def synthetic_stage(tmp_path_factory):
    """A small Kaggle-layout stage with masks (folder and zip) and its solution CSV."""
    root = tmp_path_factory.mktemp("stage")
    folder = write_synthetic_dataset(root / "stage", n=6, seed=3)
    zipped = write_synthetic_dataset(root / "zipped" / "stage.zip", n=6, seed=3)
    return folder, zipped


def _submission_from_solution(solution_csv, out, rle=None):
    """The solution's ImageId,EncodedPixels (or one fixed RLE per image) as a submission."""
    frame = pd.read_csv(solution_csv, dtype=str, keep_default_na=False)
    if rle is not None:
        frame = frame.drop_duplicates("ImageId").assign(EncodedPixels=rle)
    frame[["ImageId", "EncodedPixels"]].to_csv(out, index=False, lineterminator="\n")
    return out


def _imperfect(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """A plausible prediction: the truth shifted by a pixel, about a sixth of it dropped."""
    pred = np.roll(truth, (1, 1), axis=(0, 1))
    ids = np.unique(pred)[1:]
    pred[np.isin(pred, rng.choice(ids, size=ids.size // 6, replace=False))] = 0
    return pred


def test_solution_scored_against_itself_is_one(synthetic_stage, tmp_path):
    folder, zipped = synthetic_stage
    submission = _submission_from_solution(folder.solution_csv, tmp_path / "self.csv")
    for solution in (folder.solution_csv, folder.path, zipped.path):
        result = score_submission(submission, solution)
        assert result.map == 1.0 and result.n_images == 6
        assert sorted(result.per_image) == sorted(folder.image_ids)


def test_sample_submission_scores_zero(synthetic_stage, tmp_path):
    folder, _ = synthetic_stage
    sample = _submission_from_solution(folder.solution_csv, tmp_path / "sample.csv", rle="1 1")
    result = score_submission(sample, folder.solution_csv)
    assert result.map == 0.0 and set(result.per_image.values()) == {0.0}


def test_score_submission_equals_label_map_scores(synthetic_stage, tmp_path):
    folder, _ = synthetic_stage
    stage = open_stage(folder.path)
    rng = np.random.default_rng(0)
    truths = {i: stage.read_label_map(i) for i in stage.image_ids}
    preds = {i: _imperfect(rng, t) for i, t in truths.items()}
    shapes = {i: t.shape for i, t in truths.items()}
    submission = write_submission_from_label_maps(tmp_path / "pred.csv", preds.items(), shapes)
    result = score_submission(submission, folder.solution_csv)
    expected = score_label_maps((i, truths[i], preds[i]) for i in folder.image_ids)
    assert 0 < result.map < 1
    assert result.map == pytest.approx(expected.map, abs=1e-12)
    assert dict(result.per_image) == pytest.approx(dict(expected.per_image), abs=1e-12)


def test_ignored_images_are_not_scored(synthetic_stage, tmp_path):
    folder, _ = synthetic_stage
    solution = pd.read_csv(folder.solution_csv, dtype=str, keep_default_na=False)
    ignored = folder.image_ids[1]
    solution.loc[solution.ImageId == ignored, "Usage"] = "Ignored"
    solution.to_csv(tmp_path / "solution.csv", index=False)
    # Perfect everywhere but the ignored image, which gets a wrong prediction.
    submission = _submission_from_solution(folder.solution_csv, tmp_path / "sub.csv")
    frame = pd.read_csv(submission, dtype=str, keep_default_na=False)
    frame = pd.concat([frame[frame.ImageId != ignored], pd.DataFrame({"ImageId": [ignored], "EncodedPixels": ["1 1"]})])
    frame.to_csv(submission, index=False)
    result = score_submission(submission, tmp_path / "solution.csv")
    assert result.map == 1.0 and result.n_images == 5 and result.ignored_ids == (ignored,)
    assert ignored not in result.per_image
    # The ignored image must still be in the submission, as on Kaggle.
    frame[frame.ImageId != ignored].to_csv(submission, index=False)
    with pytest.raises(SubmissionError, match=f"no row: {ignored}"):
        score_submission(submission, tmp_path / "solution.csv")


def test_score_submission_errors(synthetic_stage, tmp_path):
    folder, _ = synthetic_stage
    good = _submission_from_solution(folder.solution_csv, tmp_path / "good.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text(good.read_text().replace(f"\n{folder.image_ids[0]},", f"\n{folder.image_ids[0]},5 1 1 1 ", 1))
    with pytest.raises(SubmissionError, match="pairs not sorted"):
        score_submission(bad, folder.solution_csv)
    no_shapes = tmp_path / "no_shapes.csv"
    pd.read_csv(folder.solution_csv).drop(columns=["Height", "Width"]).to_csv(no_shapes, index=False)
    with pytest.raises(DataError, match="Height and Width"):
        score_submission(good, no_shapes)
    with pytest.raises(DataError):
        score_submission(good, tmp_path / "missing")


# ----------------------------------------------------------------- writing


def test_write_submission_round_trip(tmp_path):
    out = write_submission(tmp_path / "out" / "s.csv", [r.split(",") for r in VALID], SHAPES)
    assert out == tmp_path / "out" / "s.csv"
    assert out.read_text() == csv_text(*VALID)
    assert check_submission(out, SHAPES) == []
    assert [p.name for p in out.parent.iterdir()] == ["s.csv"]  # no temporary file left


def test_write_submission_never_writes_an_invalid_file(tmp_path):
    target = tmp_path / "s.csv"
    target.write_text("previous content")
    rows = [("a", "1 2"), ("a", "2 2"), ("b", "3 1 1 1"), ("zzz", "1 1")]
    with pytest.raises(SubmissionError) as info:
        write_submission(target, rows, SHAPES)
    message = str(info.value)
    assert "nothing was written" in message
    for expected in ("line 3: a: 1 pixel(s) also claimed by line 2", "line 4: b: pairs not sorted",
                     "line 5: zzz: unknown ImageId", "no row: c: no row for this image"):
        assert expected in message
    assert target.read_text() == "previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]
    with pytest.raises(SubmissionError, match="comma"):
        write_submission(tmp_path / "t.csv", [("a,b", "1 1")], None)
    assert not (tmp_path / "t.csv").exists()


def _label_maps(seed: int, n: int):
    rng = np.random.default_rng(seed)
    for index in range(n):
        shape = (int(rng.integers(5, 40)), int(rng.integers(5, 40)))
        label_map = np.zeros(shape, np.int32)
        for label in rng.choice(1000, size=int(rng.integers(0, 6)), replace=False):
            r, c = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
            label_map[r : r + 3, c : c + 3] = label + 1
        yield f"img{index}", label_map


def test_write_from_label_maps_round_trip(tmp_path):
    out = write_submission_from_label_maps(tmp_path / "s.csv", _label_maps(0, 12))
    shapes = {image_id: lm.shape for image_id, lm in _label_maps(0, 12)}
    runs = submission_runs(out, shapes)
    for image_id, label_map in _label_maps(0, 12):
        rebuilt, overlap = runs_to_label_map(runs[image_id], label_map.shape)
        assert overlap == 0
        assert image_score(label_map, rebuilt).score == 1.0
    # Expected shapes: every id needed, every shape checked.
    with pytest.raises(SubmissionError, match="no row: extra"):
        write_submission_from_label_maps(tmp_path / "t.csv", _label_maps(0, 3), {**shapes, "extra": (4, 4)})
    bad_shapes = dict(shapes, img1=(99, 99))
    with pytest.raises(SubmissionError, match=r"img1: label map has shape \(\d+, \d+\), the image is \(99, 99\)"):
        write_submission_from_label_maps(tmp_path / "t.csv", _label_maps(0, 12), bad_shapes)
    assert not (tmp_path / "t.csv").exists()


# ----------------------------------------------------------------- speed


def test_thirty_thousand_rows_validate_in_about_a_second(tmp_path):
    rng = np.random.default_rng(0)
    n_images, rows_per_image, shape = 1000, 30, (520, 696)
    lines = [HEADER]
    shapes = {}
    for i in range(n_images):
        image_id = f"{i:064x}"
        shapes[image_id] = shape
        # 30 non-overlapping nuclei of ~15 columns x 12 rows each, like real ones.
        for k in range(rows_per_image):
            col0, row0 = 20 * k + 5, int(rng.integers(0, shape[0] - 20))
            starts = (np.arange(col0, col0 + 15) * shape[0] + row0 + 1).tolist()
            lines.append(image_id + "," + " ".join(f"{s} 12" for s in starts))
    path = write(tmp_path, "\n".join(lines) + "\n")
    problems = check_submission(path, shapes)  # its speed: benchmarks/validate_speed.py
    assert problems == []
