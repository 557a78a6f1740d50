"""`dsb data synth` and `dsb data info` through Typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """One small synthetic stage written by the CLI, with its --json report."""
    out = tmp_path_factory.mktemp("cli") / "stage"
    result = runner.invoke(app, ["data", "synth", str(out), "--n", "3", "--seed", "1", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_synth_writes_a_stage(synth):
    assert synth["n_images"] == 3 and synth["kinds"] == {"fluorescence": 2, "stained": 1}
    assert synth["solution_csv"].endswith("stage_solution.csv")
    n_rows = len(open(synth["solution_csv"]).read().splitlines()) - 1
    assert n_rows == synth["n_nuclei"]


def test_synth_refuses_to_overwrite(synth):
    result = runner.invoke(app, ["data", "synth", synth["path"], "--n", "3"])
    assert result.exit_code == 2
    assert "error:" in result.stderr and "already exists" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.output


def test_synth_zip(tmp_path):
    result = runner.invoke(app, ["data", "synth", str(tmp_path / "s"), "--n", "1", "--zip", "--no-masks"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.zip").is_file() and (tmp_path / "s_solution.csv").is_file()
    assert "wrote" in result.stderr and result.stdout == ""


def test_info_json(synth):
    result = runner.invoke(app, ["data", "info", synth["path"], "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)  # stdout holds the JSON object and nothing else
    assert info["n_images"] == info["n_labelled"] == 3 and info["labels"] == "masks"
    assert info["nuclei_per_image"]["total"] == synth["n_nuclei"]
    assert info["image_types"] == synth["kinds"]
    assert info["modes"] == {"RGBA": 2, "RGB": 1}
    assert sum(size["count"] for size in info["sizes"]) == 3
    assert "image sizes" in result.stderr and "nuclei per image" in result.stderr


def test_info_with_labels_csv_and_without_types(synth):
    result = runner.invoke(
        app, ["data", "info", synth["path"], "--labels", synth["solution_csv"], "--no-types", "--json"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["image_types"] is None and info["labels"] == synth["solution_csv"]
    assert info["nuclei_per_image"]["total"] == synth["n_nuclei"]
    assert sum(info["usage"].values()) == 3


def test_info_without_json_prints_tables_only(synth):
    result = runner.invoke(app, ["data", "info", synth["path"], "--labels", "none"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "0 labelled" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "info", "/nonexistent/stage.zip"], "no such folder or zip"),
        (["data", "info", "{path}", "--labels", "/nonexistent/labels.csv"], "no such file"),
    ],
)
def test_info_errors(synth, args, message):
    args = [a.format(path=synth["path"]) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
