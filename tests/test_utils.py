"""dsb.utils.atomic_write: all or nothing, with the permissions a plain open would give."""

from __future__ import annotations

import os

import pytest

from dsb.utils import atomic_write


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as fh:
            fh.write("half")
            raise RuntimeError("boom")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_new_files_follow_the_umask_and_existing_ones_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "new.csv") as fh:
            fh.write("x")
        assert (tmp_path / "new.csv").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    kept = tmp_path / "kept.csv"
    kept.write_text("a")
    kept.chmod(0o604)
    with atomic_write(kept) as fh:
        fh.write("b")
    assert kept.read_text() == "b" and kept.stat().st_mode & 0o777 == 0o604
