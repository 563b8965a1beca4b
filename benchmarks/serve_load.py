"""`cxrvlp serve` under load: concurrent clients posting a radiograph to /v1/analyze, with the
micro-batcher on and off, on the CPU.

Run: .venv/bin/python benchmarks/serve_load.py [--clients 1,4,16] [--seconds 20] [--threads 2]
     [--model BUNDLE] [--max-batch 16] [--max-wait-ms 20] [--request-timeout 60] [--json OUT]
Without --model a tiny gkmvlp-tiny bundle with random weights (a WordPiece tokenizer trained on
a few sentences) is written to a temporary folder, removed at the end; the time does not depend
on the weights. For each configuration, batching on (``--max-batch 16 --max-wait-ms 20``) and
off (``--max-batch 1``), one server subprocess (``cxrvlp serve`` on a free loopback port, torch
threads ``--threads``) is started, answers one warm-up request, then for each client count N:
N threads, each with its own connection, post the same synthetic 256 x 256 chest-like PNG in a
loop for ``--seconds`` (each request bounded by ``--request-timeout``). Each row: requests sent,
200 responses per second over the row's wall time, p50 / p95 / p99 latency of the 200 responses
(ms), errors (non-200 responses and exceptions) and the mean images per model pass (the
``cxrvlp_batch_size{kind="analyze"}`` histogram's _sum / _count deltas over the row). The
clients share the machine with the server: on a small CPU they take some of its time.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

IMAGE_SIDE = 256
STARTUP_TIMEOUT_S = 180.0  # bundle load and first import of torch in the server
STOP_TIMEOUT_S = 15.0  # after SIGTERM, before SIGKILL
BATCH_METRIC = "cxrvlp_batch_size"
TOKENIZER_TEXTS = [
    "there is pleural effusion. no pneumothorax. heart size normal.",
    "the lungs are clear. no focal consolidation. the cardiac silhouette is enlarged.",
    "small left pleural effusion with basilar atelectasis. no edema.",
]


def radiograph_png() -> bytes:
    """A fixed 256 x 256 frontal chest-like picture: dark lungs, bright mediastinum and ribs."""
    size = IMAGE_SIDE
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.55 + 0.15 * y  # soft tissue, brighter towards the abdomen
    for centre in (0.3, 0.7):  # the two lung fields, dark
        lung = ((x - centre) / 0.17) ** 2 + ((y - 0.45) / 0.32) ** 2 < 1.0
        image = np.where(lung, image - 0.35, image)
    ribs = (np.sin(y * 2 * np.pi * 9 + np.abs(x - 0.5) * 6) > 0.6) & (y < 0.75)
    image = image + 0.08 * ribs
    mediastinum = np.exp(-(((x - 0.5) / 0.07) ** 2)) * (y > 0.15)
    heart = ((x - 0.55) / 0.16) ** 2 + ((y - 0.62) / 0.13) ** 2 < 1.0
    image = image + 0.3 * mediastinum + 0.25 * heart
    image = image + np.random.default_rng(0).normal(0.0, 0.02, image.shape)
    pixels = (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_bundle(folder: Path) -> Path:
    """A gkmvlp-tiny bundle with random weights, as a fresh export has it."""
    from cxrvlp.bundle import write_bundle
    from cxrvlp.engine.seeding import seed_everything
    from cxrvlp.models.registry import create_model
    from cxrvlp.text.tokenizer import load_tokenizer, train_wordpiece

    seed_everything(0)
    tokenizer = load_tokenizer(
        train_wordpiece(TOKENIZER_TEXTS * 20, folder / "tokenizer", vocab_size=200, min_frequency=1)
    )
    model = create_model("gkmvlp-tiny", vocab_size=len(tokenizer))
    info = {"model_name": "gkmvlp-tiny"}
    return write_bundle(folder / "model", model.config, tokenizer, info, model)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command() -> list[str]:
    return [sys.executable, "-m", "cxrvlp.cli", "serve"]


class Server:
    """One `cxrvlp serve` subprocess on a loopback port; always stopped on leaving the block."""

    def __init__(self, model: Path, threads: int, max_batch: int, max_wait_ms: float, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.command = [
            *serve_command(),
            "--model", str(model), "--host", "127.0.0.1", "--port", str(self.port),
            "--threads", str(threads), "--max-batch", str(max_batch),
            "--max-wait-ms", str(max_wait_ms),
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(
            f"the server was not ready in {STARTUP_TIMEOUT_S:.0f} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def batch_totals(self) -> tuple[float, float]:
        """(images, model passes) of /v1/analyze so far: the batch-size histogram's sum, count."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=10.0).text
        totals = {"_sum": 0.0, "_count": 0.0}
        for family in text_string_to_metric_families(text):
            if family.name != BATCH_METRIC:
                continue
            for sample in family.samples:
                suffix = sample.name.removeprefix(BATCH_METRIC)
                if suffix in totals and sample.labels.get("kind") == "analyze":
                    totals[suffix] += sample.value
        return totals["_sum"], totals["_count"]


