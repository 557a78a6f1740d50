"""Shared CLI plumbing: consoles and the error wrapper every command uses."""

from __future__ import annotations

import enum
import functools
import os
import shlex
import typing
from pathlib import Path
from typing import Callable, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dsb.config import TtaMode
from dsb.errors import DsbError

F = TypeVar("F", bound=Callable)


#: Test-time augmentation: ``none``, a ``pair`` (the image and its 180-degree turn),
#: horizontal/vertical ``flips``, or the 8 ``d4`` views (:data:`dsb.config.TtaMode`).
Tta = enum.Enum("Tta", {mode: mode for mode in typing.get_args(TtaMode)}, type=str)


class Amp(str, enum.Enum):
    """Precision of the model's forward passes (``infer.amp``): ``auto`` is bf16 on CPUs with
    native bf16 (AVX512-BF16/AMX), fp32 on other CPUs, fp16 on CUDA; ``off`` is fp32."""

    auto = "auto"
    off = "off"
    bf16 = "bf16"
    fp16 = "fp16"


AMP_HELP = ("Precision of the model: auto (bf16 on CPUs with native bf16, about 2x faster there at the same "
            "mAP; fp32 on other CPUs; fp16 on CUDA), off (fp32 everywhere), bf16, fp16.")

#: The speed/quality trade of --tta, as measured (docs/segment.md, Speed).
TTA_HELP = ("Test-time augmentation: d4 (8 views), flips (4), pair (2: the image and its 180-degree turn) or none "
            "(1). Grouped out-of-fold mAP on 164 held-out images (the shipped set's recipe, distilled as it was, "
            "bf16): d4 0.6286, flips 0.6292, pair 0.6302, none 0.6252; a 520x696 image on 2 cores with AMX: d4 2.1 s, "
            "flips 1.4 s, pair 0.90 s, none 0.73 s (docs/segment.md, Speed).")

#: Human-facing output (tables, progress, messages). stdout stays clean for --json.
#: Soft wrap: a long line (a path) stays one line in a log file instead of being cut at 80 columns.
console = Console(stderr=True, soft_wrap=True)
#: Machine-readable output only.
stdout = Console(soft_wrap=True, highlight=False)


def dsb_command(fn: F) -> F:
    """Turn :class:`DsbError` into a clear message and its exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DsbError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def data_path(path: Path | None, default_name: str) -> Path:
    """Resolve a data path: the argument, else ``$DSB_DATA/default_name``."""
    if path is not None:
        return path
    root = os.environ.get("DSB_DATA")
    if not root:
        raise DsbError(f"no data path given and DSB_DATA is not set (expected {default_name})")
    return Path(root) / default_name


def progress_bar(**kwargs) -> Progress:
    """A rich progress bar on the human console: description, bar, n/total, elapsed."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, **kwargs)


def command_line(ctx: typer.Context) -> str:
    """The running command, rebuilt from its parsed options (recorded in run.json)."""
    # The program name is whatever started Python (`dsb`, `python -m cli.main`, `-c`): the
    # record names the command a user would type.
    parts = ["dsb", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or param.name == "max_epochs":
            continue
        flag = param.opts[0]
        if isinstance(value, bool):
            parts += [flag] if value else []
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            parts += [flag, str(item)]
    return shlex.join(parts)
