"""A stage's MLflow run ends as KILLED even when its process is SIGKILLed: nothing in a killed process can
run, so a small process started with the run waits on a pipe that only the stage holds. A stage that ends
writes "done" before the pipe closes; when the pipe closes without it, the stage died, and the watcher
ends the run. Nothing heavy is imported until then.

Usage (tracking.stage_run starts it): python -m impactx.watchdog TRACKING_URI RUN_ID, stdin the pipe."""

from __future__ import annotations

import os
import sys


def main(uri: str, run_id: str) -> None:
    said = b""
    while chunk := sys.stdin.buffer.read(64):  # blocks until the stage writes or its last fd closes
        said += chunk
    if said.endswith(b"done"):
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, "impactx.ended_by", "the watchdog: the stage's process died")
        client.set_terminated(run_id, "KILLED")


if __name__ == "__main__":
    main(*sys.argv[1:3])
