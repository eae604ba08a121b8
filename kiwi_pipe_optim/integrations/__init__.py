"""Glue to the tools around the core: Lightning, MLflow and the DVC stage. Imported on demand."""
