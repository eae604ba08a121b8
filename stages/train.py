"""DVC stage `train`: read params.yaml, train, log to MLflow, write metrics.json and plots/."""

import logging
import os
import sys

from kiwi_pipe_optim.integrations.stage import main

if __name__ == "__main__":
    code = main()
    # The outputs and the MLflow run are final here. Python's teardown of torch, Lightning and
    # MLflow takes seconds, and a kill -9 during it would make DVC see a failed stage and train
    # again: leave without it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
