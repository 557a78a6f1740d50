"""Fuzzing (issue 11): random mutations of a valid submission and of a valid config never
give a traceback, and every verdict is an exit code 0, 1 or 2.

Mutations are byte-level (insert, delete, overwrite, truncate), line-level (duplicate,
drop, swap, quote, re-terminate) and container-level (BOM, gzip, zip), applied to a valid
file; configs also get typed values of every kind at every known key.

Hundreds of CLI runs: the module is ``slow`` (``make test-fast`` relies on the case-by-case
tests of ``test_bad_inputs.py``).
"""

from __future__ import annotations

import gzip
import io
import math
import warnings
import zipfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app
from dsb.config import RANGES, Config, load_config
from dsb.errors import ConfigError

pytestmark = pytest.mark.slow

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def invoke(*args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output)
    return result


# ----------------------------------------------------------------------------- mutations

_TOKENS = [b",", b'"', b"\n", b"\r", b"\r\n", b" ", b"\x00", b"\xff", b"\xef\xbb\xbf", b"-1", b"0", b"1e3",
           b"99999999999999999999", b"ImageId", b"EncodedPixels", b"Height", b"Width", b"\t", b";", b"\\",
           b"caf\xc3\xa9", b"#", b":", b"- ", b"[", b"{", b"!!python/object:os.system", b"&a", b"*a", b"~",
           b"nan", b".inf", b"true", b"1e-3", b"="]

byte_edit = st.one_of(
    st.tuples(st.just("insert"), st.floats(0, 1), st.one_of(st.sampled_from(_TOKENS), st.binary(min_size=1, max_size=8))),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 40)),
    st.tuples(st.just("overwrite"), st.floats(0, 1), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.none()),
)
line_edit = st.tuples(
    st.sampled_from(["duplicate", "drop", "swap", "quote", "crlf", "cr", "reverse_fields", "blank"]),
    st.floats(0, 1), st.floats(0, 1),
)
container = st.sampled_from(["plain", "plain", "plain", "bom", "gzip", "zip", "gzip_truncated", "zip_two"])


def _at(data: bytes | list, where: float) -> int:
    return min(int(where * len(data)), max(len(data) - 1, 0))


