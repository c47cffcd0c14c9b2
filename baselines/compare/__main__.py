"""`python -m baselines.compare` (see `baselines.compare.cli`)."""

import sys

from .cli import main

sys.exit(main())
