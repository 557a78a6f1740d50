"""The code's shape, checked: imports run one way, the run folder is spelled once, the CLI is thin.

Layers, bottom to top (docs/architecture.md):

1. ``dsb.data``, ``dsb.models``, ``dsb.postprocess``, ``dsb.rle``, ``dsb.metrics``,
   ``dsb.submission``, ``dsb.shift`` and the small shared modules (config, errors, utils,
   device, probmaps, rundir, viz);
2. ``dsb.infer`` (prediction), then ``dsb.train`` above it (validation predicts);
3. run-level workflows: ``dsb.evaluate``, ``dsb.export``, ``dsb.demo``, ``dsb.segmentation``,
   ``dsb.report``;
4. ``cli``.

A module may import its own layer or a lower one, never a higher one. These tests read the
source (every ``import`` statement, at any depth), so a late import inside a function
counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BOTTOM = ("dsb.data", "dsb.models", "dsb.postprocess", "dsb.rle", "dsb.metrics", "dsb.submission",
          "dsb.config", "dsb.errors", "dsb.utils", "dsb.device", "dsb.probmaps", "dsb.rundir", "dsb.viz",
          "dsb.shift")
INFER = ("dsb.infer",)
TRAIN = ("dsb.train",)
WORKFLOWS = ("dsb.evaluate", "dsb.export", "dsb.demo", "dsb.segmentation", "dsb.report")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> list[Path]:
    return sorted([*ROOT.glob("dsb/**/*.py"), *ROOT.glob("cli/*.py")])


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module an ``import`` statement of ``path`` names, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _layer(module: str) -> int | None:
    for rank, prefixes in enumerate((BOTTOM, INFER, TRAIN, WORKFLOWS)):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    if module == "cli" or module.startswith("cli."):
        return 4
    return None


def _violations() -> list[str]:
    bad = []
    for path in _sources():
        mine = _layer(_module_name(path))
        if mine is None:
            continue
        for target, line in _imports(path):
            theirs = _layer(target)
            if theirs is not None and theirs > mine:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} (a higher layer)")
    return bad


def test_every_module_has_a_layer():
    unplaced = [_module_name(p) for p in _sources() if _layer(_module_name(p)) is None and _module_name(p) != "dsb"]
    assert unplaced == []


def test_imports_run_one_way():
    assert _violations() == []


def test_the_checker_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The rule can fail: a prediction module that imports the training loop is caught."""
    fake = ROOT / "dsb" / "infer" / "_architecture_probe.py"
    fake.write_text("def f():\n    from dsb.train import train_fold\n    return train_fold\n")
    try:
        assert any("_architecture_probe.py:2 imports dsb.train" in v for v in _violations())
    finally:
        fake.unlink()


@pytest.mark.parametrize("low", ["dsb/infer", "dsb/postprocess", "dsb/models", "dsb/data",
                                 "dsb/rle.py", "dsb/metrics.py", "dsb/submission.py"])
def test_low_layers_never_import_workflows_training_or_cli(low):
    files = sorted((ROOT / low).rglob("*.py")) if (ROOT / low).is_dir() else [ROOT / low]
    forbidden = ("dsb.train", "dsb.evaluate", "dsb.export", "dsb.demo", "cli")
    bad = [f"{p.name}:{line} {t}" for p in files for t, line in _imports(p)
           if any(t == f or t.startswith(f + ".") for f in forbidden)]
    assert bad == []


def test_data_reads_below_submissions():
    """rle -> data -> submission: the solution reader of dsb.submission opens Kaggle stages,
    so dsb.data must never import dsb.submission (a cycle)."""
    bad = [f"{p.name}:{line}" for p in sorted((ROOT / "dsb" / "data").rglob("*.py")) for t, line in _imports(p)
           if t == "dsb.submission" or t.startswith("dsb.submission.")]
    assert bad == []


def test_the_metric_is_pure_numpy():
    names = {t.split(".")[0] for t, _ in _imports(ROOT / "dsb" / "metrics.py")}
    modules = {t for t, _ in _imports(ROOT / "dsb" / "metrics.py")}
    assert not names & {"torch", "pandas", "zipfile", "csv", "gzip", "io", "os"}
    assert not {m for m in modules if m.startswith(("dsb.data", "dsb.submission"))}


#: Names of the files and folders inside a run folder (dsb/rundir.py owns them).
RUN_FILES = {"config.yaml", "folds.csv", "run.json", "postprocess.yaml", "instance_filter.pkl", "oof_scores.csv",
             "last.pt", "best.pt", "metrics.jsonl", "manifest.json"}
#: Folder names that are also plain words (a record's "full" entry): caught in ``path / "full"``.
RUN_FOLDERS = {"oof", "full"}


def _run_folder_literals(path: Path) -> list[str]:
    """String constants used as run-folder names (not prose: help texts and docstrings
    mention them inside sentences), and ``f"fold{k}"`` paths."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RUN_FILES:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                and node.right.value in RUN_FOLDERS:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} / {node.right.value!r}")
        elif isinstance(node, ast.JoinedStr) and node.values:
            head = node.values[0]
            if isinstance(head, ast.Constant) and isinstance(head.value, str) and head.value.endswith("fold") \
                    and len(node.values) > 1 and isinstance(node.values[1], ast.FormattedValue) \
                    and (head.value == "fold" or head.value.endswith("/fold")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} f'fold{{...}}'")
    return found


def test_the_run_folder_is_spelled_only_in_rundir():
    found = [hit for p in _sources() if p.name != "rundir.py" for hit in _run_folder_literals(p)]
    assert found == []


def test_the_literal_checker_can_fail(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('from pathlib import Path\nx = Path("r") / "folds.csv"\ny = f"fold{3}"\nz = Path("r") / "full"\n')
    # _run_folder_literals reports paths relative to the project: use a copy inside it.
    inside = ROOT / "dsb" / "_literal_probe.py"
    inside.write_text(probe.read_text())
    try:
        assert len(_run_folder_literals(inside)) == 3
    finally:
        inside.unlink()


@pytest.mark.parametrize("path", sorted(ROOT.glob("cli/*.py")), ids=lambda p: p.name)
def test_cli_modules_are_thin(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 150
