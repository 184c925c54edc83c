"""Test setup: JAX on the CPU unless the caller chose a platform; a private data cache; the TPU
compile tests only where they run (see `pytest_collection_modifyitems`)."""

import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The embedded corpus is prepared on first use; keep that out of the user's home cache.
os.environ.setdefault("ILLADA_CACHE", tempfile.mkdtemp(prefix="illada-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _gcs_emulator_env():
    """Start a GCS emulator on 127.0.0.1 (a subprocess) and yield the environment that points
    gcsfs, google-cloud-storage and tensorstore at it, with the bucket name under BUCKET."""
    from illada_jax.tools import gcs_emulator

    bucket = "illada-test"
    server, url = gcs_emulator.start(bucket)
    env = {
        "STORAGE_EMULATOR_HOST": url,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "BUCKET": bucket,
    }
    try:
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


import pytest  # noqa: E402 (the environment above is set before anything imports JAX)

gcs_emulator = pytest.fixture(scope="module")(_gcs_emulator_env)


def pytest_collection_modifyitems(config, items):
    """Tests marked `tpu_compile` (libtpu compiling TPU programs on this CPU: ~7 minutes of one
    worker) run under Python >= 3.12, whose pinned JAX and libtpu are what pod images use
    (README: "Which Python, which JAX"), or anywhere with ILLADA_TEST_COMPILE=1. CI runs them in
    its Python 3.12 leg and skips them in the Python 3.11 one, which keeps it within its time."""
    if sys.version_info >= (3, 12) or os.environ.get("ILLADA_TEST_COMPILE") == "1":
        return
    skip = pytest.mark.skip(
        reason="TPU compile test: runs on Python >= 3.12 (the pod JAX) or with "
        "ILLADA_TEST_COMPILE=1"
    )
    for item in items:
        if "tpu_compile" in item.keywords:
            item.add_marker(skip)
