"""What the recorder and the stage expect of a logger beyond Lightning's ``Logger``: typed, so a
logger of the user's may take part too, and checked with ``isinstance``, not found by name."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class RowLogger(Protocol):
    """Takes one step's values as parallel tuples (no dict built per step)."""

    def log_row(self, keys: tuple[str, ...], values: list[Any], step: int) -> None: ...


@runtime_checkable
class StepAwareLogger(Protocol):
    """Wants to know how many optimizer steps the run will take (``None``: unknown)."""

    def expect_steps(self, steps: int | None) -> None: ...


@runtime_checkable
class JournalingLogger(Protocol):
    """Journals what it buffered on demand, and says the journal's length (what a checkpoint keeps)."""

    def persist(self) -> int: ...


@runtime_checkable
class StatefulLoader(Protocol):
    """A train loader Lightning saves and restores the position of (torchdata's
    ``StatefulDataLoader``, :class:`.resumable.ResumableDataLoader`)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class ConsumptionAware(Protocol):
    """A train loader told, at a save, how many of the epoch's batches were trained on."""

    def mark_consumed(self, batches: int) -> None: ...
