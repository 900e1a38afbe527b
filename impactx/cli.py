"""Shared entry-point plumbing for the stages: one line on stderr and exit 1 for bad input."""

from __future__ import annotations

import sys

from impactx import ImpactXError


def run_stage(main) -> None:
    try:
        main()
    except ImpactXError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
