"""Bad and unusual inputs through the CLI (issue 11, defects 1-9): a clear message naming
the file, row, image or key, exit 0 / 1 / 2, never a traceback, nothing half-written.

No test here trains a model: every bad input is refused before training starts.
"""

from __future__ import annotations

import gzip
import os
import stat
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from dsb.config import load_config
from dsb.data.kaggle import open_stage
from dsb.errors import ConfigError, DataError
from dsb.submission import SubmissionWarning

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def invoke(*args) -> "CliRunner.invoke":
    result = runner.invoke(app, [str(a) for a in args])
    # Never a traceback: every failure is a clean exit with a code.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1, 2), result.output
    return result


def submission_text(solution_csv: Path, newline: str = "\n", quote: bool = False) -> str:
    frame = pd.read_csv(solution_csv, dtype=str, keep_default_na=False)
    rows = [("ImageId", "EncodedPixels"), *zip(frame["ImageId"], frame["EncodedPixels"])]
    q = '"' if quote else ""
    return newline.join(f"{q}{a}{q},{q}{b}{q}" for a, b in rows) + newline


# --------------------------------------------------------------- defects 1, 2, 7, 8: configs


def demo_config(tmp_path: Path, **changes) -> Path:
    """configs/demo.yaml with ``{"section.key": value}`` changes, written to tmp_path."""
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    for key, value in changes.items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "key, value, range_text",
    [
        ("train.lr", -0.1, ">= 0"),
        ("train.batch_size", 0, ">= 1"),
        ("train.steps_per_epoch", -3, ">= 0"),
        ("train.epochs", 0, ">= 1"),  # defect 2: used to exit 0 naming a best.pt that does not exist
        ("train.epochs", -2, ">= 1"),
        ("train.val_every", 0, ">= 1"),
        ("train.ema_decay", 1.0, "in [0, 1)"),
        ("augment.crop_px", 0, "in [32, 4096]"),
        ("augment.p_elastic", 1.5, "in [0, 1]"),
        ("augment.p_gray", -0.1, "in [0, 1]"),
        ("augment.p_channel_shuffle", 2, "in [0, 1]"),
        ("augment.scale_min", 0, "> 0"),
        ("augment.normalize_area_px", -1, ">= 0"),
        ("postprocess.seed_threshold", 1.2, "in [0, 1]"),
        ("postprocess.expand_px", -1, ">= 0"),
        ("folds.group_threshold", 0, "> 0"),
        ("folds.n_folds", 1, ">= 2"),
        ("infer.tile_px", 8, "in [32, 16384]"),
        ("targets.border_px", 0, ">= 1"),
    ],
)
def test_out_of_range_values_are_refused_before_anything_is_written(tmp_path, key, value, range_text):
    config = demo_config(tmp_path, **{key: value})
    run_dir = tmp_path / "run"
    result = invoke("train", "--config", config, "--run-dir", run_dir)
    assert result.exit_code == 2
    assert key in result.stderr and str(value) in result.stderr and range_text in result.stderr, result.stderr
    assert not run_dir.exists()


def test_scale_min_above_scale_max_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"augment.scale_min: 2 is larger than augment.scale_max 1"):
        load_config(demo_config(tmp_path, **{"augment.scale_min": 2.0, "augment.scale_max": 1.0}))


def test_too_many_folds_leaves_no_run_folder(tmp_path):
    """3 synthetic images cannot make 5 folds: refused before run.json or config.yaml is
    written, so the corrected config can use the same --run-dir."""
    for method in ("stratified", "grouped"):
        config = demo_config(tmp_path, **{"data.synthetic_n": 3, "folds.n_folds": 5, "folds.method": method})
        run_dir = tmp_path / f"run_{method}"
        result = invoke("train", "--config", config, "--run-dir", run_dir)
        assert result.exit_code == 2 and "5 folds" in result.stderr, result.stderr
        assert not run_dir.exists()


def test_bad_init_from_leaves_no_run_folder(tmp_path):
    config = demo_config(tmp_path, **{"data.synthetic_n": 4, "folds.n_folds": 2, "folds.method": "stratified",
                                      "train.init_from": str(tmp_path / "no_such_run")})
    run_dir = tmp_path / "run"
    result = invoke("train", "--config", config, "--run-dir", run_dir)
    assert result.exit_code == 2 and "train.init_from" in result.stderr and "no_such_run" in result.stderr
    assert not run_dir.exists()


