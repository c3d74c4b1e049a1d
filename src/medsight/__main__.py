"""``python -m medsight`` (and ``torchrun --nproc-per-node N -m medsight train ...``): the command line."""

import sys

from medsight.cli import main

sys.exit(main())
