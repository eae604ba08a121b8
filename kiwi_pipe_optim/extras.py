"""Which optional install an edge of the package needs, said in one line before it fails deep inside.

``pip install kiwi-pipe-optim`` is the core (torch, pydantic, pyyaml); the Lightning, MLflow and
DVC edges come with extras. Finding a module's spec costs no import, so the check is cheap.
"""

from __future__ import annotations

import importlib.util

EXTRAS = {
    "lightning": (("lightning", "pytorch_lightning"),),
    "mlflow": (("mlflow",), ("filelock",)),
    "stage": (("lightning", "pytorch_lightning"), ("mlflow",), ("filelock",), ("dvc",), ("matplotlib",), ("rich",)),
}
EXTRAS["sweep"] = (*EXTRAS["stage"], ("optuna",))


class MissingExtra(ImportError):
    """An edge of the package was used without the extra that installs its dependencies."""


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` naming ``extra`` when a module it installs is missing.

    Each entry of :data:`EXTRAS` is satisfied by any one of its names (Lightning under either of
    its import names).
    """
    for names in EXTRAS[extra]:
        if not any(_found(name) for name in names):
            raise MissingExtra(
                f"{what} needs {' or '.join(names)}, which is not installed: "
                f"pip install 'kiwi-pipe-optim[{extra}]'")


def require_module(name: str, extra: str, what: str) -> None:
    """:func:`require` for one module of an extra (matplotlib for a plot, rich for a table)."""
    if not _found(name):
        raise MissingExtra(f"{what} needs {name}, which is not installed: pip install 'kiwi-pipe-optim[{extra}]'")


def _found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
