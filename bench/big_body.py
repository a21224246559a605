"""What one large unauthenticated POST costs a real Daphne process in memory (issue 11.5).

Starts Daphne (production settings, on loopback), sends one warm-up request, then
POSTs a body of --mib MiB to the bot API twice, once with a Content-Length and once
chunked, and samples the server's resident memory (psutil) every 10 ms throughout.
Prints the status of each answer and the server's growth in RSS over its baseline.

    .venv/bin/python bench/big_body.py --mib 200
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MIB = 1024 * 1024
PIECE = b"x" * (64 * 1024)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PeakRss(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.01)

    def stop(self) -> int:
        self.running = False
        self.join()
        return self.peak


def body(size: int) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        piece = PIECE[: size - sent]
        sent += len(piece)
        yield piece


def post(port: int, size: int, *, chunked: bool) -> tuple[int | str, float]:
    """POST `size` bytes to the bot API without credentials; the status (or the error) and the seconds taken."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json"}
    if not chunked:
        headers["Content-Length"] = str(size)
    try:
        conn.request("POST", "/api/v1/escalations", body=body(size), headers=headers, encode_chunked=chunked)
        status: int | str = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        status = type(exc).__name__
    finally:
        conn.close()
    return status, time.monotonic() - started


def server_env(workdir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DEBUG="false",
        SECRET_KEY="bench-" + "x" * 40 + "-Zq8#y",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="false",
        DATABASE_URL=os.environ.get("DATABASE_URL", f"sqlite:///{workdir}/bench.sqlite3"),
        TASK_RUNNER="thread",
        RUN_PERIODIC_IN_PROCESS="false",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    return env


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("daphne exited")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("daphne did not answer /healthz")


def measure(size: int, *, chunked: bool) -> tuple[int | str, float, int, int]:
    """In a fresh Daphne: the answer, the seconds taken, the baseline RSS and the peak RSS."""
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir, open(Path(workdir) / "daphne.log", "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
            cwd=ROOT,
            env=server_env(workdir),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(port, proc)
            post(port, 1024, chunked=chunked)  # warm-up: the first request imports the views
            time.sleep(0.5)
            baseline = psutil.Process(proc.pid).memory_info().rss
            sampler = PeakRss(proc.pid)
            sampler.start()
            status, seconds = post(port, size, chunked=chunked)
            time.sleep(0.5)  # whatever the server still does with the body
            return status, seconds, baseline, sampler.stop()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=200, help="body size in MiB (default 200)")
    args = parser.parse_args()
    print(f"one unauthenticated POST of {args.mib} MiB to /api/v1/escalations, a fresh Daphne each")
    for chunked in (False, True):
        status, seconds, baseline, peak = measure(args.mib * MIB, chunked=chunked)
        kind = "chunked" if chunked else "Content-Length"
        print(
            f"{kind:>14}: answer {status} in {seconds:.1f} s; server RSS {baseline / MIB:.0f} MiB before, "
            f"peak {peak / MIB:.0f} MiB, growth {(peak - baseline) / MIB:.0f} MiB"
        )


if __name__ == "__main__":
    main()
