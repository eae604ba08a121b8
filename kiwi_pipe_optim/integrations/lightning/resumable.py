"""A DataLoader that a checkpoint taken mid-epoch can resume exactly.

Lightning saves and restores a train loader that has ``state_dict``/``load_state_dict``, but
leaves it to the loader to continue where it stopped. A shuffling loader's order depends on its
generator's state at the start of the epoch, and a resumed run must also leave out the batches
the checkpointed run had already trained on; otherwise the curves after a resume differ from an
uninterrupted run's.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch is part of Lightning's checkpoint.

    The stage's checkpoint callback tells it how many batches of the epoch were trained on
    (:meth:`mark_consumed`) before it saves; resuming rewinds the shuffle generator to the start
    of that epoch and skips those batches. Takes exactly ``DataLoader``'s arguments.

    Example:
        >>> data = torch.utils.data.TensorDataset(torch.arange(10.0))
        >>> loader = ResumableDataLoader(data, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(0))
        >>> it = iter(loader); first = [next(it), next(it)]
        >>> loader.mark_consumed(2); state = loader.state_dict()
        >>> again = ResumableDataLoader(data, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(0))
        >>> again.load_state_dict(state)
        >>> [b[0].tolist() for b in again] == [b[0].tolist() for b in list(it)]
        True
    """

    _kiwi_epoch_start: torch.Tensor | None = None
    _kiwi_consumed = 0
    _kiwi_resume: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        skip = 0
        if self._kiwi_resume is not None:
            if self.generator is not None and self._kiwi_resume.get("generator") is not None:
                self.generator.set_state(self._kiwi_resume["generator"])
            skip = int(self._kiwi_resume.get("skip", 0))
            self._kiwi_resume = None
        self._kiwi_epoch_start = None if self.generator is None else self.generator.get_state().clone()
        self._kiwi_consumed = 0
        iterator = super().__iter__()
        for _ in range(skip):
            next(iterator)
        return iterator

    def mark_consumed(self, batches: int) -> None:
        """Record that ``batches`` batches of the current epoch have been trained on."""
        self._kiwi_consumed = int(batches)

    def state_dict(self) -> dict[str, Any]:
        finished = self._kiwi_consumed >= len(self)
        if finished or self._kiwi_epoch_start is None:
            # The next epoch starts from the generator as it is now.
            generator = None if self.generator is None else self.generator.get_state().clone()
            return {"generator": generator, "skip": 0 if finished else self._kiwi_consumed}
        return {"generator": self._kiwi_epoch_start, "skip": self._kiwi_consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._kiwi_resume = dict(state)
