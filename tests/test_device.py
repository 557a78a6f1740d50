"""The C allocator setting of the commands that predict: freed memory is reused, not
faulted in again (each check runs in a fresh interpreter: mallopt is process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Allocates and frees a 64 MB tensor 16 times, then 16 times more; prints whether the
# setting applied and the minor page faults of the second 16 (the heap grows in the first
# ones: a freed block sits below the objects allocated after it, and takes a few rounds of
# freeing to merge into one that fits).
PROBE = """
import json, resource, torch
from dsb.device import reuse_freed_memory
applied = reuse_freed_memory() if {apply} else False
def churn():
    for _ in range(16):
        x = torch.empty(16 << 20)
        x.fill_(1.0)
        del x
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(json.dumps({{"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}}))
"""


def _probe(apply: bool, env_value: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("DSB_REUSE_FREED_MEMORY", None)
    if env_value is not None:
        env["DSB_REUSE_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE.format(apply=apply)], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, reused = _probe(apply=False), _probe(apply=True)
    assert reused["applied"] is True
    # 16 x 64 MB = 16 x 16,384 pages faulted in again by default; reused, next to none
    assert default["faults"] > 8 * 16_384
    assert reused["faults"] < default["faults"] / 10, (default, reused)


def test_the_setting_can_be_turned_off():
    off = _probe(apply=True, env_value="0")
    assert off["applied"] is False
