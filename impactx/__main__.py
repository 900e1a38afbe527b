"""`python -m impactx`: the `impactx` command (impactx.console)."""

import sys

from impactx.console import main

sys.exit(main())
