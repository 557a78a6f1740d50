"""Shared fixtures. Test data is synthetic and made here; real data only when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """``$DSB_DATA`` or ``../shared/dsb2018`` beside the repo, if it holds the stage-1 files."""
    candidates = [os.environ.get("DSB_DATA"), str(REPO.parent / "shared" / "dsb2018")]
    for cand in candidates:
        if cand and (Path(cand) / "stage1_train.zip").is_file():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real DSB2018 stage-1 folder; tests using it are skipped on machines without it."""
    path = real_data_dir()
    if path is None:
        pytest.skip("real DSB2018 data not present (set DSB_DATA or place ../shared/dsb2018)")
    return path


def _precision_line() -> str:
    from dsb.device import amp_dtype, cpu_has_native_bf16

    import torch

    auto = amp_dtype("auto", torch.device("cpu"), training=True)
    name = "bf16 autocast" if auto == torch.bfloat16 else "fp32"
    native = "native bf16 (AVX512-BF16/AMX)" if cpu_has_native_bf16() else "no native bf16"
    return f"dsb: train.amp=auto trains in {name} on this CPU ({native}); inference runs in fp32"


def pytest_report_header(config):
    """Say which precision `train.amp: auto` trains in on this CPU (tests that train with it
    run in that precision; the precision tests force fp32 and bf16 and say so in their names)."""
    return _precision_line()


def pytest_terminal_summary(terminalreporter):
    """The same line at the end, where `pytest -q` (which hides the header) shows it too."""
    terminalreporter.write_line(_precision_line())
