"""Ship a trained run as a named checkpoint set under ``weights/<name>/``.

Each fold's ``best.pt`` is re-saved with fp16 weights (half the size) and the run's
tuned postprocessing written into its config, so ``dsb predict --checkpoint <name>``
reproduces the run's out-of-fold settings. Beside the checkpoints, ``manifest.json``
records what a user needs to trust them: the resolved config, the training command, a
SHA-256 of the training data files, and the out-of-fold score.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
from pathlib import Path
from typing import Callable, Optional, Sequence

from dsb.config import config_from_dict, load_config, override_config
from dsb.data.folds import load_folds, parse_folds
from dsb.errors import CheckpointError
from dsb.evaluate import EvaluationReport, evaluate_run
from dsb.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from dsb.postprocess.filter import load_filter
from dsb.rundir import FILTER_FILE, MANIFEST, RunDir, load_run_config
from dsb.train import resolve_init
from dsb.utils import atomic_write, file_sha256


#: What ``dsb export`` may change in how a run's models, or a shipped set, predict (never
#: what the weights are): the inference and postprocessing settings and which of the nested
#: heads the model computes (``model.mode``/``model.fast_depth``, inference-only).
INFERENCE_KEYS = ("infer", "postprocess", "model.mode", "model.fast_depth")


def folds_of_command(command: str, n_folds: int) -> list[int]:
    """The folds a recorded ``dsb train`` command trained (``run.json``): ``--fold K``,
    ``--folds SPEC``, none for ``--full``, fold 0 when it names none (the command's default).

    >>> folds_of_command("dsb train --config c.yaml --fold 2 --run-dir r", 4)
    [2]
    >>> folds_of_command("dsb train --folds all", 4), folds_of_command("dsb train --full", 4)
    ([0, 1, 2, 3], [])
    """
    tokens = shlex.split(command)
    if "--full" in tokens:
        return []
    for i, token in enumerate(tokens):
        name, _, value = token.partition("=")
        if name in ("--fold", "--folds"):
            value = value or (tokens[i + 1] if i + 1 < len(tokens) else "")
            return parse_folds(value, n_folds) or []
    return [0]


def _commands_behind(run_info: dict, folds: Sequence[int], n_folds: int) -> list[str]:
    """The recorded training commands that trained any of ``folds`` (oldest first): a fold
    still training, or trained but not shipped or scored, is not behind the set or its estimate."""
    commands = [c for c in run_info.get("commands", [run_info.get("command")]) if c]
    return [c for c in commands if set(folds_of_command(c, n_folds)) & set(folds)]


def _first_stage(init_run: Path) -> dict:
    """What a warm-restarted run (``train.init_from``) started from: the first stage's
    command and config, so the manifest alone says how to train the shipped weights (for
    a checkpoint: its file, SHA-256 and config, and the manifest of the set it is in)."""
    source = resolve_init(str(init_run))
    if source.weights is not None:
        payload = load_checkpoint(source.weights)
        manifest = source.weights.parent / MANIFEST
        return {"weights": str(source.weights), "sha256": file_sha256(source.weights), "config": payload["config"],
                **({"manifest": json.loads(manifest.read_text())} if manifest.is_file() else {})}
    run = RunDir(init_run)
    info = run.read_record()
    config = load_config(run.config).to_dict() if run.exists() else None
    return {"run": str(init_run), "command": info.get("command"), "commands": info.get("commands"), "config": config}


def export_run(
    run_dir: Path, name: str, weights_dir: Path, max_total_mb: float = 40.0, oof_map: Optional[float] = None,
    folds: Optional[Sequence[int]] = None, held_out_map: Optional[dict[int, float]] = None, full: bool = False,
    overrides: Sequence[str] = (),
    oof_summary: Optional[dict] = None,
) -> Path:
    """Write ``weights_dir/name/fold<k>.pt`` (fp16) and ``manifest.json``; returns the folder.

    ``folds`` ships only those folds' models (default: every trained fold). ``oof_map``
    (default: the tuned score in ``postprocess.yaml``) is the run's out-of-fold mAP over
    all its folds; ``held_out_map`` maps a fold to its own held-out mAP, recorded beside
    that fold's file.

    ``full`` ships the model trained on every image (``full/best.pt``, from ``dsb train
    --full``) instead; the folds' out-of-fold mAP is then recorded as its estimate.

    ``oof_summary`` (the out-of-fold estimate: interval, what it resampled, per image type,
    how the folds were made) is recorded as the manifest's ``oof``.

    ``overrides`` (``infer.key=value``, ``postprocess.key=value``, ``model.mode``,
    ``model.fast_depth``: :data:`INFERENCE_KEYS`) change how the shipped set predicts, e.g.
    ``infer.rescale_area_px=700``; they are recorded in the manifest.

    Raises :class:`CheckpointError` if the run has no ``fold*/best.pt``, a requested fold
    is missing, or the set would exceed ``max_total_mb``; nothing is left behind then.
    """
    run = RunDir(run_dir)
    run_dir = run.path
    bests = run.checkpoints(folds, full)
    keys = [None] if full else (sorted(run.trained_folds()) if folds is None else sorted(set(folds)))
    run_cfg = override_config(load_run_config(run_dir), overrides, sections=INFERENCE_KEYS)
    out = Path(weights_dir) / name
    staging = Path(weights_dir) / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shipped = []
        for k, best in zip(keys, bests):
            model, cfg, meta = load_model(best)
            model_cfg = dataclasses.replace(cfg.model, mode=run_cfg.model.mode, fast_depth=run_cfg.model.fast_depth)
            cfg = dataclasses.replace(cfg, postprocess=run_cfg.postprocess, infer=run_cfg.infer, model=model_cfg)
            label = run.model_dir(k).name  # the file is named after its run folder: fold<k>.pt or full.pt
            target = staging / f"{label}.pt"
            save_checkpoint(target, model, cfg, half=True, source=str(best))
            entry = {"file": target.name, "fold": label, "bytes": target.stat().st_size,
                     "epoch": meta.get("epoch")}
            if not full:
                entry["validation_map"] = meta.get("val_map")
                entry["held_out_map"] = None if held_out_map is None else held_out_map.get(k)
            shipped.append(entry)
        if run.folds.is_file() and not full:
            # Which training images each shipped model never saw: lets anyone score it honestly.
            table = load_folds(run.folds)
            for k, entry in zip(keys, shipped):
                entry["held_out_ids"] = sorted(table.loc[table["fold"] == k, "image_id"].tolist())
        instance_filter = None
        if run.instance_filter.is_file():
            # The instance filter that `dsb tune` fitted on the run's out-of-fold predictions.
            kept = load_filter(run.instance_filter)
            shutil.copyfile(run.instance_filter, staging / FILTER_FILE)
            instance_filter = {"file": FILTER_FILE, "threshold": kept.threshold,
                               "bytes": (staging / FILTER_FILE).stat().st_size}
        total_mb = (sum(f["bytes"] for f in shipped) + (instance_filter or {}).get("bytes", 0)) / 2**20
        if total_mb > max_total_mb:
            raise CheckpointError(f"{run_dir}: the set is {total_mb:.1f} MB, over the {max_total_mb:.0f} MB limit")
        data_files = [Path(p) for p in (run_cfg.data.path, run_cfg.data.labels) if Path(p).is_file()]
        run_info = run.read_record()
        if oof_map is None:
            oof_map = run.read_tuned().get("oof_map")
        # The fold models behind the set (shipped) or behind its estimate (scored out of fold).
        fold_keys = [k for k in keys if k is not None] if not full else (
            sorted(held_out_map) if held_out_map is not None else sorted(run.trained_folds()))
        fold_commands = _commands_behind(run_info, fold_keys, run_cfg.folds.n_folds)
        manifest = {
            "name": name,
            "run": str(run_dir),
            "command": run_info.get("full", {}).get("command") if full else (fold_commands or [None])[-1],
            **({"commands": fold_commands} if "commands" in run_info and not full else {}),
            **({"cross_validation_command": (fold_commands or [None])[-1],
                # every command that trained a fold of the estimate (the latest is cross_validation_command)
                "cross_validation_commands": fold_commands,
                "oof_map_is": "the out-of-fold mAP of the same recipe's fold models (an estimate for this model, "
                              "which saw every image)"} if full else {}),
            "folds": shipped,
            "total_mb": round(total_mb, 2),
            "data_sha256": {str(p): file_sha256(p) for p in data_files},
            "oof_map": oof_map,
            "folds_method": run_cfg.folds.method,
            **({"instance_filter": instance_filter} if instance_filter else {}),
            **({"oof": oof_summary} if oof_summary else {}),
            "held_out_map_per_fold": None if held_out_map is None else {str(k): v for k, v in sorted(held_out_map.items())},
            "config": run_cfg.to_dict(),
            **({"export_overrides": list(overrides)} if overrides else {}),
            **({"starts_from": _first_stage(Path(run_cfg.train.init_from))} if run_cfg.train.init_from else {}),
        }
        with atomic_write(staging / MANIFEST) as fh:
            json.dump(manifest, fh, indent=2)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def is_shipped_set(path: Path) -> bool:
    """A folder with a ``manifest.json`` (what :func:`export_run` writes), not a run folder."""
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file() and not RunDir(path).config.is_file()


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when under it (a repository's
    ``weights/...``), else absolute: what a manifest records of where a set came from."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def _student_models(set_dir: Path, set_cfg, entries: Sequence[dict], student_run: Path) -> tuple[list[Path], dict]:
    """The student run's model for each of a set's entries (``full`` -> ``full/best.pt``,
    ``fold<k>`` -> ``fold<k>/best.pt``) and what the manifest records of it, after checking
    that it learned from or started from ``set_dir`` (``train.distill_from``/``init_from``)
    and has the set's architecture and target channels."""
    run = RunDir(student_run)
    if not run.config.is_file():
        raise CheckpointError(f"{student_run}: not a training run folder (no config.yaml)")
    cfg = load_config(run.config)
    from_set = []
    for key, spec in (("train.distill_from", cfg.train.distill_from), ("train.init_from", cfg.train.init_from)):
        if spec:
            source = resolve_init(spec, key)
            if source.weights is not None and source.weights.resolve().parent == Path(set_dir).resolve():
                from_set.append(f"{key}={spec}")
    if not from_set:
        raise CheckpointError(f"{student_run}: its models neither learned from nor started from {set_dir} "
                              "(train.distill_from / train.init_from), so they cannot take that set's "
                              "postprocessing and estimates")

    def architecture(c):
        return {k: v for k, v in dataclasses.asdict(c.model).items() if k not in ("mode", "fast_depth", "pretrained", "weights")}

    paths = []
    for entry in entries:
        label = str(entry.get("fold", ""))
        path = run.best(None) if label == "full" else run.best(int(label.removeprefix("fold")))
        if not path.is_file():
            raise CheckpointError(f"{student_run}: no {path.relative_to(run.path)} for the set's {entry['file']}")
        theirs = config_from_dict(load_checkpoint(path)["config"])
        if architecture(theirs) != architecture(set_cfg) or list(theirs.targets.channels) != list(set_cfg.targets.channels):
            raise CheckpointError(f"{path}: another model than {set_dir}'s (its model or target channels differ)")
        paths.append(path)
    record = {"run": _shown(run.path), "record": run.read_record(), "config": cfg.to_dict(), "learned_from": from_set,
              "note": "the weights are this run's; the postprocessing, instance filter and estimates (oof_map, oof, "
                      "held-out maps) are those of the set it learned from, measured with that set's weights"}
    return paths, record


def export_set(set_dir: Path, name: str, weights_dir: Path, overrides: Sequence[str],
               student_run: Optional[Path] = None) -> Path:
    """Ship a shipped set again as ``weights_dir/name`` with ``overrides`` (:data:`INFERENCE_KEYS`)
    written into every checkpoint's config and the manifest's: for a set whose training run
    is not at hand. The weights are copied as they are (fp16 in, fp16 out; bit-identical), as
    are the instance filter and every estimate in the manifest; the manifest's
    ``export_overrides`` gains ``overrides`` and ``reexports`` records the source set, its
    manifest's SHA-256 and the overrides, which the recorded estimates predate. ``name`` may
    be the set's own: the old folder is replaced only once the new one is complete.

    ``student_run``: the weights come from that run's models instead (``full/best.pt`` for
    the set's ``full.pt``, ``fold<k>/best.pt`` for ``fold<k>.pt``), a run that learned from
    the set (``train.distill_from``) or started from it (``train.init_from``), with its
    architecture; the set's postprocessing and instance filter are kept, and the manifest's
    ``student`` records the run, its commands and config (``overrides`` may then be empty); a
    set that already held a student's weights moves that record to ``earlier_students``.
    """
    set_dir = Path(set_dir)
    manifest_file = set_dir / MANIFEST
    if not is_shipped_set(set_dir):
        raise CheckpointError(f"{set_dir}: not a shipped set (no {MANIFEST})")
    if not overrides and student_run is None:
        raise CheckpointError(f"{set_dir}: re-exporting a set needs --set overrides or --weights-from (it would be a copy)")
    try:
        manifest = json.loads(manifest_file.read_text())
        entries = list(manifest["folds"])
        set_cfg = config_from_dict(manifest["config"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{manifest_file}: unreadable manifest ({exc})") from None
    set_cfg = override_config(set_cfg, overrides, sections=INFERENCE_KEYS)
    student = None
    sources = [set_dir / entry["file"] for entry in entries]
    if student_run is not None:
        sources, student = _student_models(set_dir, set_cfg, entries, Path(student_run))
    out = Path(weights_dir) / name
    staging = Path(weights_dir) / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for entry, source in zip(entries, sources):
            own = load_checkpoint(set_dir / entry["file"])  # the set's config and extras (epoch, source, ...)
            cfg = override_config(config_from_dict(own["config"]), overrides, sections=INFERENCE_KEYS)
            model, _, meta = load_model(source)
            extra = own["extra"]
            if student is not None:  # the student's weights under the set's config (its postprocessing, inference)
                extra = {"epoch": meta.get("epoch"), "source": str(source)}
                entry["epoch"] = meta.get("epoch")
            target = save_checkpoint(staging / entry["file"], model, cfg, half=True, **extra)
            entry["bytes"] = target.stat().st_size
        shipped = {entry["file"] for entry in entries}
        for other in sorted(set_dir.iterdir()):
            if other.is_file() and other.name not in shipped and other.name != MANIFEST:
                shutil.copyfile(other, staging / other.name)  # the instance filter, notes
        extra_bytes = (manifest.get("instance_filter") or {}).get("bytes", 0)
        manifest.update({
            "name": name,
            "folds": entries,
            "total_mb": round((sum(e["bytes"] for e in entries) + extra_bytes) / 2**20, 2),
            "config": set_cfg.to_dict(),
            "export_overrides": list(manifest.get("export_overrides", [])) + list(overrides),
            "reexports": list(manifest.get("reexports", [])) + [{
                "from": _shown(set_dir), "manifest_sha256": file_sha256(manifest_file), "overrides": list(overrides),
                **({"weights_from": student["run"]} if student else {}),
                "note": "the manifest's estimates (oof_map, oof, held-out maps) were measured before "
                        + ("these weights and overrides" if student else "these overrides"),
            }],
            **({"student": student} if student else {}),
            # A student of a student (a set continued, then distilled): the weights it replaces
            # keep their record, so the manifest still says how every stage was trained.
            **({"earlier_students": list(manifest.get("earlier_students", [])) + [manifest["student"]]}
               if student and manifest.get("student") else {}),
        })
        with atomic_write(staging / MANIFEST) as fh:
            json.dump(manifest, fh, indent=2)
        old = Path(weights_dir) / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def ship_run(
    run_dir: Path, name: str, weights_dir: Path, folds: Optional[Sequence[int]] = None, full: bool = False,
    overrides: Sequence[str] = (), on_scoring: Optional[Callable[[], None]] = None,
) -> tuple[Path, Optional[EvaluationReport]]:
    """``dsb export``: check the models and ``overrides`` first (before the slow scoring),
    score the run's out-of-fold maps when it has them (the manifest's estimate and each
    fold's held-out mAP), then :func:`export_run`. Returns the set's folder and the report."""
    RunDir(run_dir).checkpoints(folds, full)  # a missing model fails here
    if overrides:
        override_config(load_run_config(run_dir), overrides, sections=INFERENCE_KEYS)
    report = None
    if RunDir(run_dir).has_oof():
        if on_scoring is not None:
            on_scoring()
        report = evaluate_run(run_dir)
    out = export_run(
        run_dir, name, weights_dir, folds=folds, full=full, overrides=overrides,
        oof_map=None if report is None else float(report.score.map),
        held_out_map=None if report is None else {int(r.fold): float(r.map) for r in report.per_fold.itertuples()},
        oof_summary=None if report is None else report.manifest_summary(),
    )
    return out, report
