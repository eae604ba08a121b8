"""DVC stage `train` of this repository: what `kiwi-optim train` runs, as a script."""

import sys

from kiwi_pipe_optim.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
