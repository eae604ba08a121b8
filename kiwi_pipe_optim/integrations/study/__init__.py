"""Optuna studies as the stage and the sweep share them: the storage every process opens by the
same address, the pruner a study records, and the trial a stage runs as (:mod:`.trial`).
Nothing here imports Lightning, MLflow or DVC."""
