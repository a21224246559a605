"""Memory of one callback attempt against a bot whose error answer is 200 MB (issue 11.6).

A loopback server answers `500` with a 200 MB body. Each client runs in a fresh process and
reports its peak RSS before and after one attempt: `new` is the delivery client
(marketplace.callback_http, the body read up to CALLBACK_MAX_RESPONSE_BYTES), `old` is what
delivery did before (requests, `response.text[:200]`).

    .venv/bin/python bench/callback_memory.py [--megabytes 200]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def serve(megabytes: int) -> ThreadingHTTPServer:
    size = megabytes * 1024 * 1024

    class Huge(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(500)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = b"e" * 65536
            try:
                for _ in range(size // len(chunk)):
                    self.wfile.write(chunk)
            except OSError:
                pass

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def client(kind: str, url: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["CALLBACK_ALLOWED_NETWORKS"] = "127.0.0.0/8"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import requests

    from marketplace import callback_http

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    if kind == "new":
        destination = callback_http.resolve(url, timeout=10)
        answer = callback_http.post(
            destination, b"{}", {"Content-Type": "application/json"}, deadline=time.monotonic() + 60
        )
        status, kept = answer.status, len(answer.body_head)
    else:
        response = requests.post(url, data=b"{}", timeout=60, allow_redirects=False)
        status, kept = response.status_code, len(response.text[:200])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"{kind}: HTTP {status}, kept {kept} bytes, {time.monotonic() - started:.2f} s, "
        f"peak RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB (+{(after - before) / 1024:.0f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--client", choices=["new", "old"])
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.client:
        client(args.client, args.url)
        return
    server = serve(args.megabytes)
    url = f"http://127.0.0.1:{server.server_address[1]}/cb"
    for kind in ("new", "old"):
        subprocess.run([sys.executable, __file__, "--client", kind, "--url", url], cwd=ROOT, check=True)
    server.shutdown()


if __name__ == "__main__":
    main()