def mutate(data: bytes, edits: list, wrap: str) -> bytes:
    for kind, where, arg in edits:
        if kind in ("insert", "delete", "overwrite", "truncate"):
            i = _at(data, where)
            if kind == "insert":
                data = data[:i] + arg + data[i:]
            elif kind == "delete":
                data = data[:i] + data[i + arg:]
            elif kind == "overwrite":
                data = data[:i] + arg + data[i + len(arg):]
            else:
                data = data[:i]
            continue
        lines = data.split(b"\n")
        if not lines:
            continue
        i, j = _at(lines, where), _at(lines, arg)
        if kind == "duplicate":
            lines.insert(j, lines[i])
        elif kind == "drop":
            del lines[i]
        elif kind == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "quote":
            lines[i] = b",".join(b'"' + f + b'"' for f in lines[i].split(b","))
        elif kind == "reverse_fields":
            lines[i] = b",".join(reversed(lines[i].split(b",")))
        elif kind == "blank":
            lines.insert(i, b"")
        data = {"crlf": b"\r\n", "cr": b"\r"}.get(kind, b"\n").join(lines)
    if wrap == "bom":
        data = b"\xef\xbb\xbf" + data
    elif wrap in ("gzip", "gzip_truncated"):
        data = gzip.compress(data)
        data = data[: len(data) // 2] if wrap == "gzip_truncated" else data
    elif wrap in ("zip", "zip_two"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("submission.csv", data)
            if wrap == "zip_two":
                zf.writestr("other.csv", data)
        data = buffer.getvalue()
    return data


# ----------------------------------------------------------------------------- submissions


@pytest.fixture(scope="module")
def valid_submission(synthetic_stage) -> bytes:
    lines = synthetic_stage.solution_csv.read_bytes().split(b"\n")
    per_image: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        if line:
            image_id, pixels = line.split(b",")[:2]
            per_image.setdefault(image_id, []).append(image_id + b"," + pixels)
    # Keep the file short so that mutations hit the header and rows alike: the first three
    # nuclei of each image (every image needs a row).
    return b"\n".join([b"ImageId,EncodedPixels", *(row for rows in per_image.values() for row in rows[:3])]) + b"\n"


@FUZZ
@given(edits=st.lists(st.one_of(byte_edit, line_edit), max_size=4), wrap=container)
def test_fuzz_submission_validate_and_score(synthetic_stage, valid_submission, tmp_path_factory, edits, wrap):
    path = tmp_path_factory.mktemp("sub") / "sub.csv"
    path.write_bytes(mutate(valid_submission, edits, wrap))
    validated = invoke("validate", path, "--images", synthetic_stage.path, "--json")
    scored = invoke("score", path, "--solution", synthetic_stage.solution_csv)
    # Both commands judge a readable file the same way: invalid (1) or valid (0). (`score`
    # also reads a file with extra columns, such as a solution's, that `validate` refuses.)
    if validated.exit_code != 2:
        assert scored.exit_code == validated.exit_code, (validated.output, scored.output)
    if validated.exit_code:
        assert "error:" in validated.stderr or "INVALID" in validated.stderr


def test_fuzz_harness_sees_valid_files(synthetic_stage, valid_submission, tmp_path):
    """The unmutated file is valid for both commands (so the fuzz compares real verdicts)."""
    for wrap in ("plain", "bom", "gzip", "zip"):
        path = tmp_path / f"{wrap}.csv"
        path.write_bytes(mutate(valid_submission, [], wrap))
        assert invoke("validate", path, "--images", synthetic_stage.path).exit_code == 0
        assert invoke("score", path, "--solution", synthetic_stage.solution_csv).exit_code == 0


# ----------------------------------------------------------------------------- configs

DEMO = (REPO / "configs" / "demo.yaml").read_bytes()


def _flat_keys() -> list[str]:
    data = Config().to_dict()
    return [f"{section}.{key}" for section, values in data.items() if isinstance(values, dict) for key in values]


values = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.text(max_size=12), st.lists(st.integers(-3, 300), max_size=6), st.sampled_from(
        ["1e-3", "-1", "0", ".5", "1_000", "nan", "-inf", "[1", "{a: 1}", "resnet18", "d4", "grouped", "auto"]),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _check_loaded(cfg: Config) -> None:
    """A config that loads has every value in range."""
    for key, (low, high, low_open, high_open) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        for v in value if isinstance(value, list) else [value]:
            assert math.isfinite(v)
            assert (v > low if low_open else v >= low) and (v < high if high_open else v <= high), (key, v)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.one_of(byte_edit, line_edit), max_size=4))
def test_fuzz_config_bytes(tmp_path_factory, edits):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(mutate(DEMO, edits, "plain"))
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
    else:
        _check_loaded(cfg)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(_flat_keys()), values), min_size=1, max_size=3),
       as_override=st.booleans())
def test_fuzz_config_values(tmp_path_factory, changes, as_override):
    data = yaml.safe_load(DEMO)
    overrides = []
    for key, value in changes:
        section, name = key.split(".")
        if as_override:
            overrides.append(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                             if not isinstance(value, str) else f"{key}={value}")
        else:
            data.setdefault(section, {})[name] = value
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        cfg = load_config(path, overrides)
    except ConfigError as exc:
        assert str(path) in str(exc)
    else:
        _check_loaded(cfg)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.one_of(byte_edit, line_edit), min_size=1, max_size=3))
def test_fuzz_config_through_the_cli(tmp_path_factory, edits):
    """`dsb train` with a mutated config: a clean exit 2 and nothing written. (--folds=-1 is
    out of range for any config, so a config that loads stops there, before training.)"""
    root = tmp_path_factory.mktemp("cli_cfg")
    path = root / "c.yaml"
    path.write_bytes(mutate(DEMO, edits, "plain"))
    result = invoke("train", "--config", path, "--folds=-1", "--run-dir", root / "run")
    assert result.exit_code == 2 and "error:" in result.stderr
    assert not (root / "run").exists()
