"""Benchmark: blob upload (hashing included) against `sha256sum` on the same 2 GB file.

deploykit's client hashes a file in one streaming pass, checks HEAD /api/blobs/<digest>, then
streams the body in 1 MiB chunks. This runs it against a trivial local sink (a loopback HTTP
server that discards the body: not the test server) and compares with `sha256sum` alone.

Targets: peak RSS stays flat (< 100 MB over the client's baseline, i.e. the same process
before uploading), and the whole upload takes at most 2x the time of `sha256sum`.
Prints the ratios last; exits 1 on a miss; writes BENCHMARKS.md's section.

    .venv/bin/python -m bench.ollama_upload [--size-gb 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.report import machine, measure, write_section

UPLOAD = """
import resource, sys, time
from deploykit.ollama.client import Client
path, host = sys.argv[1], sys.argv[2]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.monotonic()
with Client(host) as c:
    digest, sent = c.upload_blob(path)
print(base * 1024, time.monotonic() - t, sent)
"""


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            left -= len(self.rfile.read(min(1 << 20, left)))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=2.0)
    args = ap.parse_args()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{httpd.server_address[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        blob = Path(tmp) / "blob.bin"
        with open(blob, "wb") as fh:  # random-ish content without holding it in memory
            block = os.urandom(1 << 20)
            for _ in range(int(args.size_gb * 1024)):
                fh.write(block)
        size = blob.stat().st_size
        subprocess.run(["cat", str(blob)], stdout=subprocess.DEVNULL, check=True)  # warm cache
        t = time.monotonic()
        subprocess.run(["sha256sum", str(blob)], stdout=subprocess.DEVNULL, check=True)
        sha_seconds = time.monotonic() - t
        run = measure([sys.executable, "-c", UPLOAD, str(blob), host])
    httpd.shutdown()
    if run.returncode != 0:
        raise SystemExit(run.output[-2000:])
    line = next(ln for ln in run.output.splitlines() if ln.endswith((" True", " False")))
    baseline, seconds, _sent = line.split()
    baseline, seconds = int(baseline), float(seconds)
    growth = run.max_rss - baseline
    ratio = seconds / sha_seconds
    checks = {"RSS growth < 100 MB": growth < 100e6, "time <= 2x sha256sum": ratio <= 2.0}
    body = "\n".join(
        [
            "## Blob upload: deploykit's Ollama client vs sha256sum (issue 6)",
            "",
            f"{size / 1e9:.2f} GB file, uploaded to a loopback sink that discards the body; the "
            f"upload includes hashing it. Machine: {machine()}.",
            "",
            "    .venv/bin/python -m bench.ollama_upload",
            "",
            "| what | wall | peak RSS |",
            "|---|---|---|",
            f"| sha256sum | {sha_seconds:.2f} s | |",
            f"| deploykit upload_blob (hash + HEAD + POST) | {seconds:.2f} s | "
            f"{run.max_rss / 1e6:.0f} MB ({growth / 1e6:+.0f} MB over its {baseline / 1e6:.0f} MB "
            "baseline) |",
            "",
            f"Ratios: time {ratio:.2f}x sha256sum (target <= 2), RSS growth {growth / 1e6:.0f} MB "
            "(target < 100 MB).",
            "",
            "Targets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in checks.items()),
        ]
    )
    write_section("ollama_upload", body)
    print(body)
    print(f"\nratios: time {ratio:.2f}x sha256sum (<= 2), RSS growth {growth / 1e6:.0f} MB (< 100)")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
