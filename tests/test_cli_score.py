"""`dsb score` and `dsb validate` through the CLI: exit codes, stdout/stderr, real data."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    # Never a traceback: every failure is a clean exit with a code.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A 5-image synthetic stage (folder with masks), its zip twin and solution CSV."""
    from dsb.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("cli_stage")
    folder = write_synthetic_dataset(root / "stage", n=5, seed=11)
    zipped = write_synthetic_dataset(root / "zipped" / "stage.zip", n=5, seed=11)
    return folder, zipped


def submission_from(solution_csv, out, rle=None):
    frame = pd.read_csv(solution_csv, dtype=str, keep_default_na=False)
    if rle is not None:
        frame = frame.drop_duplicates("ImageId").assign(EncodedPixels=rle)
    frame[["ImageId", "EncodedPixels"]].to_csv(out, index=False, lineterminator="\n")
    return out


# ----------------------------------------------------------------- score


def test_score_json_is_alone_on_stdout(stage, tmp_path):
    folder, zipped = stage
    submission = submission_from(folder.solution_csv, tmp_path / "self.csv")
    for solution in (folder.solution_csv, folder.path, zipped.path):
        result = invoke("score", submission, "--solution", solution, "--json")
        assert result.exit_code == 0, result.stderr
        payload = json.loads(result.stdout)  # exactly one JSON document, nothing else
        assert payload["map"] == 1.0 and isinstance(payload["map"], float)
        assert payload["n_images"] == 5
        assert set(payload["per_image"]) == set(folder.image_ids)
        assert all(v == 1.0 for v in payload["per_image"].values())
        assert len(payload["per_threshold"]) == 10
        assert "mAP 1.0000" in result.stderr


def test_solution_file_scored_against_itself_is_one(stage):
    """The solution CSV itself (with Height,Width,Usage columns) is accepted as the
    submission: its extra columns are ignored."""
    folder, _ = stage
    result = invoke("score", folder.solution_csv, "--solution", folder.solution_csv, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["map"] == 1.0
    partial = folder.solution_csv.parent / "partial_solution.csv"
    lines = folder.solution_csv.read_text().splitlines()
    dropped = lines[1].split(",")[0]
    partial.write_text("\n".join(l for l in lines if not l.startswith(dropped)) + "\n")
    result = invoke("score", partial, "--solution", folder.solution_csv)
    assert result.exit_code == 1 and dropped in result.stderr


def test_score_tables_on_stderr(stage, tmp_path):
    folder, _ = stage
    sample = submission_from(folder.solution_csv, tmp_path / "sample.csv", rle="1 1")
    result = invoke("score", sample, "--solution", folder.solution_csv, "--worst", "3")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "mAP 0.0000" in result.stderr
    assert "per threshold" in result.stderr and "worst 3 images" in result.stderr
    assert "0.95" in result.stderr
    result = invoke("score", sample, "--solution", folder.solution_csv, "--json")
    assert json.loads(result.stdout)["map"] == 0.0


def test_score_errors_exit_1_or_2(stage, tmp_path):
    folder, _ = stage
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId,EncodedPixels\nnot-an-image,1 1\n")
    result = invoke("score", bad, "--solution", folder.solution_csv, "--json")
    # An invalid submission: exit 1 with every problem listed, as `dsb validate` does.
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "unknown ImageId" in result.stderr and "INVALID" in result.stderr
    assert all(image_id in result.stderr for image_id in folder.image_ids)  # each missing image listed
    result = invoke("score", tmp_path / "missing.csv", "--solution", folder.solution_csv)
    assert result.exit_code == 2 and "no such file" in result.stderr
    result = invoke("score", bad, "--solution", tmp_path / "nowhere")
    assert result.exit_code == 2 and "nowhere" in result.stderr


# ----------------------------------------------------------------- validate


def test_validate_ok_with_images_or_sample(stage, tmp_path):
    folder, zipped = stage
    submission = submission_from(folder.solution_csv, tmp_path / "self.csv")
    sample = submission_from(folder.solution_csv, tmp_path / "sample.csv", rle="1 1")
    for option, value in (("--images", folder.path), ("--images", zipped.path), ("--sample", sample)):
        result = invoke("validate", submission, option, value)
        assert result.exit_code == 0, result.stderr
        assert result.stderr.startswith("OK ") and "5 images" in result.stderr
        assert result.stdout == ""


def test_validate_lists_every_problem_with_line_and_id(stage, tmp_path):
    folder, _ = stage
    ids = folder.image_ids
    lines = [
        "ImageId,EncodedPixels",
        f"{ids[0]},1 5",
        f"{ids[0]},3 2",  # line 3: overlaps line 2
        f"{ids[1]},10 2 5 1",  # line 4: unsorted
        f"{ids[2]},1 x",  # line 5: not an integer
        "stranger,1 1",  # line 6: unknown id
        f"{ids[3]},999999999 1",  # line 7: past the last pixel
        # ids[4] missing
    ]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    result = invoke("validate", path, "--images", folder.path)
    assert result.exit_code == 1
    err = result.stderr
    for expected in (
        f"line 3: {ids[0]}: 2 pixel(s) also claimed by line 2",
        f"line 4: {ids[1]}: pairs not sorted",
        f"line 5: {ids[2]}: 'x' is not a non-negative integer",
        "line 6: stranger: unknown ImageId",
        f"line 7: {ids[3]}: pair 1 (999999999 1) ends at pixel 999999999",
        f"no row: {ids[4]}: no row for this image",
        "INVALID",
        "6 problem(s) on 5 row(s)",
    ):
        assert expected in err
    # --json: the same problems as data.
    result = invoke("validate", path, "--images", folder.path, "--json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["valid"] is False and payload["n_rows"] == 6
    assert [(p["line"], p["image_id"]) for p in payload["problems"]] == [
        (3, ids[0]), (4, ids[1]), (5, ids[2]), (6, "stranger"), (7, ids[3]), (None, ids[4])
    ]
    # With only ids (--sample), the in-image check is skipped.
    sample = submission_from(folder.solution_csv, tmp_path / "sample.csv", rle="1 1")
    result = invoke("validate", path, "--sample", sample)
    assert result.exit_code == 1 and "line 7" not in result.stderr and "line 6" in result.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x01\x02garbage\xff", "binary"),
        ("ImageId,EncodedPixels\na,caf\u00e9\n".encode("cp1252"), "not UTF-8"),
        (b"id,rle\na,1 1\n", "line 1 must be exactly 'ImageId,EncodedPixels'"),
        (b"ImageId,EncodedPixels\na,1 1,3\n", "line 2: 3 field"),
        (b"", "empty"),
    ],
)
def test_validate_malformed_exits_2(stage, tmp_path, content, message):
    folder, _ = stage
    path = tmp_path / "junk.csv"
    path.write_bytes(content)
    result = invoke("validate", path, "--images", folder.path)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_validate_option_errors_exit_2(stage, tmp_path):
    folder, _ = stage
    submission = submission_from(folder.solution_csv, tmp_path / "self.csv")
    assert invoke("validate", tmp_path / "missing.csv", "--images", folder.path).exit_code == 2
    for args in ((), ("--images", folder.path, "--sample", submission)):
        result = invoke("validate", submission, *args)
        assert result.exit_code == 2 and "exactly one of --images" in result.stderr
    result = invoke("validate", submission, "--images", tmp_path / "nowhere")
    assert result.exit_code == 2 and "nowhere" in result.stderr


