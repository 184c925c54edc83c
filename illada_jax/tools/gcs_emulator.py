"""A local Google Cloud Storage emulator on 127.0.0.1, for tests and `bench/storage.py`.

    python -c "from illada_jax.tools.gcs_emulator import serve; serve(9023, 'illada-test')"

or `start(bucket)` from Python (a subprocess on a free port; tests/conftest.py, bench/storage.py),
then, in the processes that use it, `storage.use_gcs_emulator(url)` (or the environment
variables it sets) before the first storage access. Runs `gcp-storage-emulator` (the
`[dev]` extra) in memory, with one fix: its media downloads lack the `x-goog-generation` header
that real GCS sends and tensorstore's OCDBT checkpoints (orbax's default format) read, so orbax
would fail with "Malformed StorageGeneration"; the header is added from the object's metadata.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def _patch_download_headers() -> None:
    """Add x-goog-generation / x-goog-metageneration to object downloads, as GCS does."""
    from gcp_storage_emulator.handlers import objects

    if getattr(objects.download, "_illada_patched", False):
        return
    original = objects.download

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # missing object: the original handler answers 404
            obj = None
        if obj is not None:
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        return original(request, response, storage, *args, **kwargs)

    download._illada_patched = True
    objects.download = download


def create_server(port: int, bucket: str):
    """An in-memory emulator on 127.0.0.1:`port` holding an empty `bucket` (not yet started)."""
    _patch_download_headers()
    from gcp_storage_emulator.server import create_server as _create  # routes read the patch

    return _create("127.0.0.1", port, in_memory=True, default_bucket=bucket)


def serve(port: int, bucket: str) -> None:
    """Run the emulator in the foreground until SIGTERM or SIGINT."""
    if len(bucket) < 3:
        raise ValueError(f"bucket {bucket!r}: use >= 3 characters (tensorstore refuses shorter)")
    server = create_server(port, bucket)
    server.start()
    print(f"gcs emulator on http://127.0.0.1:{port} with bucket gs://{bucket}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()


def start(bucket: str, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """The emulator in a subprocess on a free port of 127.0.0.1, holding `bucket`, once it
    answers: (the process, its URL). Its log goes to a file (it logs every request); stop it with
    `terminate()`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = os.path.join(tempfile.mkdtemp(prefix="illada-gcs-"), "emulator.log")
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-c", f"from {__name__} import serve; serve({port}, {bucket!r})"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        with open(log) as f:
            text = f.read()
        if "gcs emulator on" in text:
            return server, f"http://127.0.0.1:{port}"
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the GCS emulator did not start:\n{text[-2000:]}")
        time.sleep(0.1)
