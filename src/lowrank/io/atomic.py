"""Output directories that appear whole and never take a user's files with them.

Every directory lowrank writes (``lowrank compress`` / ``train`` outputs, :func:`lowrank.save`,
adapter and PEFT exports) goes through :func:`atomic_directory`: it is built in a hidden
sibling ``.NAME.tmp-<pid>-<random>`` and renamed into place only when complete, so a crash or a
signal leaves the previous output or none, never half of one. The rules it enforces:

- it replaces an existing directory only when that directory is empty or is a previous lowrank
  output (its ``lowrank.json`` says ``"format": "lowrank..."``); any other non-empty directory
  is refused unless ``overwrite=True`` (``--overwrite``);
- it never replaces the current directory, a parent of it, the home directory, a mount point
  or a filesystem root, nor follows a symbolic link, whatever ``overwrite`` says;
- the parent directory must exist and be writable; :func:`check_output_dir` checks all of this
  before any work starts;
- the result gets the permissions the user's umask gives (not ``mkdtemp``'s 0700);
- hidden siblings left by a killed earlier run are removed (and a previous output caught
  between the two renames is put back).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError

#: The file that marks a directory as written by lowrank (the checkpoint manifest for
#: compressed models; a small ``{"format": "lowrank-<kind>"}`` object for other outputs).
MARKER = "lowrank.json"
_FOREIGN_SHOWN = 3


def is_lowrank_output(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a ``lowrank.json`` whose ``format`` names lowrank."""
    path = Path(directory) / MARKER
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(info, dict) and str(info.get("format", "")).startswith("lowrank")


def _protected(dest: Path) -> str | None:
    """Why ``dest`` may never be replaced, or ``None``."""
    real = dest.resolve()
    cwd = Path.cwd().resolve()
    if real == cwd:
        return "it is the current directory"
    if real in cwd.parents:
        return "it holds the current directory"
    if real == Path.home().resolve():
        return "it is the home directory"
    if real == Path(real.anchor) or os.path.ismount(real):
        return "it is a filesystem root or mount point"
    return None


def check_output_dir(destination: str | os.PathLike, *, overwrite: bool = False,
                     what: str = "output directory") -> Path:
    """Validate an output path before any work; return it as an absolute path.

    Raises :class:`~lowrank.errors.OutputError` (one line naming the path and what was
    expected) when the path is a file or a symbolic link, a protected directory (see the
    module docstring), a non-empty directory lowrank did not write (unless ``overwrite``), or
    when its parent is missing or not writable. Nothing is created or removed.
    """
    text = os.fspath(destination)
    if not text.strip():
        raise OutputError(f"{what} is empty: expected a directory path")
    dest = Path(os.path.abspath(os.path.expanduser(text)))
    if dest.is_symlink():
        raise OutputError(f"{what} '{text}' is a symbolic link: give the real directory path")
    if dest.exists():
        if not dest.is_dir():
            raise OutputError(f"{what} '{text}' exists and is a file: expected a directory "
                              "path (new, empty, or a previous lowrank output)")
        reason = _protected(dest)
        if reason is not None:
            raise OutputError(f"{what} '{text}' would be replaced, but {reason}: write to a "
                              "new directory inside it instead (e.g. --out lowrank-out)")
        foreign = sorted(p.name for p in dest.iterdir())
        if foreign and not overwrite and not is_lowrank_output(dest):
            shown = ", ".join(foreign[:_FOREIGN_SHOWN]) + (", ..." if len(foreign) >
                                                            _FOREIGN_SHOWN else "")
            raise OutputError(f"{what} '{text}' exists and holds files lowrank did not write "
                              f"({shown}): choose a new path, or pass --overwrite "
                              "(overwrite=True) to replace the directory")
    parent = dest.parent
    if not parent.is_dir():
        raise OutputError(f"{what} '{text}': parent directory '{parent}' does not exist: "
                          "create it first")
    try:  # the only reliable test of writability (root, read-only mounts, ACLs)
        probe = tempfile.mkdtemp(prefix=f".{dest.name}.probe-", dir=parent)
    except OSError as exc:
        raise OutputError(f"{what} '{text}': cannot write in '{parent}' "
                          f"({exc.strerror or exc})") from exc
    os.rmdir(probe)
    return dest


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain ``mkdir`` / ``open`` would."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for here, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(here, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(here, f), 0o666 & ~mask)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(destination: str | os.PathLike) -> list[Path]:
    """Remove the hidden siblings of ``destination`` left by killed runs; return them.

    A ``.NAME.old-*`` whose ``previous`` is the only copy of an output (the run died between
    its two renames) is renamed back to ``destination`` first.
    """
    dest = Path(os.path.abspath(os.fspath(destination)))
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.(tmp|old|probe)-(?:(\d+)-)?\w+$")
    removed = []
    if not dest.parent.is_dir():
        return removed
    for sibling in dest.parent.iterdir():
        match = pattern.match(sibling.name)
        if match is None or not sibling.is_dir() or sibling.is_symlink():
            continue
        pid = match.group(2)
        if pid is not None and _alive(int(pid)):  # a live run (this one included)
            continue
        previous = sibling / "previous"
        if match.group(1) == "old" and previous.is_dir() and not dest.exists():
            os.replace(previous, dest)
        shutil.rmtree(sibling, ignore_errors=True)
        removed.append(sibling)
    return removed


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for the two renames, so a signal cannot split them."""
    if os.name != "posix":
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def atomic_directory(destination: str | os.PathLike, *, overwrite: bool = False,
                     kind: str | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``destination`` on success.

    ``destination`` is validated first (:func:`check_output_dir`). ``kind`` marks the result
    as a lowrank output by writing ``lowrank.json`` = ``{"format": "lowrank-<kind>"}`` unless
    the caller wrote a ``lowrank.json`` itself. On any exception (signals included) the
    temporary directory is removed and ``destination`` is untouched.
    """
    dest = check_output_dir(destination, overwrite=overwrite)
    clean_stale(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{os.getpid()}-", dir=dest.parent))
    try:
        yield tmp
        if kind is not None and not (tmp / MARKER).exists():
            (tmp / MARKER).write_text(json.dumps({"format": f"lowrank-{kind}",
                                                  "format_version": 1}), encoding="utf-8")
        _apply_umask(tmp)
        check_output_dir(dest, overwrite=overwrite)  # still safe after the work?
        old = None
        with _signals_deferred():
            if dest.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-{os.getpid()}-",
                                            dir=dest.parent))
                os.replace(dest, old / "previous")
            os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
