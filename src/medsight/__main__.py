"""``python -m medsight`` (and ``torchrun --nproc-per-node N -m medsight train ...``): the command line."""

import os
import sys

from medsight.cli import main

code = main()
distributed = sys.modules.get("medsight.engine.distributed")
if distributed is not None and distributed.left_group:
    # One of torchrun's processes, its work done and written, its process group left: end here.
    # The gloo group's threads can still abort the interpreter's shutdown ("terminate called
    # without an active exception", exit -6 after a finished run), which torchrun reports as a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
