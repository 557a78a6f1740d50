"""`dsb demo`: the main job end to end, on synthetic data or the Kaggle data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.common import console, dsb_command, progress_bar
from dsb.config import load_config

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"

# The library's torch-based modules are imported inside the command: `dsb --help` and the
# light commands start in a fraction of a second instead of the seconds torch takes.


def register(app: typer.Typer) -> None:
    @app.command("demo")
    @dsb_command
    def demo(
        data: Annotated[Optional[Path], typer.Option("--data", help="Folder with stage1_train(.zip) and stage1_test(.zip); default: synthetic.")] = None,
        config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Training config (default configs/demo.yaml).")] = None,
        out: Annotated[Path, typer.Option("--out", help="Submission CSV.")] = Path("submissions/demo.csv"),
        work_dir: Annotated[Path, typer.Option("--work-dir", help="Run folder, synthetic data, probabilities, overlays.")] = Path("demo_out"),
        set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: section.key=value.")] = None,
    ) -> None:
        """The main job end to end: data, training, TTA prediction, watershed, submission, score."""
        from dsb.demo import run_demo

        cfg = load_config(config or DEMO_CONFIG, list(set_ or []))
        with progress_bar() as progress:
            task = progress.add_task("train fold 0", total=cfg.train.epochs)
            result = run_demo(
                cfg, work_dir, out, data=data, log=lambda m: progress.console.print(m),
                on_epoch=lambda rec: (progress.update(task, completed=rec.epoch + 1),
                                      progress.console.print(f"epoch {rec.epoch}: loss {rec.loss:.4f}"
                                                             + ("" if rec.val_map is None else f", val mAP {rec.val_map:.4f}"))),
            )
        table = Table(title="dsb demo")
        table.add_column("")
        table.add_column("watershed (ours)")
        table.add_column("thresholding alone")
        table.add_row("out-of-fold mAP (fold 0)", f"{result.oof_map:.4f}", f"{result.oof_threshold_map:.4f}")
        if result.watershed_map is not None:
            table.add_row(f"test mAP ({result.n_test_images} synthetic images)", f"[bold]{result.watershed_map:.4f}", f"{result.threshold_map:.4f}")
        console.print(table)
        console.print(f"submission (validated): [bold]{result.submission}[/]", soft_wrap=True)
        for p in result.overlays:
            console.print(f"overlay: {p}", soft_wrap=True)
