"""Files written whole or not at all: a reader (DVC, a resumed run, a second process) never sees
half of one, and a crash while writing keeps the previous version."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A temporary file beside ``path``, renamed over it when the block ends without an error
    (deleted when it raises): for writers that stream, such as ``torch.save``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def write_failure(error: BaseException) -> str | None:
    """What an error says of a disk that refused a write (full, over quota, read-only), in a
    few words; None for any other error. torch's checkpoint writer raises a RuntimeError that
    says so only in its message, so the chain of causes is read as well."""
    seen: BaseException | None = error
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            where = f" writing '{seen.filename}'" if seen.filename else ""
            return f"{seen.strerror or os.strerror(seen.errno)}{where}"
        if "file write failed" in str(seen) or "No space left on device" in str(seen):
            return "no space left on the device writing a checkpoint"
        seen = seen.__cause__ or seen.__context__
    return None
