"""`dsb train`: U-Net++ on cross-validation folds."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.common import console, dsb_command
from dsb.config import load_config
from dsb.errors import ConfigError, DsbError
from dsb.utils import atomic_write

RUN_FILE = "run.json"


def _dist_from_env():
    from dsb.train import DistInfo

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _command_line(ctx: typer.Context) -> str:
    """The running command, rebuilt from its parsed options (recorded in run.json)."""
    parts = ctx.command_path.split()
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


def _read_run_file(path: Path) -> dict:
    """The run's ``run.json`` (``{}`` when absent); a damaged one is an error naming it."""
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DsbError(f"{path}: unreadable run record ({exc}); fix or delete it") from None
    if not isinstance(record, dict):
        raise DsbError(f"{path}: unreadable run record (not a JSON object); fix or delete it")
    return record


def _parse_folds(fold: Optional[int], folds: Optional[str], n_folds: int) -> list[int]:
    if fold is not None and folds is not None:
        raise ConfigError("give either --fold or --folds, not both")
    if folds is None:
        return [0 if fold is None else fold]
    if folds == "all":
        return list(range(n_folds))
    try:
        chosen = [int(x) for x in folds.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--folds: expected 'all' or a comma-separated list like 0,2, got {folds!r}") from None
    if not chosen:
        raise ConfigError(f"--folds: no fold given ({folds!r}); expected 'all' or a list like 0,2")
    bad = [f for f in chosen if not 0 <= f < n_folds]
    if bad:
        raise ConfigError(f"--folds: fold(s) {bad} out of range 0..{n_folds - 1}")
    return chosen


def register(app: typer.Typer) -> None:
    @app.command("train")
    @dsb_command
    def train(
        ctx: typer.Context,
        config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (configs/*.yaml).")] = None,
        fold: Annotated[Optional[int], typer.Option(help="Train this fold only.")] = None,
        folds: Annotated[Optional[str], typer.Option(help="'all' or a list like 0,2.")] = None,
        run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Run folder (default runs/<config name>).")] = None,
        resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder from its last.pt.")] = None,
        set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: section.key=value.")] = None,
        data: Annotated[Optional[Path], typer.Option("--data", help="Training data (folder or zip); overrides data.path.")] = None,
        labels: Annotated[Optional[str], typer.Option("--labels", help="'masks' or an RLE CSV; overrides data.labels.")] = None,
        full: Annotated[bool, typer.Option("--full", help="Train one model on every image (no validation) into RUN_DIR/full/.")] = False,
        max_epochs: Annotated[Optional[int], typer.Option("--max-epochs", hidden=True)] = None,
    ) -> None:
        """Train U-Net++ on one fold, a list of folds or all folds.

        Checkpoints (last.pt every epoch, best.pt by validation mAP), metrics.jsonl and
        out-of-fold probabilities go to RUN_DIR/fold<k>/. --resume RUN_DIR continues an
        interrupted run with the same config, folds and data order. --full trains the
        same recipe on every image into RUN_DIR/full/ (for shipping; the folds'
        out-of-fold score estimates it); give it the cross-validation run's folder.
        """
        from dsb.train import FULL_DIR, check_run_config, check_run_start, load_samples, train_fold

        overrides = list(set_ or [])
        if data is not None:
            overrides.append(f"data.path={json.dumps(str(data))}")
        if labels is not None:
            overrides.append(f"data.labels={json.dumps(labels)}")
        if full and (fold is not None or folds is not None):
            raise ConfigError("--full trains on every image; do not pass --fold/--folds with it")
        if resume is not None:
            if config is not None:
                raise ConfigError("--resume uses the run's own config.yaml; do not pass --config")
            run_dir = resume
            cfg_path = run_dir / "config.yaml"
            if not cfg_path.is_file():
                raise DsbError(f"{run_dir}: not a run folder (no config.yaml)")
            cfg = load_config(cfg_path, overrides)
            run_file = run_dir / RUN_FILE
            if full:
                chosen = [None]
            else:
                chosen = _read_run_file(run_file).get("folds") if fold is None and folds is None else None
                chosen = chosen or _parse_folds(fold, folds, cfg.folds.n_folds)
        else:
            if config is None:
                raise ConfigError("give --config configs/NAME.yaml (or --resume RUN_DIR)")
            cfg = load_config(config, overrides)
            run_dir = run_dir or Path("runs") / cfg.name
            chosen = [None] if full else _parse_folds(fold, folds, cfg.folds.n_folds)
        dist = _dist_from_env()
        if dist.enabled:
            import torch.distributed

            backend = "nccl" if cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and _cuda()) else "gloo"
            torch.distributed.init_process_group(backend=backend)
        try:
            # Everything that can be refused is checked before the run folder is touched:
            # the config (load_config), the run folder's own config, the data (every image
            # decoded here), the folds and a warm restart's source run.
            if dist.is_main:
                check_run_config(cfg, run_dir)
            samples = load_samples(cfg.data, cfg.augment.invert_brightfield)
            if dist.is_main:
                check_run_start(cfg, run_dir, samples)
                console.print(f"[bold]run[/] {run_dir}  {'full data' if full else f'folds {chosen}'}  config {cfg.name}")
                run_dir.mkdir(parents=True, exist_ok=True)
                before = _read_run_file(run_dir / RUN_FILE)
                command = _command_line(ctx)
                if full:
                    # The full-data model joins a cross-validation run: its own entry, the folds' kept.
                    entry = before.get("full", {})
                    entry = ({**entry, "resumed": [*entry.get("resumed", []), command]}
                             if resume is not None and entry else {"command": command})
                    record = {**before, "full": entry}
                elif resume is not None and before:
                    # The run's training command stays the one that started it; resumptions are listed.
                    record = {**before, "folds": chosen, "resumed": [*before.get("resumed", []), command]}
                elif before:
                    # More folds of the same run (the config was checked above): the folds add up,
                    # every command that trained some of them is kept, the latest as "command".
                    folds_so_far = sorted(set(before.get("folds", [])) | set(chosen))
                    history = before.get("commands", [before["command"]] if "command" in before else [])
                    record = {**before, "folds": folds_so_far, "command": command, "commands": [*history, command]}
                else:
                    record = {"folds": chosen, "command": command}
                with atomic_write(run_dir / RUN_FILE) as fh:
                    json.dump(record, fh)
            results = []
            for k in chosen:
                last = run_dir / (FULL_DIR if k is None else f"fold{k}") / "last.pt"
                with Progress(
                    TextColumn("[bold]{task.fields[fold]} epoch {task.fields[epoch]}"),
                    BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s  best mAP {task.fields[best]}"),
                    TimeElapsedColumn(), console=console, disable=not dist.is_main, transient=False,
                ) as progress:
                    part = "full" if k is None else f"fold {k}"
                    task = progress.add_task("train", total=1, fold=part, epoch=0, loss=0.0, ips=0.0, best="-")

                    def on_step(epoch, step, n_steps, loss, ips, _task=task):
                        progress.update(_task, completed=step, total=n_steps, epoch=epoch, loss=loss, ips=ips)

                    def on_epoch(rec, _task=task):
                        val = "-" if rec.val_map is None else f"{rec.val_map:.4f}"
                        progress.update(_task, best=f"{rec.best_map:.4f}")
                        progress.console.print(
                            f"{part} epoch {rec.epoch}: loss {rec.loss:.4f}  val mAP {val}  "
                            f"best {rec.best_map:.4f}  {rec.images_per_s:.1f} img/s  {rec.seconds:.0f}s"
                        )

                    result = train_fold(
                        cfg, run_dir, k, samples, resume=resume is not None and last.is_file(), dist=dist,
                        on_step=on_step, on_epoch=on_epoch, max_epochs=max_epochs,
                    )
                results.append(result)
            if dist.is_main:
                for r in results:
                    if r.fold is None:
                        console.print(f"full: trained on every image, epoch {r.best_epoch} -> {r.fold_dir / 'best.pt'}")
                    else:
                        console.print(f"fold {r.fold}: best val mAP {r.best_map:.4f} at epoch {r.best_epoch} -> {r.fold_dir / 'best.pt'}")
        finally:
            if dist.enabled:
                import torch.distributed

                torch.distributed.destroy_process_group()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
