"""A trial's own copy of the workspace, and its experiment brought back to the repository.

``dvc exp run --temp`` would make the copy itself, but two of them started at once share one
queue of temporary runs, and each runs what it finds there: a trial then runs twice, once with
the other's values. So each trial runs ``dvc exp run`` in a clone of its own (sharing the
repository's git objects and DVC cache, holding its uncommitted changes as ``--temp`` would),
and its experiment's ref is fetched back into the repository, where ``dvc exp show`` lists it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def _git(*args: str, cwd: Path, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:2])} failed: {done.stderr.decode(errors='replace').strip()[:300]}")
    return done.stdout


def cache_dir(root: Path) -> str:
    """The repository's DVC cache, which every copy uses (nothing is cached twice)."""
    done = subprocess.run([sys.executable, "-m", "dvc", "cache", "dir"], cwd=root, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else str(root / ".dvc" / "cache")


def make(root: Path, label: str, cache: str) -> Path:
    """A clone of ``root`` at its HEAD with the workspace's changes and untracked files."""
    copy = Path(tempfile.mkdtemp(prefix=f"kiwi-sweep-{label}-"))
    head = _git("rev-parse", "HEAD", cwd=root).decode().strip()
    _git("clone", "-q", "--shared", "--no-checkout", str(root), str(copy), cwd=root)
    _git("checkout", "-q", "--detach", head, cwd=copy)
    changes = _git("diff", "--binary", "HEAD", cwd=root)
    if changes.strip():
        _git("apply", "--binary", "--whitespace=nowarn", "-", cwd=copy, stdin=changes)
    for name in _git("ls-files", "--others", "--exclude-standard", "-z", cwd=root).decode().split("\0"):
        if name and (root / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, copy / name)
    local = root / ".dvc" / "config.local"  # credentials of remotes and the like
    text = local.read_text() if local.is_file() else ""
    if "[cache]" not in text:
        text += f"\n[cache]\n    dir = {cache}\n"
    (copy / ".dvc" / "config.local").write_text(text)
    return copy


def collect(root: Path, copy: Path, name: str) -> str | None:
    """Fetch the experiment ``name`` the copy recorded into the repository; its ref, or None."""
    if not copy.is_dir():
        return None
    listed = _git("for-each-ref", "--format=%(refname)", "refs/exps/", cwd=copy).decode().split()
    ref = next((r for r in listed if r.rsplit("/", 1)[-1] == name), None)
    if ref is None:
        return None
    _git("fetch", "-q", str(copy), f"+{ref}:{ref}", cwd=root)
    return ref


def remove(copy: Path | None) -> None:
    if copy is not None:
        shutil.rmtree(copy, ignore_errors=True)