def post(client: httpx.Client, url: str, png: bytes) -> int:
    files = {"image": ("radiograph.png", png, "image/png")}
    return client.post(f"{url}/v1/analyze", files=files).status_code


def client_loop(url: str, png: bytes, deadline: float, timeout: float, out: list) -> None:
    """Post until the deadline; ``out`` gets (latency s, status or exception name) each."""
    with httpx.Client(timeout=timeout) as client:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                status: int | str = post(client, url, png)
            except Exception as error:  # a timeout or a dropped connection counts as an error
                status = type(error).__name__
            out.append((time.perf_counter() - start, status))


def load_row(server: Server, png: bytes, clients: int, seconds: float, timeout: float) -> dict:
    images_before, passes_before = server.batch_totals()
    results: list[list] = [[] for _ in range(clients)]
    start = time.perf_counter()
    deadline = start + seconds
    threads = [
        threading.Thread(target=client_loop, args=(server.url, png, deadline, timeout, out))
        for out in results
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    images_after, passes_after = server.batch_totals()
    records = [record for out in results for record in out]
    ok_ms = np.array([latency * 1000.0 for latency, status in records if status == 200])
    errors = Counter(str(status) for _, status in records if status != 200)
    passes = passes_after - passes_before
    p50, p95, p99 = np.percentile(ok_ms, [50, 95, 99]) if len(ok_ms) else (np.nan,) * 3
    return {
        "clients": clients,
        "requests": len(records),
        "ok": len(ok_ms),
        "wall_s": wall,
        "requests_per_s": len(ok_ms) / wall,
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "mean_batch": (images_after - images_before) / passes if passes else float("nan"),
    }


def measure(args: argparse.Namespace, model: Path, scratch: Path) -> list[dict]:
    png = radiograph_png()
    configurations = (
        ("on", args.max_batch, args.max_wait_ms),
        ("off", 1, 0.0),
    )
    rows = []
    for batching, max_batch, max_wait_ms in configurations:
        log = scratch / f"server-{batching}.log"
        with Server(model, args.threads, max_batch, max_wait_ms, log) as server:
            with httpx.Client(timeout=args.request_timeout) as client:
                status = post(client, server.url, png)  # warm-up: first-call dispatch, caches
            if status != 200:
                raise RuntimeError(f"the warm-up request got {status}:\n{server.log_tail()}")
            for clients in args.clients:
                row = load_row(server, png, clients, args.seconds, args.request_timeout)
                row.update(batching=batching, max_batch=max_batch, max_wait_ms=max_wait_ms)
                rows.append(row)
                print(
                    f"  batching {batching:<3} {clients:>3} clients: {row['requests']} requests,"
                    f" {row['errors']} errors",
                    flush=True,
                )
    return sorted(rows, key=lambda r: (r["clients"], r["batching"] != "on"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="bundle to serve (default: a tiny one)")
    parser.add_argument(
        "--clients",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 4, 16],
        help="concurrent client counts, comma-separated",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="load time per row")
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    parser.add_argument("--max-batch", type=int, default=16, help="images per pass, batching on")
    parser.add_argument("--max-wait-ms", type=float, default=20.0, help="batch wait, batching on")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds a request")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the rows here")
    args = parser.parse_args()
    start = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="cxrvlp-serve-load-"))
    try:
        model = args.model if args.model is not None else tiny_bundle(scratch)
        rows = measure(args, model, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"cxrvlp serve, POST /v1/analyze ({IMAGE_SIDE} x {IMAGE_SIDE} PNG), "
        f"{args.seconds:g} s a row, {args.threads} server threads, model "
        f"{args.model or 'gkmvlp-tiny (random weights)'}; batching on: --max-batch "
        f"{args.max_batch} --max-wait-ms {args.max_wait_ms:g}, off: --max-batch 1"
    )
    print(
        f"{'clients':>7}{'batching':>10}{'requests':>10}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'p99 ms':>9}{'errors':>8}{'mean batch':>12}"
    )
    for r in rows:
        print(
            f"{r['clients']:>7}{r['batching']:>10}{r['requests']:>10}{r['requests_per_s']:>8.2f}"
            f"{r['p50_ms']:>9.0f}{r['p95_ms']:>9.0f}{r['p99_ms']:>9.0f}{r['errors']:>8}"
            f"{r['mean_batch']:>12.2f}"
        )
        if r["error_kinds"]:
            print(f"{'':>17}errors: {r['error_kinds']}")
    print(f"wall time {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
            if key != "json"
        }
        args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
