"""DVC stage `train`: read params.yaml, train, log to MLflow, write metrics.json and plots/."""

import sys

from kiwi_pipe_optim.integrations.stage import main

if __name__ == "__main__":
    sys.exit(main())
