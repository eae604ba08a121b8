"""Where the README has always said the resumable loader is: see :mod:`.lightning.resumable`."""

from .lightning.resumable import ResumableDataLoader

__all__ = ["ResumableDataLoader"]
