"""Train, evaluate and compare RL trading agents: ``python train.py --help`` (see agents/cli.py)."""

import sys

from agents.cli import main

if __name__ == "__main__":
    sys.exit(main())
