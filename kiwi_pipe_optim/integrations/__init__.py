"""Glue to the tools around the core, in three layers that import only downwards:
:mod:`.tracking` (MLflow) <- :mod:`.lightning` (any Trainer) <- :mod:`.stage` (the DVC stage).
Imported on demand: importing the package pulls in none of them.
"""
