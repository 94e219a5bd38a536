"""``python -m s4s`` (and ``torchrun --nproc-per-node K -m s4s ...``): the command line."""

import sys

from s4s.cli import main

sys.exit(main())