def test_init_from_weights_of_the_same_data_refuses_a_fold_before_reading_it(tmp_path, monkeypatch):
    """A fold's model may not start from weights trained on its own held-out images; the
    refusal comes before any image is decoded, and leaves no run folder."""
    from dsb.config import load_config
    from dsb.models import build_model
    from dsb.models.checkpoint import save_checkpoint

    config = demo_config(tmp_path, **{"data.synthetic_n": 4, "folds.n_folds": 2, "folds.method": "stratified"})
    cfg = load_config(config)
    weights = save_checkpoint(tmp_path / "theirs.pt", build_model(cfg, load_weights=False), cfg)
    config = demo_config(tmp_path, **{"data.synthetic_n": 4, "folds.n_folds": 2, "folds.method": "stratified",
                                      "train.init_from": str(weights)})

    def no_reading(*_a, **_k):
        raise AssertionError("the images were read before the refusal")

    monkeypatch.setattr("dsb.data.samples.load_samples", no_reading)
    run_dir = tmp_path / "run"
    result = invoke("train", "--config", config, "--run-dir", run_dir, "--fold", "1")
    assert result.exit_code == 2 and "theirs.pt was trained on the same data (synthetic)" in result.stderr
    assert "held-out images" in result.stderr and not run_dir.exists()
    many = tmp_path / "set"
    many.mkdir()
    for name in ("fold0.pt", "fold1.pt"):
        (many / name).write_bytes(weights.read_bytes())
    config = demo_config(tmp_path, **{"data.synthetic_n": 4, "train.init_from": str(many)})
    result = invoke("train", "--config", config, "--run-dir", run_dir, "--full")
    assert result.exit_code == 2 and "holds 2 models (fold0.pt, fold1.pt); give one .pt file" in result.stderr


