"""``masksub-train`` / ``python -m masksub_kernels.train``: the entry point; the command is training/cli.py (the
options, the run) and training/run_setup.py (checks and set-up). Kept here so that the console script
(``masksub_kernels.train:main``), ``-m masksub_kernels.train`` and imports from this module keep working."""

import sys

from .training.cli import PROG, UsageError, build_parser, main, parse_kwargs

__all__ = ["PROG", "UsageError", "build_parser", "main", "parse_kwargs"]

if __name__ == "__main__":
    sys.exit(main())
