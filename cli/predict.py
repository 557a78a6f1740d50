"""`dsb predict`: checkpoints and a folder (or zip) of images to a validated submission."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import AMP_HELP, TTA_HELP, Amp, Tta, console, dsb_command, progress_bar
from dsb.data.kaggle import open_stage
from dsb.utils import check_output_dir, check_output_file

# The library's torch-based modules are imported inside the command: `dsb --help` and the
# light commands start in a fraction of a second instead of the seconds torch takes.


def register(app: typer.Typer) -> None:
    @app.command("predict")
    @dsb_command
    def predict(
        checkpoint: Annotated[list[str], typer.Option("--checkpoint", "-k", help="A .pt file, a run folder, or a shipped set name; repeat for an ensemble.")],
        input: Annotated[Path, typer.Option("--input", "-i", help="Folder or zip of images (Kaggle layout).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Submission CSV to write.")] = Path("submissions/submission.csv"),
        tta: Annotated[Optional[Tta], typer.Option(help=TTA_HELP + " Default: the checkpoint's (pair for the shipped set).")] = None,
        save_probs: Annotated[Optional[Path], typer.Option("--save-probs", help="Folder for probability maps (uint8 .npy).")] = None,
        overlays: Annotated[Optional[Path], typer.Option("--overlays", help="Folder for overlay PNGs.")] = None,
        device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
        amp: Annotated[Amp, typer.Option("--amp", help=AMP_HELP)] = Amp.auto,
        rescale_area: Annotated[Optional[float], typer.Option(
            "--rescale-area", help="Predict each image again at the scale that makes its median nucleus this many "
                                   "pixels (0: off; default: the config's infer.rescale_area_px).")] = None,
        no_filter: Annotated[bool, typer.Option(
            "--no-filter", help="Keep every instance even if the run or set has an instance filter (dsb tune).")] = False,
        expand: Annotated[Optional[float], typer.Option(
            "--expand", min=0.0, help="Grow every nucleus by this many pixels after the instance filter, to match "
                                      "annotations drawn wider than the training labels (default: the config's "
                                      "postprocess.expand_px).")] = None,
    ) -> None:
        """Predict a folder or zip of images and write a validated Kaggle submission."""
        from dsb.device import precision_name, reuse_freed_memory
        from dsb.infer.pipeline import load_ensemble, predict_stage

        # Outputs and inputs are checked before any model is loaded or image predicted.
        check_output_file(out, "--out")
        for option, folder in (("--save-probs", save_probs), ("--overlays", overlays)):
            if folder is not None:
                check_output_dir(folder, option)
        stage = open_stage(input, labels=None)
        with progress_bar(transient=True) as progress:
            task = progress.add_task("check images", total=len(stage.image_ids))
            stage.check_images(progress=lambda n: progress.update(task, completed=n))
        overrides = [] if rescale_area is None else [f"infer.rescale_area_px={rescale_area}"]
        overrides.append(f"infer.amp={amp.value}")
        if expand is not None:
            overrides.append(f"postprocess.expand_px={expand}")
        reuse_freed_memory()
        ens = load_ensemble(checkpoint, device=device, overrides=overrides, use_filter=not no_filter)
        cfg, mode = ens.cfg, tta.value if tta is not None else None
        rescale = f", rescale to {cfg.infer.rescale_area_px:g} px nuclei" if cfg.infer.rescale_area_px else ""
        kept = f", instance filter (IoU >= {ens.instance_filter.threshold:g})" if ens.instance_filter is not None else ""
        if cfg.postprocess.expand_px:
            kept += f", nuclei grown by {cfg.postprocess.expand_px:g} px"
        if cfg.postprocess.by_type.changes():
            kept += f", own thresholds for {' and '.join(cfg.postprocess.by_type.changes())} images"
        console.print(f"{len(ens.paths)} model(s), {len(stage.image_ids)} images, TTA {mode or cfg.infer.tta}{rescale}{kept}, "
                      f"device {ens.device} ({precision_name(cfg.infer.amp, ens.device)})")
        with progress_bar() as progress:
            task = progress.add_task("predict", total=len(stage.image_ids))
            summary = predict_stage(
                ens.models, cfg, stage, out, device=ens.device, tta=mode, save_probs_dir=save_probs,
                overlays_dir=overlays, on_image=lambda _id, n: progress.update(task, completed=n),
                instance_filter=ens.instance_filter,
            )
        console.print(
            f"wrote [bold]{summary.out_csv}[/]: {summary.n_images} images, {summary.n_nuclei} nuclei; "
            f"model {summary.model_seconds:.1f}s, postprocess {summary.postprocess_seconds:.1f}s (in parallel), "
            f"wall {summary.wall_seconds:.1f}s"
        )
        if overlays is not None:
            console.print(f"overlays in {overlays}")
