"""Where the README has always said the MLflow logger is: see :mod:`.lightning.logger`."""

from .lightning.logger import kiwi_logger, logger_class, mlflow_logger, mlflow_logger_class

__all__ = ["kiwi_logger", "logger_class", "mlflow_logger", "mlflow_logger_class"]