# ----------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_sample_submission_validates(real_data, tmp_path):
    sample = real_data / "stage1_sample_submission.csv"
    result = invoke("validate", sample, "--images", real_data / "stage1_test.zip")
    assert result.exit_code == 0, result.stderr
    assert "65 rows, 65 images" in result.stderr

    lines = sample.read_text().splitlines()
    image_id = lines[7].split(",")[0]
    lines[7] = f"{image_id},50 3 10 2"  # line 8: pairs out of order
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join(lines) + "\n")
    result = invoke("validate", broken, "--images", real_data / "stage1_test.zip")
    assert result.exit_code == 1
    assert f"line 8: {image_id}: pairs not sorted" in result.stderr
    assert "1 problem(s) on 1 row(s)" in result.stderr


@pytest.mark.realdata
def test_real_train_labels_scored_against_themselves(real_data, tmp_path):
    from dsb.data.kaggle import open_stage

    labels = pd.read_csv(real_data / "stage1_train_labels.csv", dtype=str, keep_default_na=False)
    chosen = list(dict.fromkeys(labels.ImageId))[:: 670 // 5][:5]
    rows = labels[labels.ImageId.isin(chosen)]
    stage = open_stage(real_data / "stage1_train.zip", labels=None)
    shapes = {i: stage.image_shape(i) for i in chosen}
    solution = rows.assign(
        Height=[shapes[i][0] for i in rows.ImageId], Width=[shapes[i][1] for i in rows.ImageId], Usage="Public"
    )
    solution.to_csv(tmp_path / "solution.csv", index=False)
    rows.to_csv(tmp_path / "submission.csv", index=False)
    result = invoke("score", tmp_path / "submission.csv", "--solution", tmp_path / "solution.csv", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["map"] == 1.0 and payload["n_images"] == 5
    assert payload["n_true"] == len(rows)
    # And Kaggle's sample-style "1 1" submission scores 0 against the same truth.
    rows.drop_duplicates("ImageId").assign(EncodedPixels="1 1").to_csv(tmp_path / "ones.csv", index=False)
    result = invoke("score", tmp_path / "ones.csv", "--solution", tmp_path / "solution.csv", "--json")
    assert json.loads(result.stdout)["map"] == 0.0


@pytest.mark.realdata
def test_real_fixed_labels_overlaps_are_found(real_data):
    # The community-fixed labels drop 6 images and have 1-2 px overlaps on 6 others.
    result = invoke("validate", real_data / "stage1_train_labels_fixed.csv", "--images", real_data / "stage1_train.zip", "--json")
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert sum(p["line"] is None for p in problems) == 6
    assert sum("also claimed by line" in p["message"] for p in problems) == 6
    assert len(problems) == 12