def test_numbers_in_any_notation(tmp_path):
    """Defect 7: YAML 1.1 reads 1e-3 as a string; it is a number here, in files and --set."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-5\n  epochs: 1e1\naugment:\n  p_gray: .5\n")
    cfg = load_config(path)
    assert cfg.train.lr == 1e-3 and cfg.train.weight_decay == 5e-5 and cfg.augment.p_gray == 0.5
    assert cfg.train.epochs == 10 and isinstance(cfg.train.epochs, int)
    cfg = load_config(path, ["train.lr=2e-4", "postprocess.expand_px=1E0"])
    assert cfg.train.lr == 2e-4 and cfg.postprocess.expand_px == 1.0
    for bad in ("train.epochs=2.5", "train.epochs=1e-1", "train.lr=1e-3x", "train.lr=e3"):
        with pytest.raises(ConfigError, match=r"train\.(epochs|lr): expected"):
            load_config(path, [bad])


@pytest.mark.parametrize(
    "content, overrides, message",
    [
        (b"train:\n  lr: 0.001 # caf\xe9\n", [], r"not UTF-8 text \(byte 0xe9 on line 2\)"),
        (b"- train\n- model\n", [], "top level must be a mapping.*got a list"),
        (b"just text\n", [], "top level must be a mapping"),
        (b"train:\n  lr: 0.001\n", ["train.lr.x=1"], r"train\.lr is a value"),
        (b"name: x\n", ["train.lr=[1"], r"override 'train.lr=\[1': the value '\[1' is not valid YAML"),
        (b"name: x\n", ["train..lr=1"], "not a dotted key"),
        (b"name: x\n", ["train.lr"], "expected section.key=value"),
        (b"train: [unclosed\n", [], "not valid YAML"),
        (b"train: !!python/object/apply:os.system [ls]\n", [], "not valid YAML"),
    ],
)
def test_parse_errors_are_config_errors(tmp_path, content, overrides, message):
    """Defect 8: each used to raise a traceback."""
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path, overrides)
    result = invoke("train", "--config", path, "--run-dir", tmp_path / "run", *[a for o in overrides for a in ("--set", o)])
    assert result.exit_code == 2 and "error:" in result.stderr and "c.yaml" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_utf8_bom_in_a_config_is_fine(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbftrain:\n  lr: 0.01\n")
    assert load_config(path).train.lr == 0.01


# --------------------------------------------------------------- defect 3: score validates


def test_score_validates_a_file_with_height_width_like_validate(synthetic_stage, tmp_path):
    solution = pd.read_csv(synthetic_stage.solution_csv, dtype=str, keep_default_na=False)
    first = solution.iloc[0]
    pairs = first["EncodedPixels"].split()
    if len(pairs) < 4:
        pytest.skip("first nucleus is a single run")
    unsorted = " ".join(pairs[2:4] + pairs[0:2] + pairs[4:])
    bad = pd.concat([
        solution,
        solution.iloc[[0]],  # a duplicate row (its pixels claimed twice)
        solution.iloc[[0]].assign(ImageId="not-an-image"),  # an unknown id
        solution.iloc[[0]].assign(EncodedPixels=unsorted),  # unsorted pairs
    ])
    with_shapes = tmp_path / "with_shapes.csv"
    bad.to_csv(with_shapes, index=False, lineterminator="\n")
    plain = tmp_path / "plain.csv"
    bad[["ImageId", "EncodedPixels"]].to_csv(plain, index=False, lineterminator="\n")

    validated = invoke("validate", plain, "--images", synthetic_stage.path, "--json")
    assert validated.exit_code == 1
    for submission in (with_shapes, plain):
        result = invoke("score", submission, "--solution", synthetic_stage.solution_csv, "--json")
        assert result.exit_code == 1, result.stderr  # used to score 1.0 with exit 0
        assert result.stdout == ""
        for text in ("also claimed by line", "unknown ImageId", "pairs not sorted", "not-an-image"):
            assert text in result.stderr
        assert result.stderr.count("\nline ") + result.stderr.startswith("line ") == validated.stdout.count('"line"')
    # The solution itself, Height/Width/Usage and all, still scores 1.0.
    result = invoke("score", synthetic_stage.solution_csv, "--solution", synthetic_stage.solution_csv, "--json")
    assert result.exit_code == 0 and '"map": 1.0' in result.stdout


# --------------------------------------------------------------- defect 4: damaged zips


def _deflated_zip(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return out


def _corrupt_member(zip_path: Path, member: str, out: Path) -> Path:
    """A copy of ``zip_path`` with the first compressed bytes of ``member`` scrambled."""
    data = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(member)
    start = info.header_offset
    name_len = int.from_bytes(data[start + 26:start + 28], "little")
    extra_len = int.from_bytes(data[start + 28:start + 30], "little")
    begin = start + 30 + name_len + extra_len
    for i in range(begin, begin + 12):
        data[i] = 0xFF
    out.write_bytes(bytes(data))
    return out


@pytest.fixture(scope="module")
def damaged(synthetic_stage, tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    good = _deflated_zip(synthetic_stage.path, root / "good.zip")
    last = sorted(synthetic_stage.image_ids)[-1]
    member = f"{last}/images/{last}.png"
    corrupt = _corrupt_member(good, member, root / "corrupt.zip")
    truncated = root / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return corrupt, truncated, member


def test_corrupt_zip_data_is_a_clear_error(damaged, synthetic_stage, tmp_path):
    corrupt, truncated, member = damaged
    submission = tmp_path / "sub.csv"
    submission.write_text(submission_text(synthetic_stage.solution_csv))
    for args in (("data", "info", corrupt), ("validate", submission, "--images", corrupt),
                 ("predict", "--checkpoint", tmp_path / "no_model.pt", "--input", corrupt, "--out", tmp_path / "o.csv")):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert f"corrupt.zip:{member}" in result.stderr and "damaged member" in result.stderr, result.stderr
    for args in (("data", "info", truncated), ("validate", submission, "--images", truncated),
                 ("predict", "--checkpoint", tmp_path / "no_model.pt", "--input", truncated, "--out", tmp_path / "o.csv")):
        result = invoke(*args)
        assert result.exit_code == 2 and "truncated.zip: a damaged zip file" in result.stderr, result.stderr
    assert not (tmp_path / "o.csv").exists()


def test_stage_reads_of_a_corrupt_member_raise_data_error(damaged):
    corrupt, _, member = damaged
    stage = open_stage(corrupt)
    image_id = member.split("/")[0]
    for read in (stage.read_image, stage.image_shape, stage.read_image_uint8):
        with pytest.raises(DataError, match="damaged member"):
            read(image_id)
    with pytest.raises(DataError, match="damaged member"):
        stage.check_images()


# --------------------------------------------------------------- defect 5: bad --out


def test_bad_out_fails_before_any_work(synthetic_stage, tmp_path):
    """An --out that is a folder, or under a file, is refused first: before the checkpoint
    (here missing on purpose) is even looked at."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    missing_model = tmp_path / "no_model.pt"
    for out, message in ((tmp_path, "is an existing folder"), (a_file / "sub.csv", "is a file, not a folder"),
                         (a_file / "deeper" / "sub.csv", "is a file, not a folder")):
        result = invoke("predict", "--checkpoint", missing_model, "--input", synthetic_stage.path, "--out", out)
        assert result.exit_code == 2 and "--out" in result.stderr and message in result.stderr, result.stderr
        assert "no_model" not in result.stderr
    result = invoke("predict", "--checkpoint", missing_model, "--input", synthetic_stage.path, "--out", tmp_path / "o.csv",
                    "--overlays", a_file)
    assert result.exit_code == 2 and "--overlays" in result.stderr


def test_atomic_write_to_a_bad_place_is_a_clean_error(tmp_path):
    from dsb.errors import DsbError
    from dsb.utils import atomic_write

    a_file = tmp_path / "f"
    a_file.write_text("x")
    for path in (tmp_path, a_file / "x.csv"):
        with pytest.raises(DsbError, match="cannot write|is a folder"):
            with atomic_write(path) as fh:
                fh.write("y")
    assert a_file.read_text() == "x"


