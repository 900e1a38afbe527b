"""The served model under load: `mlflow models serve` of a registered IMPACTX (LeNet-5, seeded random weights,
3×32×32 images, 10 classes) on 127.0.0.1, sent --requests requests of --images images each, --concurrency at a
time, once with the maps in the answer (the default) and once with params {"explain": false}. Prints, for each,
p50/p95/max latency and images/s, against the same batch predicted in-process by the loaded pyfunc with the same
params (the baseline, measured in this run): the ratio is what HTTP, JSON and the server add. Example:

    python benchmarks/serving.py --requests 300 --concurrency 4 --images 8 --out studies/results/benchmark_serving.json
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import torch

from impactx import methods, serving, tracking
from impactx.data import DatasetInfo
from impactx.methods import Stage1
from impactx.params import parse_params
from impactx.study import machine, report_benchmark

NAME = "bench-lenet5-impactx"


def register(root: Path, params, info: DatasetInfo) -> None:
    """A seeded random IMPACTX, logged and registered as version 1 of NAME in root's store."""
    torch.manual_seed(0)
    base, imp = root / "baseline.pt", root / "impactx.pt"
    methods.save(base, "baseline", params.baseline, methods.build("baseline", Stage1(info, params.model), params))
    model = methods.build("impactx", Stage1(info, params.model, base), params)
    methods.save(imp, "impactx", methods.get("impactx").settings(params), model)
    tracking.setup(params)
    example = np.random.default_rng(0).random((2, *info.image_shape), dtype=np.float32)
    with tracking.stage_run("evaluate", params):
        tracking.log_model(imp, info, params.model, example, NAME)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_answer(url: str, data: bytes) -> bytes:
    """The body of one request's answer, which must be 200."""
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        answer = r.read()
        if r.status != 200:
            raise SystemExit(f"the server answered {r.status}")
    return answer


def post(url: str, data: bytes) -> float:
    """Seconds for one request that must answer 200."""
    t0 = time.perf_counter()
    post_answer(url, data)
    return time.perf_counter() - t0


def in_process(loaded, batch: np.ndarray, params: dict) -> float:
    """The median seconds of 50 in-process predictions of `batch` (after one warm-up)."""
    loaded.predict(batch, params=params)
    seconds = []
    for _ in range(50):
        t0 = time.perf_counter()
        loaded.predict(batch, params=params)
        seconds.append(time.perf_counter() - t0)
    return float(np.median(seconds))


def under_load(url: str, body: bytes, requests: int, concurrency: int) -> tuple[list[float], float]:
    """Each request's seconds and the wall seconds of `requests` requests, `concurrency` at a time."""
    for _ in range(5):
        post(url, body)  # warm-up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = list(pool.map(lambda _: post(url, body), range(requests)))
    return lat, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--images", type=int, default=8, help="images per request")
    ap.add_argument("--out", type=Path, help="also write the lines as a results JSON (studies/results/...)")
    args = ap.parse_args()
    host = {**machine(), "load_average_1min_before": os.getloadavg()[0]}
    info = DatasetInfo("random", [str(i) for i in range(10)], (3, 32, 32), [0.5] * 3, [0.25] * 3, {})
    batch = np.random.default_rng(1).integers(0, 256, (args.images, *info.image_shape)).astype(np.float32)
    settings = [{"pixels": "uint8"}, {"pixels": "uint8", "explain": False}]  # with the maps, without
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root}/mlflow.db"
        params = parse_params({"mlflow": {"tracking_uri": uri}, "impactx": {}})
        cwd = Path.cwd()
        os.chdir(root)  # the store's artifacts land in the temporary folder
        try:
            register(root, params, info)
            loaded = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
            base = [in_process(loaded, batch, p) for p in settings]
            port = free_port()
            env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
                   "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}  # fmt: skip
            cmd = ["mlflow", "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
                   "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
            server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            try:
                url = serving.wait_until_serving(port, server)
                for p, b in zip(settings, base, strict=True):
                    body = json.dumps({"inputs": batch.tolist(), "params": p}).encode()
                    lat, wall = under_load(url, body, args.requests, args.concurrency)
                    p50, p95 = (float(np.percentile(lat, q)) for q in (50, 95))
                    rows.append({
                        "maps": p.get("explain", True), "p50_s": round(p50, 4), "p95_s": round(p95, 4),
                        "max_s": round(max(lat), 4), "images_per_s": round(args.requests * args.images / wall, 1),
                        "answer_bytes": len(post_answer(url, body)),
                        "in_process_predict_p50_s": round(b, 4), "p50_vs_in_process": round(p50 / b, 2),
                    })  # fmt: skip
            finally:
                server.terminate()
                server.wait(timeout=30)
        finally:
            os.chdir(cwd)
    line = {"requests": args.requests, "concurrency": args.concurrency, "images_per_request": args.images,
            "threads": torch.get_num_threads(), "rows": rows}  # fmt: skip
    report_benchmark(line, host, args.out)


if __name__ == "__main__":
    main()
