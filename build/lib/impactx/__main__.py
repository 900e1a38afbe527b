"""`python -m impactx`: the `impactx` command (impactx.cli)."""

import sys

from impactx.cli import main

sys.exit(main())
