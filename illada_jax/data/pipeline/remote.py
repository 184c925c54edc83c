"""Local files for ArrayRecord shards that live on object storage.

ArrayRecord's reader opens local files only (given `gs://...` it does not go through the path
library). What the field does on pods is mount the bucket with gcsfuse; `storage.mounted_view`
uses such a mount when there is one (`launch/tpu_vm.py --gcsfuse` creates it). Without a mount,
`ShardCache` downloads each shard the first time a window in it is read — one shard at a time,
never the whole dataset — into a bounded local cache (least recently used shards are evicted once
the cache exceeds `ILLADA_SHARD_CACHE_GB`, default 50). A download goes to a temporary name and is
renamed, so a killed process never leaves a half shard that looks finished.

For a dataset much larger than the cache read in a global shuffle, every window may miss: mount
the bucket instead (README, "Running on a pod").
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import pathlib
import threading

from illada_jax import storage

log = logging.getLogger(__name__)
DEFAULT_CACHE_GB = 50.0


def cache_root() -> pathlib.Path:
    return pathlib.Path(storage.default_cache_dir()) / "remote-shards"


class ShardCache:
    """Local copies of remote shard files, bounded in bytes (least recently used evicted)."""

    def __init__(self, root: pathlib.Path | None = None, limit_bytes: int | None = None):
        self.root = root or cache_root()
        if limit_bytes is None:
            gb = float(os.environ.get("ILLADA_SHARD_CACHE_GB", DEFAULT_CACHE_GB))
            limit_bytes = int(gb * (1 << 30))
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._file_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._sizes: collections.OrderedDict[pathlib.Path, int] = collections.OrderedDict()
        self.downloads = 0

    def local_file(self, remote: storage.Path) -> str:
        """A local path holding the bytes of `remote` (downloaded on first use)."""
        key = hashlib.sha256(os.fspath(remote).encode()).hexdigest()[:16]
        local = self.root / f"{key}-{remote.name}"
        with self._file_locks[key]:
            if not local.exists():
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}-{threading.get_ident()}")
                with remote.open("rb") as src, tmp.open("wb") as dst:
                    while block := src.read(16 << 20):
                        dst.write(block)
                os.replace(tmp, local)
                self.downloads += 1
            self._touch(local)
        return str(local)

    def _touch(self, local: pathlib.Path) -> None:
        with self._lock:
            self._sizes.pop(local, None)
            self._sizes[local] = local.stat().st_size
            while sum(self._sizes.values()) > self.limit_bytes and len(self._sizes) > 1:
                oldest, _ = self._sizes.popitem(last=False)
                # An open reader keeps its file descriptor valid after the unlink.
                oldest.unlink(missing_ok=True)
                log.info("shard cache over %d bytes: evicted %s", self.limit_bytes, oldest.name)


_CACHE: ShardCache | None = None


def readable_path(p: storage.Path) -> str:
    """A local path ArrayRecord can open for the shard file `p`: itself when local, the gcsfuse
    mount when there is one, else a cached download."""
    global _CACHE
    if storage.is_local(p):
        return os.fspath(p)
    mounted = storage.mounted_view(p)
    if mounted is not None:
        return os.fspath(mounted)
    if _CACHE is None:
        _CACHE = ShardCache()
    return _CACHE.local_file(p)
