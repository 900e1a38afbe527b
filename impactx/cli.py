"""Shared entry-point plumbing for the stages: bad input is one line on stderr and exit code 2.

Exit code 2 tells an orchestrator (flows/pipeline.py) not to retry: the same input fails the same way."""

from __future__ import annotations

import sys

from impactx import ImpactXError

BAD_INPUT = 2


def run_stage(main) -> None:
    try:
        main()
    except ImpactXError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(BAD_INPUT)
