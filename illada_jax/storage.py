"""One path type for every file the project reads or writes: local disk or object storage.

`path("gs://bucket/runs/x")` and `path("runs/x")` both return an `etils.epath.Path` (what orbax
uses): local paths are absolute `pathlib`-like paths, `gs://` goes through gcsfs, `s3://` through
s3fs when installed. etils would switch `gs://` to TensorFlow's gfile wherever TensorFlow is
installed (the `[seqio]` extra brings it); `EPATH_USE_TF=false` is set (unless the user set it)
so one client, with one set of credentials and emulator settings, serves every environment. Code that writes files
uses the helpers below instead of `os` calls, so the same run works on a laptop and on a pod.

- `atomic_write(path, data)`: local files are written to a temporary name and renamed; an object
  store write is already atomic (an object appears whole or not at all), so it is written directly.
- `is_local(path)`: False for any `scheme://` path; the run checks that a multi-host run's workdir
  is shared (docs/pods.md).
- `mounted_view(path)`: the local file behind `gs://BUCKET/...` when the bucket is mounted with
  gcsfuse at `$ILLADA_GCSFUSE_ROOT/BUCKET` (default `/gcs/BUCKET`, the Vertex AI convention).
  ArrayRecord's reader opens local files only; on pods the field mounts buckets with gcsfuse
  (`launch/tpu_vm.py --gcsfuse` does), and without a mount the data reader caches shards
  (`data/pipeline/remote.py`).
- Test and emulator support: `STORAGE_EMULATOR_HOST` (gcsfs, google-cloud-storage) and
  `TENSORSTORE_GCS_HTTP_URL` (orbax's tensorstore) point the clients at a local GCS emulator;
  `use_gcs_emulator(url)` sets all of them before the clients start.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import time
from collections.abc import Iterator

os.environ.setdefault("EPATH_USE_TF", "false")  # before etils decides (see the docstring)

from etils import epath  # noqa: E402

from illada_jax.errors import IlladaError

Path = epath.Path
PathLike = str | os.PathLike
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class StorageError(IlladaError, OSError):
    """A path cannot be used as asked (e.g. a multi-host workdir that is not shared)."""


def is_local(p: PathLike) -> bool:
    """True for a local path (no `scheme://`)."""
    return not _SCHEME.match(os.fspath(p))


def path(p: PathLike) -> epath.Path:
    """`p` as an `epath.Path`; a local path is made absolute (orbax requires it)."""
    text = os.fspath(p)
    if is_local(text):
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    return epath.Path(text)


def files_under(directory: PathLike) -> list[epath.Path]:
    """Every file below `directory` (recursively), sorted. (`epath` has no recursive glob, and its
    `walk` drops the `gs://` scheme from the paths it yields.)"""
    files, pending = [], [path(directory)]
    while pending:
        for entry in pending.pop().iterdir():
            (pending if entry.is_dir() else files).append(entry)
    return sorted(files)


def default_cache_dir() -> pathlib.Path:
    """This host's local cache (`$ILLADA_CACHE`, default ~/.cache/illada_jax): the embedded corpus
    prepared on first use, remote tokenizer files and shards."""
    root = os.environ.get("ILLADA_CACHE") or pathlib.Path.home() / ".cache" / "illada_jax"
    return pathlib.Path(root)


def atomic_write(target: PathLike, data: bytes | str) -> None:
    """Write `data` to `target` so that readers see the old file or the new one, never half."""
    target = path(target)
    raw = data.encode() if isinstance(data, str) else data
    if not is_local(target):
        target.write_bytes(raw)  # object writes are atomic
        return
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_bytes(raw)
    os.replace(tmp, target)


INCOMPLETE_MARKER = ".illada-incomplete"


@contextlib.contextmanager
def atomic_directory(target: PathLike) -> Iterator[epath.Path]:
    """Write a whole directory so that readers see it complete or not at all: yields the
    directory to write into.

    Local: a hidden sibling `.NAME.partial` (one a killed run left is deleted first), renamed to
    `target` when the block ends without an error (an empty `target` directory is replaced).
    Object storage has no directory rename: the files are written in place, after a marker file
    (`INCOMPLETE_MARKER`) that is deleted last; `check_complete` refuses a directory holding it,
    and a directory left holding it by a killed run is deleted when it is written again."""
    target = path(target)
    if is_local(target):
        staging = target.with_name(f".{target.name}.partial")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if target.is_dir():
            target.rmdir()  # empty (the caller checked): replaced by the staging directory
        os.replace(staging, target)
        return
    if (target / INCOMPLETE_MARKER).exists():
        target.rmtree()
    target.mkdir(parents=True, exist_ok=True)
    (target / INCOMPLETE_MARKER).write_bytes(b"being written\n")
    yield target
    (target / INCOMPLETE_MARKER).unlink()


def check_complete(directory: PathLike) -> None:
    """StorageError when `directory` is an interrupted `atomic_directory` write."""
    directory = path(directory)
    if (directory / INCOMPLETE_MARKER).exists():
        raise StorageError(
            f"{directory} was being written when its writer stopped (it holds "
            f"{INCOMPLETE_MARKER}); write it again (the same command) or delete it"
        )


def read_json_object(p: PathLike, error: type[Exception], fix: str) -> dict:
    """The JSON object in file `p`; `error(message)` naming the file and `fix` when it is not
    JSON (damaged, not UTF-8) or not an object."""
    try:
        data = json.loads(path(p).read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise error(f"{p} is not valid JSON ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{p} is not a JSON object (found {type(data).__name__}); {fix}")
    return data


def file_size(p: PathLike) -> int:
    """The size in bytes of a local or object-storage file."""
    target = path(p)
    if is_local(target):
        return os.path.getsize(target)
    return int(target.stat().length)  # epath's StatResult on object storage


def mounted_view(p: PathLike) -> epath.Path | None:
    """The gcsfuse-mounted local path of `gs://BUCKET/rest`, or None without a mount."""
    text = os.fspath(p)
    if not text.startswith("gs://"):
        return None
    bucket, _, rest = text[len("gs://") :].partition("/")
    root = os.path.join(os.environ.get("ILLADA_GCSFUSE_ROOT", "/gcs"), bucket)
    if not os.path.ismount(root) and not os.environ.get("ILLADA_GCSFUSE_ROOT"):
        return None
    local = os.path.join(root, rest)
    return epath.Path(local) if os.path.exists(local) else None


def use_gcs_emulator(url: str) -> None:
    """Point gcsfs, google-cloud-storage and tensorstore at a GCS emulator at `url`
    (`http://127.0.0.1:PORT`). Call before the first storage access of the process."""
    os.environ.update(
        STORAGE_EMULATOR_HOST=url,
        # gcsfs otherwise probes the bucket type over gRPC+TLS, which emulators do not speak.
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
        TENSORSTORE_GCS_HTTP_URL=url,
        GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",
    )


def check_bucket(p: PathLike, timeout: float = 10.0) -> None:
    """For a `gs://` path: one request for its bucket, so an unreachable, missing or forbidden
    bucket is one clear `StorageError` within seconds (which bucket, the likely causes, how to
    check) instead of a run that retries and fails deep inside a client. Local paths pass."""
    text = os.fspath(p)
    if not text.startswith("gs://"):
        return
    import fsspec
    import requests

    bucket = text[len("gs://") :].split("/", 1)[0]
    where = f"gs://{bucket}"
    check = f"check with: gcloud storage ls {where}"
    fs = fsspec.filesystem("gs")  # the client (and credentials) epath's gs:// paths use
    headers: dict[str, str] = {}
    try:
        fs.credentials.apply(headers)  # a token for the bucket request
    except Exception as err:  # google.auth raises several types
        raise StorageError(
            f"{where}: no usable Google Cloud credentials ({type(err).__name__}: {err}); run "
            f"`gcloud auth application-default login` (on a VM: check its service account), "
            f"then {check}"
        ) from None
    url = f"{fs.base}b/{bucket}"
    # A few quick tries: object stores answer 429/5xx and drop connections now and then; an
    # unreachable or missing bucket still fails within seconds.
    for attempt in range(3):
        time.sleep(0.5 * attempt)
        try:
            response = requests.get(url, headers=headers, timeout=timeout)
        except requests.RequestException as err:
            if attempt < 2:
                continue
            reason = str(err).split(": ", 1)[-1][:160]
            raise StorageError(
                f"{where} cannot be reached ({type(err).__name__}: {reason}): no network, DNS "
                "failing, a firewall or proxy in the way, or a wrong STORAGE_EMULATOR_HOST; "
                f"{check}"
            ) from None
        if response.status_code != 429 and response.status_code < 500:
            break
    status = response.status_code
    if status == 404:
        raise StorageError(
            f"{where} does not exist: check the bucket name (create it with gcloud storage "
            f"buckets create {where})"
        )
    if status in (401, 403):
        raise StorageError(
            f"{where}: permission denied (HTTP {status}) for this host's credentials: grant them "
            f"roles/storage.objectAdmin on the bucket, or log in as an account that has it; {check}"
        )
    if status >= 400:
        raise StorageError(f"{where} answered HTTP {status} to a bucket request; {check}")
