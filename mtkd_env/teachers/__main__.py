"""`python -m mtkd_env.teachers train|list` (see `mtkd_env.teachers.cli`)."""

import sys

from .cli import main

sys.exit(main())
