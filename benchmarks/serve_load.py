"""A bounded load test of `fgir serve` on 127.0.0.1: N client threads upload pictures for T seconds.

    .venv/bin/python benchmarks/serve_load.py --clients 8 --seconds 30 --concurrency 1 --out load.json
    .venv/bin/python benchmarks/serve_load.py --checkpoint runs/cub-glsim --clients 8 --seconds 30

The server is the real `fgir serve` in its own process, on a free port, serving `--checkpoint` or
a checkpoint built here with random weights (`--model vit-tiny`: GLSim on ViT-Ti/16 at 224 px, 200
classes; `--model tiny`: GLSim on a 2-block ViT at 32 px, for the test suite). Each client is a
gradio_client talking to the page's `/recognise` endpoint as the browser does: upload a photo-like
JPEG, wait for the answer, download its two maps. All clients first run for `--warmup` seconds
(untimed), then for `--seconds` (timed). Everything is bounded: each request by `--request-timeout`,
each client by the deadline and `--max-requests`, the server's start by `--start-timeout`; the
server is stopped at the end whatever happens.

Printed (and written to `--out`) as JSON: requests, failures (and the first few messages), median
and p95 latency, requests per second, and the server's resident memory (RSS) after the warm-up
and after the timed run, with the growth between them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from gradio_client import Client, handle_file
from suite import photo_like_jpeg

from fgir.config import Config, DataConfig, model_config
from fgir.engine.checkpoint import save_checkpoint
from fgir.fileio import atomic_write_text
from fgir.methods import build_model

MODELS = {
    "vit-tiny": dict(image_size=224, num_classes=200, backbone_args={}),
    "tiny": dict(image_size=32, num_classes=6, backbone_args={"patch_size": 8, "embed_dim": 32, "depth": 2,
                                                               "num_heads": 2}),
}
PHOTO_SIZES = ((800, 600), (640, 480), (1024, 768), (600, 800))
KEPT_FAILURES = 5


def build_checkpoint(folder: Path, model: str) -> Path:
    """A GLSim checkpoint with random weights of the `MODELS[model]` shape."""
    spec = MODELS[model]
    data = DataConfig(name="load", format="csv", root=str(folder / "no-dataset"), num_classes=spec["num_classes"],
                      image_size=spec["image_size"])
    config = Config(data=data, model=model_config("glsim", backbone="vit_tiny_patch16_224", pretrained=False,
                                                  backbone_args=spec["backbone_args"]))
    torch.manual_seed(0)
    network = build_model(config.model, data.num_classes, data.image_size, pretrained=False).eval()
    names = [f"class {i:03d}" for i in range(data.num_classes)]
    return save_checkpoint(folder / f"{model}.safetensors", network, config, names, epoch=1, global_step=1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(checkpoint: Path, port: int, concurrency: int, timeout: float, folder: Path) -> subprocess.Popen:
    """`fgir serve` in its own process, returned once its page answers; its output goes to
    `folder/server.log`, Gradio's copies of uploads and answers under `folder/gradio`."""
    command = [sys.executable, "-m", "fgir.cli", "serve", str(checkpoint), "--port", str(port), "--device", "cpu",
               "--concurrency", str(concurrency)]
    log = folder / "server.log"
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                  env={**os.environ, "GRADIO_TEMP_DIR": str(folder / "gradio")})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"fgir serve exited with status {server.returncode} before answering:\n"
                               f"{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return server
        except OSError:
            time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"fgir serve did not answer within {timeout:.0f} s")


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@dataclass
class Tally:
    """What the clients saw in one phase; appended to from every client thread."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    messages: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, seconds: float, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.latencies.append(seconds)
                return
            self.failures += 1
            if len(self.messages) < KEPT_FAILURES:
                self.messages.append(error)


def recognise(client: Client, photo: Path, timeout: float) -> str | None:
    """One upload and its answer; None if it is a full answer, else what went wrong."""
    try:
        job = client.submit(handle_file(str(photo)), api_name="/recognise")
        _, top, heat_map, crop = job.result(timeout=timeout)
    except Exception as err:  # any failure counts; the load test must not stop at the first
        return f"{type(err).__name__}: {err}"
    if len(top.get("confidences") or []) != 5 or not (heat_map and crop):
        return f"incomplete answer: {top}"
    return None


def run_clients(clients: list[Client], photos: list[Path], seconds: float, max_requests: int,
                timeout: float) -> Tally:
    """Every client uploads photos in turn until `seconds` have passed or it made `max_requests`."""
    tally, deadline = Tally(), time.monotonic() + seconds

    def work(index: int) -> None:
        for request in range(max_requests):
            if time.monotonic() >= deadline:
                return
            start = time.perf_counter()
            error = recognise(clients[index], photos[(index + request) % len(photos)], timeout)
            tally.record(time.perf_counter() - start, error)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout + 10)  # a request still running at the deadline may take its timeout
    return tally


def rss_mb(process: subprocess.Popen) -> float:
    return psutil.Process(process.pid).memory_info().rss / 2**20


def load_test(clients: int = 8, seconds: float = 30, warmup: float = 5, concurrency: int = 1,
              checkpoint: str | os.PathLike | None = None, model: str = "vit-tiny", max_requests: int = 10_000,
              request_timeout: float = 60, start_timeout: float = 120, workdir: str | os.PathLike | None = None) -> dict:
    """Start the server, warm it up, load it, stop it; the figures as a dict (see the module docstring)."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(workdir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        photos = []
        for index, size in enumerate(PHOTO_SIZES):
            photos.append(folder / f"photo{index}.jpg")
            photos[-1].write_bytes(photo_like_jpeg(size, seed=index))
        path = Path(checkpoint) if checkpoint else build_checkpoint(folder, model)
        port = free_port()
        server = start_server(path, port, concurrency, start_timeout, folder)
        try:
            sessions = [Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(folder / "answers"))
                        for _ in range(clients)]
            warm = run_clients(sessions, photos, warmup, max_requests, request_timeout)
            rss_warm = rss_mb(server)
            timed = run_clients(sessions, photos, seconds, max_requests, request_timeout)
            rss_after = rss_mb(server)
            for session in sessions:
                session.close()
        finally:
            stop_server(server)
    latencies = timed.latencies or [float("nan")] * 2
    return {
        "checkpoint": str(checkpoint) if checkpoint else f"built: {model}",
        "clients": clients, "seconds": seconds, "warmup_seconds": warmup, "concurrency": concurrency,
        "warmup_requests": len(warm.latencies) + warm.failures, "warmup_failures": warm.failures,
        "requests": len(timed.latencies) + timed.failures, "failures": timed.failures,
        "failure_messages": warm.messages + timed.messages,
        "requests_per_s": round(len(timed.latencies) / seconds, 2),
        "latency_ms": {"median": round(1000 * statistics.median(latencies), 1),
                       "p95": round(1000 * statistics.quantiles(latencies, n=20, method="inclusive")[-1], 1),
                       "max": round(1000 * max(latencies), 1)},
        "rss_mb": {"after_warmup": round(rss_warm, 1), "after": round(rss_after, 1),
                   "growth": round((rss_after - rss_warm) / rss_warm, 4)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--seconds", type=float, default=30, help="timed run (default 30)")
    parser.add_argument("--warmup", type=float, default=5, help="untimed run before it (default 5)")
    parser.add_argument("--concurrency", type=int, default=1, help="fgir serve --concurrency (default 1)")
    parser.add_argument("--checkpoint", help="serve this instead of a checkpoint built here")
    parser.add_argument("--model", choices=sorted(MODELS), default="vit-tiny", help="the checkpoint built here")
    parser.add_argument("--max-requests", type=int, default=10_000, help="per client and phase (default 10000)")
    parser.add_argument("--request-timeout", type=float, default=60, help="seconds (default 60)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    result = load_test(args.clients, args.seconds, args.warmup, args.concurrency, args.checkpoint, args.model,
                       args.max_requests, args.request_timeout)
    text = json.dumps(result, indent=1)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0 if result["failures"] == 0 and result["warmup_failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
