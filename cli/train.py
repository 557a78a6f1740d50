"""`dsb train`: U-Net++ on cross-validation folds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.common import command_line, console, dsb_command
from dsb.config import load_config
from dsb.data.folds import parse_folds
from dsb.errors import ConfigError, DsbError
from dsb.rundir import RunDir

# The library's torch-based modules are imported inside the command: `dsb --help` and the
# light commands start in a fraction of a second instead of the seconds torch takes.


def _chosen_folds(fold: Optional[int], folds: Optional[str], n_folds: int) -> list[int]:
    if fold is not None and folds is not None:
        raise ConfigError("give either --fold or --folds, not both")
    return parse_folds(folds, n_folds) or [0 if fold is None else fold]


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
        pseudo_images: Annotated[Optional[Path], typer.Option(
            "--pseudo-images", help="Unlabelled images (folder or zip) to self-train on; overrides data.pseudo_path.")] = None,
        pseudo_labels: Annotated[Optional[Path], typer.Option(
            "--pseudo-labels", help="Their predicted nuclei, an RLE CSV from dsb predict --expand 0; "
                                    "overrides data.pseudo_labels.")] = None,
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
        from dsb.data.samples import load_pseudo_samples, load_samples
        from dsb.device import process_group, reuse_freed_memory
        from dsb.train import check_init_start, check_run_config, check_run_start, record_run, train_fold

        overrides = list(set_ or [])
        for key, value in (("path", data), ("labels", labels), ("pseudo_path", pseudo_images), ("pseudo_labels", pseudo_labels)):
            if value is not None:
                overrides.append(f"data.{key}={json.dumps(str(value))}")
        if full and (fold is not None or folds is not None):
            raise ConfigError("--full trains on every image; do not pass --fold/--folds with it")
        if resume is not None:
            if config is not None:
                raise ConfigError("--resume uses the run's own config.yaml; do not pass --config")
            run_dir, run = resume, RunDir(resume)
            if not run.exists():
                raise DsbError(f"{run_dir}: not a run folder (no {run.config.name})")
            cfg = load_config(run.config, overrides)
            if full:
                chosen = [None]
            else:
                chosen = run.read_record().get("folds") if fold is None and folds is None else None
                chosen = chosen or _chosen_folds(fold, folds, cfg.folds.n_folds)
        else:
            if config is None:
                raise ConfigError("give --config configs/NAME.yaml (or --resume RUN_DIR)")
            cfg = load_config(config, overrides)
            run_dir = run_dir or Path("runs") / cfg.name
            chosen = [None] if full else _chosen_folds(fold, folds, cfg.folds.n_folds)
        run = RunDir(run_dir)
        with process_group(cfg.train.device) as dist:
            # Everything that can be refused is checked before the run folder is touched:
            # the config (load_config), the run folder's own config, the data (every image
            # decoded here), the folds and a warm restart's source run.
            if dist.is_main:
                check_run_config(cfg, run_dir)
                check_init_start(cfg, chosen)  # train.init_from and train.distill_from
            samples = load_samples(cfg.data, cfg.augment.invert_brightfield)
            pseudo = load_pseudo_samples(cfg.data, cfg.augment.invert_brightfield)
            if dist.is_main:
                check_run_start(cfg, run_dir, samples, chosen)
                console.print(f"[bold]run[/] {run_dir}  {'full data' if full else f'folds {chosen}'}  config {cfg.name}")
                if pseudo:
                    console.print(f"pseudo-labelled: {len(pseudo)} images of {cfg.data.pseudo_path} "
                                  f"({cfg.data.pseudo_share:.0%} of the crops)")
                record_run(run_dir, chosen, command_line(ctx), resumed=resume is not None)
            reuse_freed_memory()  # each step's activations reuse the last one's memory (benchmarks/malloc_reuse.py --train)
            results = []
            for k in chosen:
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
                        cfg, run_dir, k, samples, resume=resume is not None and run.last(k).is_file(), dist=dist,
                        on_step=on_step, on_epoch=on_epoch, max_epochs=max_epochs,
                        on_note=progress.console.print, pseudo=pseudo,
                    )
                results.append(result)
            if dist.is_main:
                for r in results:
                    if r.fold is None:
                        console.print(f"full: trained on every image, epoch {r.best_epoch} -> {run.best(r.fold)}")
                    else:
                        console.print(f"fold {r.fold}: best val mAP {r.best_map:.4f} at epoch {r.best_epoch} -> {run.best(r.fold)}")
