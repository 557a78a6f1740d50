"""`dsb predict`, `dsb tune`, `dsb evaluate` and `dsb demo`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.common import console, dsb_command, progress_bar, stdout
from dsb.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"


def _finite_or_none(value):
    return value if isinstance(value, float) and value == value and abs(value) != float("inf") else None


def register(app: typer.Typer) -> None:
    @app.command("predict")
    @dsb_command
    def predict(
        checkpoint: Annotated[list[str], typer.Option("--checkpoint", "-k", help="A .pt file, a run folder, or a shipped set name; repeat for an ensemble.")],
        input: Annotated[Path, typer.Option("--input", "-i", help="Folder or zip of images (Kaggle layout).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Submission CSV to write.")] = Path("submissions/submission.csv"),
        tta: Annotated[Optional[str], typer.Option(help="none | flips | d4 (default: the config's).")] = None,
        save_probs: Annotated[Optional[Path], typer.Option("--save-probs", help="Folder for probability maps (uint8 .npy).")] = None,
        overlays: Annotated[Optional[Path], typer.Option("--overlays", help="Folder for overlay PNGs.")] = None,
        device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
        rescale_area: Annotated[Optional[float], typer.Option(
            "--rescale-area", help="Predict each image again at the scale that makes its median nucleus this many "
                                   "pixels (0: off; default: the config's infer.rescale_area_px).")] = None,
        no_filter: Annotated[bool, typer.Option(
            "--no-filter", help="Keep every instance even if the run or set has an instance filter (dsb tune).")] = False,
    ) -> None:
        """Predict a folder or zip of images and write a validated Kaggle submission."""
        from dsb.data.kaggle import open_stage
        from dsb.evaluate import load_run_config
        from dsb.infer.pipeline import find_instance_filter, predict_stage, resolve_checkpoints
        from dsb.infer.predict import load_models
        from dsb.train import resolve_device

        from dsb.utils import check_output_dir, check_output_file

        if tta is not None and tta not in ("none", "flips", "d4"):
            raise ConfigError(f"--tta: {tta!r} is not one of none, flips, d4")
        # Outputs and inputs are checked before any model is loaded or image predicted.
        check_output_file(out, "--out")
        for option, folder in (("--save-probs", save_probs), ("--overlays", overlays)):
            if folder is not None:
                check_output_dir(folder, option)
        stage = open_stage(input, labels=None)
        with progress_bar(transient=True) as progress:
            task = progress.add_task("check images", total=len(stage.image_ids))
            stage.check_images(progress=lambda n: progress.update(task, completed=n))
        paths = resolve_checkpoints(checkpoint)
        dev = resolve_device(device)
        models, cfg = load_models(paths, device=str(dev))
        # A run folder may carry tuned thresholds (dsb tune): use them.
        for spec in checkpoint:
            if (Path(spec) / "config.yaml").is_file():
                tuned = load_run_config(Path(spec))
                cfg = dataclasses.replace(cfg, postprocess=tuned.postprocess)
        if rescale_area is not None:
            from dsb.config import override_config

            cfg = override_config(cfg, [f"infer.rescale_area_px={rescale_area}"])
        instance_filter = None if no_filter else find_instance_filter(paths)
        rescale = f", rescale to {cfg.infer.rescale_area_px:g} px nuclei" if cfg.infer.rescale_area_px else ""
        kept = f", instance filter (IoU >= {instance_filter.threshold:g})" if instance_filter is not None else ""
        console.print(f"{len(paths)} model(s), {len(stage.image_ids)} images, TTA {tta or cfg.infer.tta}{rescale}{kept}, device {dev}")
        with progress_bar() as progress:
            task = progress.add_task("predict", total=len(stage.image_ids))
            summary = predict_stage(
                models, cfg, stage, out, device=str(dev), tta=tta, save_probs_dir=save_probs,
                overlays_dir=overlays, on_image=lambda _id, n: progress.update(task, completed=n),
                instance_filter=instance_filter,
            )
        console.print(
            f"wrote [bold]{summary.out_csv}[/]: {summary.n_images} images, {summary.n_nuclei} nuclei; "
            f"model {summary.model_seconds:.1f}s, postprocess {summary.postprocess_seconds:.1f}s (in parallel), "
            f"wall {summary.wall_seconds:.1f}s"
        )
        if overlays is not None:
            console.print(f"overlays in {overlays}")

    @app.command("tune")
    @dsb_command
    def tune_cmd(
        run_dir: Annotated[Path, typer.Argument(help="A training run folder.")],
        rounds: Annotated[int, typer.Option(help="Coordinate-search rounds.")] = 2,
        instance_filter: Annotated[bool, typer.Option(
            "--instance-filter/--no-instance-filter",
            help="Then fit an instance filter (predicted IoU per instance, cross-validated over experiment "
                 "groups); kept as RUN_DIR/instance_filter.pkl only if it raises the out-of-fold mAP.")] = True,
    ) -> None:
        """Search the postprocessing thresholds that maximise the out-of-fold mAP.

        The best values are written to RUN_DIR/postprocess.yaml and used from then on
        by `dsb evaluate` and `dsb predict --checkpoint RUN_DIR`. The instance filter is used
        by `dsb predict` and shipped by `dsb export`; `dsb evaluate` scores without it (a
        filter fitted on every out-of-fold image would score itself in-sample): its honest
        gain is the one printed here.
        """
        from dsb.evaluate import fit_instance_filter, load_oof, load_run_config, save_tuned, tune
        from dsb.postprocess.filter import FILTER_FILE

        cfg = load_run_config(run_dir)
        items = load_oof(run_dir, cfg)
        console.print(f"{len(items)} out-of-fold images; searching {', '.join(cfg.targets.channels)} postprocessing")
        with progress_bar(transient=True) as progress:
            task = progress.add_task("tune", total=None)
            result = tune(items, cfg.targets.channels, cfg.postprocess, rounds=rounds,
                          on_eval=lambda _p, _m: progress.advance(task))
        path = save_tuned(run_dir, result)
        table = Table(title=f"tuned postprocessing ({result.n_evaluations} evaluations)")
        table.add_column("field")
        table.add_column("before")
        table.add_column("after")
        for name, value in result.best.__dict__.items():
            table.add_row(name, str(getattr(cfg.postprocess, name)), str(value))
        table.add_row("[bold]OOF mAP", f"{result.start_map:.4f}", f"[bold]{result.best_map:.4f}")
        console.print(table)
        console.print(f"wrote {path}")
        if instance_filter:
            filter_path = run_dir / FILTER_FILE
            fitted = fit_instance_filter(items, cfg.targets.channels, result.best)
            console.print(f"instance filter: out-of-fold mAP {fitted.map_before:.4f} -> {fitted.map_after:.4f} "
                          f"(drop instances predicted below IoU {fitted.filter.threshold:g}; {fitted.n_instances} "
                          "instances, cross-validated over experiment groups)")
            if fitted.filter.threshold > 0:
                fitted.filter.save(filter_path)
                console.print(f"wrote {filter_path}")
            elif filter_path.is_file():
                filter_path.unlink()
                console.print(f"removed {filter_path}: no threshold helps")

    @app.command("evaluate")
    @dsb_command
    def evaluate_cmd(
        run_dir: Annotated[Path, typer.Argument(help="A training run folder.")],
        out_csv: Annotated[Optional[Path], typer.Option("--out", help="Per-image CSV (default RUN_DIR/oof_scores.csv).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
        labels: Annotated[Optional[str], typer.Option(
            "--labels", help="Score against other labels: 'masks' or an RLE CSV (default: the run's data.labels).")] = None,
        figures: Annotated[Optional[Path], typer.Option(
            "--figures", help="Folder for training_curves.png and overlays.png (typical images per type).")] = None,
    ) -> None:
        """Score a run's out-of-fold predictions: overall, per image type, per threshold."""
        from dsb.config import config_from_dict
        from dsb.evaluate import evaluate_run, load_run_config, write_per_image_csv
        from dsb.metrics import THRESHOLDS

        cfg = load_run_config(run_dir)
        if labels is not None:
            if cfg.data.path == "synthetic":
                raise ConfigError(f"--labels: {run_dir} trained on generated synthetic data, which has no other labels")
            data = cfg.to_dict()
            data["data"]["labels"] = labels
            cfg = config_from_dict(data)
        report = evaluate_run(run_dir, cfg)
        path = write_per_image_csv(report, out_csv or run_dir / "oof_scores.csv")
        written = []
        if figures is not None:
            from dsb.report import write_figures

            written = write_figures(run_dir, figures, report.per_image, report.truths, report.preds, cfg.data)
        if as_json:
            stdout.print_json(json.dumps({
                "map": report.score.map, "n_images": report.score.n_images, "labels": cfg.data.labels,
                "interval": list(report.interval), "interval_unit": report.interval_unit, "n_groups": report.n_groups,
                "per_type": {r.image_type: {"n_images": int(r.n_images), "map": float(r.map)} for r in report.per_type.itertuples()},
                "per_fold": {str(r.fold): {"n_images": int(r.n_images), "map": float(r.map)} for r in report.per_fold.itertuples()},
                "per_threshold": dict(zip([f"{t:.2f}" for t in THRESHOLDS], map(float, report.score.per_threshold))),
                "error_kinds": report.error_kinds, "error_kinds_per_type": report.error_kinds_per_type,
                "per_image_csv": str(path), "figures": [str(p) for p in written],
            }))
            return
        lo, hi = report.interval
        console.print(f"[bold]out-of-fold mAP {report.score.map:.4f}[/] over {report.score.n_images} images, "
                      f"95% interval {lo:.4f}-{hi:.4f} (bootstrap over {report.n_groups} {report.interval_unit})")
        table = Table(title="per image type")
        for col in ("image type", "images", "mAP"):
            table.add_column(col)
        for r in report.per_type.itertuples():
            table.add_row(r.image_type, str(r.n_images), f"{r.map:.4f}")
        console.print(table)
        thr = Table(title="per IoU threshold")
        thr.add_column("t")
        thr.add_column("TP/(TP+FP+FN)")
        for t, v in zip(THRESHOLDS, report.score.per_threshold):
            thr.add_row(f"{t:.2f}", f"{v:.4f}")
        console.print(thr)
        kinds = Table(title="error kinds at IoU 0.5 (nuclei; small = under 100 px)")
        names = list(report.error_kinds)
        short = {"n_true": "true", "n_pred": "pred", "small_true": "small", "small_missed_rate": "small missed",
                 "area_ratio": "area pred/true"}
        kinds.add_column("image type", no_wrap=True)
        for name in names:
            kinds.add_column(short.get(name, name.replace("_", " ")), justify="right")
        rows = [*report.error_kinds_per_type.items(), ("[bold]all", report.error_kinds)]
        for image_type, values in rows:
            kinds.add_row(image_type, *(f"{values[n]:.3f}" if isinstance(values[n], float) else str(values[n]) for n in names))
        console.print(kinds)
        console.print(f"per-image scores: {path}")
        for p in written:
            console.print(f"figure: {p}", soft_wrap=True)

    @app.command("export")
    @dsb_command
    def export_cmd(
        run_dir: Annotated[Path, typer.Argument(help="A training run folder (fold*/best.pt).")],
        name: Annotated[str, typer.Argument(help="Name of the checkpoint set (dsb predict --checkpoint NAME).")],
        weights_dir: Annotated[Path, typer.Option("--weights-dir", help="Where shipped sets live.")] = REPO / "weights",
        folds: Annotated[Optional[str], typer.Option(help="Ship only these folds' models, like 2 or 0,1 (default: all).")] = None,
        full: Annotated[bool, typer.Option("--full", help="Ship the model trained on every image (dsb train --full).")] = False,
        set_: Annotated[Optional[list[str]], typer.Option(
            "--set", help="How the set predicts: infer.key=value or postprocess.key=value (e.g. infer.rescale_area_px=700).")] = None,
    ) -> None:
        """Ship a run as a named fp16 checkpoint set with a manifest (config, command, data checksum, OOF score).

        The out-of-fold mAP over all the run's folds and each shipped fold's own held-out
        mAP (with the tuned postprocessing) are scored here and recorded in manifest.json.
        """
        from dsb.evaluate import evaluate_run
        from dsb.export import export_run, select_checkpoints

        chosen = None
        if folds is not None:
            try:
                chosen = [int(x) for x in folds.split(",") if x.strip()]
            except ValueError:
                raise ConfigError(f"--folds: expected a comma-separated list like 0,2, got {folds!r}") from None
        select_checkpoints(run_dir, chosen, full)  # a missing model fails here, before the slow scoring
        if set_:
            from dsb.config import override_config
            from dsb.evaluate import load_run_config

            override_config(load_run_config(run_dir), set_, sections=("infer", "postprocess"))  # bad --set fails here too
        oof_map = held_out = summary = None
        if (run_dir / "folds.csv").is_file() and any(run_dir.glob("fold*/oof/*.npy")):
            console.print("scoring the out-of-fold predictions ...")
            report = evaluate_run(run_dir)
            oof_map = float(report.score.map)
            held_out = {int(r.fold): float(r.map) for r in report.per_fold.itertuples()}
            summary = {
                "map": oof_map, "interval_95": [round(v, 4) for v in report.interval],
                "interval_over": report.interval_unit, "n_images": int(report.score.n_images),
                "n_groups": report.n_groups,
                "per_type": {r.image_type: {"n_images": int(r.n_images), "map": round(float(r.map), 4)}
                             for r in report.per_type.itertuples()},
                "area_ratio": _finite_or_none(report.error_kinds.get("area_ratio")),
            }
        out = export_run(run_dir, name, weights_dir, oof_map=oof_map, folds=chosen, held_out_map=held_out, full=full,
                         overrides=set_ or (), oof_summary=summary)
        console.print(f"exported {run_dir} -> [bold]{out}[/]", soft_wrap=True)
        if oof_map is not None:
            console.print(f"out-of-fold mAP {oof_map:.4f}{' (the estimate for the full-data model)' if full else ''}; held out per fold: "
                          + ", ".join(f"{k}: {v:.4f}" for k, v in sorted(held_out.items())))

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
        from dsb.config import load_config
        from dsb.demo import run_demo

        cfg_path = config or DEMO_CONFIG
        cfg = load_config(cfg_path, list(set_ or []))
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
