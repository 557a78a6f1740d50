"""Where models run and in which precision: the one device and precision policy.

Training and prediction read the same modes (``train.amp`` / ``infer.amp``: ``auto``,
``off``, ``bf16``, ``fp16``) through :func:`amp_dtype`. ``auto`` differs by purpose, for
measured reasons:

* **training** uses bf16 autocast on CPUs with native bf16 instructions (AVX512-BF16 or
  AMX), where it trains about twice as fast at the same validation score
  (``tests/test_train.py`` checks both precisions), fp32 on other CPUs (emulated bf16 is
  slower), and fp16/bf16 on CUDA;
* **prediction** uses bf16 autocast on CPUs with native bf16 too: the U-Net++ predicts a
  520 x 696 view about 2.4x faster than in fp32 there (0.25 s against 0.61 s on 2 cores with
  AMX), and d4 TTA on grouped fold 0's 164 held-out images scores 0.6013 against 0.6018 in
  fp32 (``benchmarks/research/tta_gain.py --amp off auto``; docs/benchmarks.md), fp32 on other
  CPUs, and fp16 on CUDA. ``off`` gives fp32 everywhere (probabilities that do not depend
  on the CPU they were computed on).

>>> import torch
>>> amp_dtype("off", torch.device("cpu"), training=True) is None
True
>>> amp_dtype("auto", torch.device("cpu"), training=False) == (torch.bfloat16 if cpu_has_native_bf16() else None)
True
>>> amp_dtype("bf16", torch.device("cpu"), training=False)
torch.bfloat16
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Optional

import torch

from dsb.errors import ConfigError

__all__ = ["AmpMode", "DistInfo", "resolve_device", "amp_dtype", "dtype_name", "precision_name", "autocast", "cpu_has_native_bf16", "dist_from_env",
           "process_group", "reuse_freed_memory"]

AmpMode = Literal["auto", "off", "bf16", "fp16"]


def resolve_device(device: str | torch.device = "auto", local_rank: Optional[int] = None) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; anything else is passed to torch.

    Asking for CUDA where there is none is a :class:`ConfigError`; with ``local_rank``
    (a DistributedDataParallel process) a bare ``cuda`` becomes that process's GPU.
    """
    if isinstance(device, str) and device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device {str(device)!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} asked for but CUDA is not available")
        if local_rank is not None and device.index is None:
            device = torch.device("cuda", local_rank)
    return device


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
#: Set to ``0`` to leave the C allocator as it is (:func:`reuse_freed_memory`).
REUSE_FREED_MEMORY_ENV = "DSB_REUSE_FREED_MEMORY"


def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep the memory torch frees on CPU, for the next allocation.

    By default glibc hands every allocation over 32 MB (a forward pass's activations are
    hundreds) to the kernel as a fresh mapping and unmaps it when freed, so every forward
    pass faults in and zeroes its memory again: on a 2-core CPU a third of ``dsb predict``'s
    time went to the kernel (``benchmarks/malloc_reuse.py``). With mmap off for allocations
    and the heap never trimmed, freed blocks are reused (a training step gains about as much:
    ``malloc_reuse.py --train``). The process then keeps its peak memory until it exits, so
    ``dsb train``, ``dsb predict`` and ``dsb segment`` call this, not the library on import.
    Returns whether it applied: not on other C libraries, nor when ``DSB_REUSE_FREED_MEMORY=0``.
    """
    if os.environ.get(REUSE_FREED_MEMORY_ENV, "1").strip() == "0":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype(mode: AmpMode, device: torch.device, training: bool) -> Optional[torch.dtype]:
    """The autocast dtype for ``mode`` on ``device`` (``None``: plain fp32); see the module
    docstring for what ``auto`` picks when training and when predicting."""
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if mode != "auto":
        raise ValueError(f"unknown amp {mode!r}; choose from auto, off, bf16, fp16")
    if device.type == "cuda":
        if training and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if cpu_has_native_bf16():
        return torch.bfloat16
    return None


def dtype_name(dtype: Optional[torch.dtype]) -> str:
    """An autocast dtype (None: none) for messages: ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    >>> dtype_name(torch.bfloat16), dtype_name(None)
    ('bf16', 'fp32')
    """
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def precision_name(mode: AmpMode, device: str | torch.device, training: bool = False) -> str:
    """What ``mode`` computes in on ``device``, for messages (:func:`dtype_name`).

    >>> precision_name("off", "cpu")
    'fp32'
    """
    return dtype_name(amp_dtype(mode, torch.device(device), training=training))


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``dtype``, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class DistInfo:
    """Process-group facts for DistributedDataParallel (torchrun sets them in the env)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_from_env() -> DistInfo:
    """The process's place in a ``torchrun`` launch (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def uses_cuda(device: str) -> bool:
    """Whether a device setting (``auto``, ``cpu``, ``cuda[:k]``) runs on a GPU here."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


@contextlib.contextmanager
def process_group(device: str, set_cuda_device: bool = False, barrier_at_end: bool = False) -> Iterator[DistInfo]:
    """The DistributedDataParallel process group of a ``torchrun`` launch, started and
    always stopped (NCCL on CUDA, gloo on CPU); a plain launch yields a one-process
    :class:`DistInfo` and starts nothing. ``set_cuda_device`` binds each process to its
    local GPU; ``barrier_at_end`` waits for every process before the group stops."""
    dist = dist_from_env()
    if dist.enabled:
        cuda = uses_cuda(device)
        if cuda and set_cuda_device:
            torch.cuda.set_device(dist.local_rank)
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield dist
    finally:
        if dist.enabled:
            if barrier_at_end:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()
