"""MLflow, and nothing of Lightning: the store, the journal of logged values, the transport to
MLflow, the run and its lifecycle, the sender process, the spool, the comparison of runs."""