# --------------------------------------------------------------- defect 6: files Kaggle accepts


@pytest.mark.parametrize("form", ["quoted", "crlf", "cr", "bom", "gzip", "zip"])
def test_validate_and_score_read_what_kaggle_accepts(synthetic_stage, tmp_path, form):
    text = submission_text(synthetic_stage.solution_csv, newline={"crlf": "\r\n", "cr": "\r"}.get(form, "\n"),
                           quote=form == "quoted")
    data = text.encode()
    path = tmp_path / "sub.csv"
    if form == "bom":
        data = b"\xef\xbb\xbf" + data
    elif form == "gzip":
        path, data = tmp_path / "sub.csv.gz", gzip.compress(data)
    elif form == "zip":
        path = tmp_path / "sub.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("submission.csv", data)
        data = path.read_bytes()
    path.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke("validate", path, "--images", synthetic_stage.path)
        assert result.exit_code == 0, result.stderr
        bom_warnings = [w for w in caught if issubclass(w.category, SubmissionWarning)]
        assert (len(bom_warnings) == 1 and "byte-order mark" in str(bom_warnings[0].message)) == (form == "bom")
        result = invoke("score", path, "--solution", synthetic_stage.solution_csv, "--json")
        assert result.exit_code == 0 and '"map": 1.0' in result.stdout, result.stderr


# --------------------------------------------------------------- defect 9: smaller ones


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_a_corrupt_last_image_fails_up_front_naming_it(synthetic_stage, tmp_path):
    import shutil

    folder = tmp_path / "stage"
    shutil.copytree(synthetic_stage.path, folder)
    last = sorted(synthetic_stage.image_ids)[-1]
    png = folder / last / "images" / f"{last}.png"
    png.write_bytes(png.read_bytes()[:-200])  # the header is intact, the data cut off
    assert open_stage(folder).image_shape(last)  # a header read alone does not see it
    with pytest.raises(DataError, match=f"{last}.png"):
        open_stage(folder).check_images()
    result = invoke("predict", "--checkpoint", tmp_path / "no_model.pt", "--input", folder, "--out", tmp_path / "o.csv")
    assert result.exit_code == 2 and f"{last}.png" in result.stderr and "no_model" not in result.stderr


def test_zero_byte_image_message_names_the_file(tmp_path):
    _png(tmp_path / "ok" / "images" / "ok.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "images" / "empty.png").write_bytes(b"")
    stage = open_stage(tmp_path)
    for read in (stage.read_image, stage.image_shape, lambda _id: stage.check_images()):
        with pytest.raises(DataError) as err:
            read("empty")
        assert "empty/images/empty.png: empty file (0 bytes)" in str(err.value)
        assert "BytesIO" not in str(err.value) and "BufferedReader" not in str(err.value)
    (tmp_path / "empty" / "images" / "empty.png").write_bytes(b"junk")
    with pytest.raises(DataError) as err:
        stage.read_image("empty")
    assert "empty.png: not a readable PNG" in str(err.value) and "BytesIO" not in str(err.value)


def test_twelve_bit_data_in_a_sixteen_bit_png_uses_its_range(tmp_path):
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    twelve = (eight.astype(np.uint32) * 4095 // 255).astype(np.uint16)  # 12-bit data, same picture
    twelve[0, 0] = 4095
    eight[0, 0] = 255
    _png(tmp_path / "e" / "images" / "e.png", eight)
    _png(tmp_path / "t" / "images" / "t.png", twelve)
    stage = open_stage(tmp_path)
    assert stage.image_mode("t").startswith("I")
    as_float = stage.read_image("t")
    assert as_float.max() == 1.0  # not 4095 / 65535 = 0.06
    np.testing.assert_allclose(as_float, stage.read_image("e"), atol=1 / 255)
    assert np.abs(stage.read_image_uint8("t").astype(int) - stage.read_image_uint8("e")).max() <= 1


def test_cr_only_labels_csv_is_read(synthetic_stage, tmp_path):
    from dsb.data.kaggle import read_rle_csv

    text = synthetic_stage.solution_csv.read_text()
    path = tmp_path / "cr.csv"
    path.write_bytes(text.replace("\n", "\r").encode())
    table = read_rle_csv(path)
    assert table.image_ids == read_rle_csv(synthetic_stage.solution_csv).image_ids


def test_synth_folders_get_normal_permissions(tmp_path):
    from dsb.utils import _umask

    result = invoke("data", "synth", tmp_path / "s", "--n", "1")
    assert result.exit_code == 0
    expected = 0o777 & ~_umask()
    for folder in (tmp_path / "s", *[p for p in (tmp_path / "s").rglob("*") if p.is_dir()]):
        assert stat.S_IMODE(os.stat(folder).st_mode) == expected, folder
