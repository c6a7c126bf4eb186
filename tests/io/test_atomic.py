"""Output directories: whole or absent, never a user's files lost (lowrank.io.atomic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lowrank.errors import OutputError
from lowrank.io.atomic import (
    MARKER,
    atomic_directory,
    check_output_dir,
    clean_stale,
    is_lowrank_output,
)


def _user_dir(root: Path) -> Path:
    d = root / "userdir"
    (d / "sub").mkdir(parents=True)
    (d / "my_notes.txt").write_text("mine")
    (d / "sub" / "data.csv").write_text("1,2")
    return d


def test_new_directory_appears_whole_with_marker(tmp_path):
    with atomic_directory(tmp_path / "out", kind="train") as tmp:
        (tmp / "a.txt").write_text("x")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "a.txt").read_text() == "x"
    assert json.loads((tmp_path / "out" / MARKER).read_text())["format"] == "lowrank-train"
    assert is_lowrank_output(tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_foreign_directory_refused_unless_overwrite(tmp_path):
    user = _user_dir(tmp_path)
    with pytest.raises(OutputError, match="--overwrite"):
        with atomic_directory(user, kind="x"):
            raise AssertionError("must not run")
    assert (user / "my_notes.txt").read_text() == "mine"
    with atomic_directory(user, overwrite=True, kind="x") as tmp:
        (tmp / "new.txt").write_text("n")
    assert sorted(p.name for p in user.iterdir()) == [MARKER, "new.txt"]


def test_previous_output_replaced_and_empty_directory_taken(tmp_path):
    out = tmp_path / "out"
    for text in ("one", "two"):
        with atomic_directory(out, kind="x") as tmp:
            (tmp / "v.txt").write_text(text)
    assert (out / "v.txt").read_text() == "two"
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty, kind="x") as tmp:
        (tmp / "v.txt").write_text("e")
    assert (empty / "v.txt").read_text() == "e"


@pytest.mark.parametrize("target", [".", "..", "~", "/"])
def test_protected_directories_refused_even_with_overwrite(tmp_path, monkeypatch, target):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "keep.txt").write_text("k")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "a"))
    with pytest.raises(OutputError, match="current directory|home directory|root"):
        check_output_dir(target, overwrite=True)
    assert (work / "keep.txt").read_text() == "k"


def test_file_symlink_and_missing_parent_refused(tmp_path):
    (tmp_path / "afile").write_text("f")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OutputError, match="is a file"):
        check_output_dir(tmp_path / "afile", overwrite=True)
    with pytest.raises(OutputError, match="symbolic link"):
        check_output_dir(tmp_path / "link", overwrite=True)
    with pytest.raises(OutputError, match="does not exist"):
        check_output_dir(tmp_path / "no" / "such")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "link", "real"]


def test_failure_inside_leaves_previous_output_and_no_temporary(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out, kind="x") as tmp:
        (tmp / "v.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(out, kind="x") as tmp:
            (tmp / "v.txt").write_text("half")
            raise RuntimeError("crash")
    assert (out / "v.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_directory(tmp_path / "out", kind="x") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "f.bin").write_bytes(b"1")
            os.chmod(tmp / "sub" / "f.bin", 0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "out" / "sub").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "out" / "sub" / "f.bin").stat().st_mode & 0o777 == 0o640


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path):
    """A killed run's ``.out.tmp-PID-*`` goes; a live run's stays; a previous output caught
    between the two renames (``.out.old-PID-*/previous``) is put back."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    (tmp_path / f".out.tmp-{pid}-abcd1234").mkdir()
    (tmp_path / f".out.old-{pid}-efgh5678" / "previous").mkdir(parents=True)
    (tmp_path / f".out.old-{pid}-efgh5678" / "previous" / "v.txt").write_text("prev")
    (tmp_path / ".out.tmp-zz91ab_x").mkdir()  # the older, pid-less naming
    live = tmp_path / f".out.tmp-{os.getpid()}-live0000"
    live.mkdir()
    removed = clean_stale(tmp_path / "out")
    assert len(removed) == 3
    assert (tmp_path / "out" / "v.txt").read_text() == "prev"
    assert live.is_dir()


_WRITER = textwrap.dedent("""
    import sys, time
    from lowrank.io.atomic import atomic_directory
    from lowrank.utils.signals import Signalled, signals_raise
    try:
        with signals_raise():
            with atomic_directory(sys.argv[1], kind="x") as tmp:
                (tmp / "v.txt").write_text("new")
                print("ready", flush=True)
                time.sleep(60)
    except Signalled as exc:
        sys.exit(exc.exit_status)
""")


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("signame,status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_while_writing_keeps_previous_output(tmp_path, signame, status):
    import signal

    out = tmp_path / "out"
    with atomic_directory(out, kind="x") as tmp:
        (tmp / "v.txt").write_text("old")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(getattr(signal, signame))
    assert proc.wait(timeout=60) == status
    assert (out / "v.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
