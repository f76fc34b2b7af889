"""`python -m prolong` is the `prolong` command (torchrun launches it this way)."""

import sys

from prolong.cli import main

sys.exit(main())
