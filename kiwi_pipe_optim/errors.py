"""One error family for everything a user can get wrong in a params file.

Every problem carries the dotted path of the field (``optimizer.learning_rate``) so a message can
be traced back to the line of ``params.yaml`` that caused it, and all problems of one file are
reported together instead of one per run.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one field: ``path: message``."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass(frozen=True)
class Finding:
    """Something validation or lint noticed: an ``error`` stops the run, a ``warning`` is safe to
    ignore. Every finding travels one way (returned, then printed or logged once by the caller),
    so a user sees it exactly once."""

    level: str  # "error" or "warning"
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.level}: {self.path}: {self.message}"

    def located(self, source: str | None, lines: dict[str, int] | None = None) -> str:
        """``file:line: level: path: message`` where the file (and the key's line) is known."""
        line = self.line or _nearest_line(self.path, lines or {})
        if not source or self.path.isupper():
            return str(self)
        return f"{source}:{line}: {self}" if line else f"{source}: {self}"

    @classmethod
    def errors(cls, problems: Iterable[Problem]) -> list["Finding"]:
        return [cls("error", p.path, p.message, p.line) for p in problems]


class ConfigError(ValueError):
    """Raised when a config cannot be used; ``problems`` lists every field at fault.

    ``str(error)`` is one line per problem, each ``dotted.path: what is wrong; what is allowed``,
    prefixed by ``file:line:`` when the file is known.
    """

    def __init__(self, problems: Problem | Sequence[Problem], source: str | None = None):
        if isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        lines = []
        for problem in self.problems:
            prefix = ""
            if self.source and not problem.path.isupper():  # an environment variable is not in the file
                prefix = f"{self.source}:{problem.line}: " if problem.line else f"{self.source}: "
            lines.append(prefix + str(problem))
        return "\n".join(lines)

    def with_source(self, source: str, lines: dict[str, int] | None = None) -> "ConfigError":
        """The same problems, located in ``source`` (and at their lines, where known)."""
        lines = lines or {}
        located = [
            Problem(p.path, p.message, p.line or _nearest_line(p.path, lines)) for p in self.problems
        ]
        return ConfigError(located, source=source)


def _nearest_line(path: str, lines: dict[str, int]) -> int | None:
    # A problem on a missing key is best shown at its parent section.
    while path:
        if path in lines:
            return lines[path]
        path = path.rpartition(".")[0]
    return None


def show(value: Any) -> str:
    """A value as a user wrote it, short enough for a one-line message."""
    text = f"'{value}'" if isinstance(value, str) else repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        text = str(value)  # nan, inf, -inf
    return text if len(text) <= 200 else text[:197] + "..."


def choices(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def did_you_mean(name: object, names: Iterable[str]) -> str:
    """`` (did you mean 'adam'?)`` when a close spelling exists, else ``''``."""
    close = difflib.get_close_matches(str(name), list(names), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
