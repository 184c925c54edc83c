"""An HTTP proxy that injects object-storage faults, in front of the GCS emulator (tests and
`bench/storage.py`).

    proxy, url = fault_proxy.start(upstream="http://127.0.0.1:9023", seed=0)
    fault_proxy.configure(url, error_rate=0.1, statuses=(429, 503), reset_rate=0.02)
    fault_proxy.configure(url, outage_seconds=5)          # every request fails for 5 s
    fault_proxy.configure(url, deny_bucket="illada-test") # HTTP 403 for that bucket

Point the clients at the proxy's URL instead of the emulator's (`storage.use_gcs_emulator(url)`
or the environment variables it sets). Faults, drawn per request from a seeded generator:

- `error_rate`: answered with one of `statuses` (429 Too Many Requests, 503 Service Unavailable:
  what GCS answers under load) without reaching the emulator;
- `reset_rate`: the connection is closed without an answer (a dropped connection);
- `outage_seconds`: from now on, for that long, every request gets 503;
- `deny_bucket`: every request naming that bucket gets 403 (a permission problem);
- `fail_pattern`: every request whose URL (percent-decoded) matches this regular expression
  gets 503, e.g. `checkpoints/4\\b` to make every write of one checkpoint fail ("" = off);
  with `fail_limit` N > 0 only the next N matching requests fail.

`GET /__faults__` returns the counters (requests, injected errors, resets, denied) as JSON;
`POST /__faults__` with a JSON body changes the settings (`configure`). Only 127.0.0.1.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

CONTROL = "/__faults__"
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade",
                "proxy-authorization", "proxy-authenticate", "trailer"}  # fmt: skip


class _Faults:
    def __init__(self, seed: int):
        self.lock = threading.Lock()
        self.random = random.Random(seed)
        self.error_rate = 0.0
        self.statuses: tuple[int, ...] = (429, 503)
        self.reset_rate = 0.0
        self.outage_until = 0.0
        self.deny_bucket = ""
        self.fail_pattern: re.Pattern | None = None
        self.fail_left = -1  # matching requests still to fail (-1: all of them)
        self.counts = {"requests": 0, "errors": 0, "resets": 0, "outage": 0, "denied": 0,
                       "matched": 0}  # fmt: skip

    def configure(self, settings: dict) -> None:
        with self.lock:
            if "error_rate" in settings:
                self.error_rate = float(settings["error_rate"])
            if "statuses" in settings:
                self.statuses = tuple(int(s) for s in settings["statuses"])
            if "reset_rate" in settings:
                self.reset_rate = float(settings["reset_rate"])
            if "outage_seconds" in settings:
                self.outage_until = time.monotonic() + float(settings["outage_seconds"])
            if "deny_bucket" in settings:
                self.deny_bucket = str(settings["deny_bucket"])
            if "fail_pattern" in settings:
                pattern = str(settings["fail_pattern"])
                self.fail_pattern = re.compile(pattern) if pattern else None
                self.fail_left = int(settings.get("fail_limit", 0)) or -1

    def decide(self, path: str) -> tuple[str, int]:
        """("forward", 0), ("status", code) or ("reset", 0) for one request."""
        with self.lock:
            self.counts["requests"] += 1
            if self.deny_bucket and _names_bucket(path, self.deny_bucket):
                self.counts["denied"] += 1
                return "status", 403
            if (self.fail_pattern and self.fail_left != 0
                    and self.fail_pattern.search(urllib.parse.unquote(path))):  # fmt: skip
                if self.fail_left > 0:
                    self.fail_left -= 1
                self.counts["matched"] += 1
                return "status", 503
            if time.monotonic() < self.outage_until:
                self.counts["outage"] += 1
                return "status", 503
            draw = self.random.random()
            if draw < self.reset_rate:
                self.counts["resets"] += 1
                return "reset", 0
            if draw < self.reset_rate + self.error_rate:
                self.counts["errors"] += 1
                return "status", self.random.choice(self.statuses)
            return "forward", 0


def _names_bucket(path: str, bucket: str) -> bool:
    """Whether a JSON-API or XML-API request path addresses `bucket`."""
    plain = urllib.parse.unquote(path.split("?", 1)[0])
    return f"/b/{bucket}" in plain or plain.startswith(f"/{bucket}/") or plain == f"/{bucket}"


def make_handler(upstream: str, faults: _Faults):
    target = urllib.parse.urlsplit(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: one line per request otherwise
            pass

        def _control(self) -> None:
            if self.command == "POST":
                length = int(self.headers.get("Content-Length", 0))
                faults.configure(json.loads(self.rfile.read(length) or b"{}"))
            body = json.dumps(faults.counts).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _proxy(self) -> None:
            if self.path.startswith(CONTROL):
                return self._control()
            length = int(self.headers.get("Content-Length", 0) or 0)
            body = self.rfile.read(length) if length else None
            action, status = faults.decide(self.path)
            if action == "reset":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if action == "status":
                message = json.dumps({"error": {"code": status, "message": "injected fault"}})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                self.wfile.write(message.encode())
                return
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            headers["Host"] = target.netloc
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_HEADERS and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            connection.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _proxy

    return Handler


def serve(port: int, upstream: str, seed: int = 0) -> None:
    """Run the proxy in the foreground until SIGTERM or SIGINT."""
    faults = _Faults(seed)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), make_handler(upstream, faults))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"fault proxy on http://127.0.0.1:{port} -> {upstream}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


def start(upstream: str, seed: int = 0, timeout: float = 30.0) -> tuple[subprocess.Popen, str]:
    """The proxy in a subprocess on a free port, once it answers: (the process, its URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = os.path.join(tempfile.mkdtemp(prefix="illada-faults-"), "proxy.log")
    with open(log, "w") as out:
        code = f"from {__name__} import serve; serve({port}, {upstream!r}, {seed})"
        proxy = subprocess.Popen([sys.executable, "-c", code], stdout=out,
                                 stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            counters(url)
            return proxy, url
        except OSError:
            if proxy.poll() is not None or time.monotonic() > deadline:
                proxy.kill()
                raise RuntimeError(f"the fault proxy did not start; see {log}") from None
            time.sleep(0.1)


def configure(url: str, **settings) -> dict:
    """Change the proxy's faults (see the module doc); returns its counters."""
    request = urllib.request.Request(url + CONTROL, data=json.dumps(settings).encode(),
                                     method="POST")  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def counters(url: str) -> dict:
    """{"requests", "errors", "resets", "outage", "denied", "matched"}: what the proxy has seen and done."""
    with urllib.request.urlopen(url + CONTROL, timeout=5) as response:
        return json.loads(response.read())
