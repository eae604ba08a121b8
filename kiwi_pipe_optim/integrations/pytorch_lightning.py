"""``KiwiMLflowLogger`` and ``KiwiLRMonitor`` under the ``pytorch_lightning`` import name, the
class paths LightningCLI takes for a project on ``pytorch_lightning.cli.LightningCLI``; see
:mod:`.lightning.logger`. Importing this module loads ``pytorch_lightning``."""

from .lightning import cli_classes

KiwiMLflowLogger, KiwiLRMonitor = cli_classes("pytorch_lightning")

__all__ = ["KiwiLRMonitor", "KiwiMLflowLogger"]
