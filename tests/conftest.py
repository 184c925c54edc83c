"""Test setup: JAX on the CPU unless the caller chose a platform; a private data cache."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The embedded corpus is prepared on first use; keep that out of the user's home cache.
os.environ.setdefault("ILLADA_CACHE", tempfile.mkdtemp(prefix="illada-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
