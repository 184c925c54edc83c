"""kill -9 of `illada prepare` at several points: nothing half-written is ever read, and the re-run
completes the dataset to the same bytes as an uninterrupted run.

The kill is real: a `sitecustomize` module (put on PYTHONPATH only for the killed run, so it loads
in the command and in every worker process it spawns) wraps the ArrayRecord writer and
`storage.atomic_write`, and at the chosen point sends SIGKILL to the command's whole process group
(the command runs in a session of its own), as `kill -9 -PGID` would.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from illada_jax.data.pipeline.packing import DataError, PreparedDataset
from illada_jax.data.preparation.verify import verify_dataset

SITECUSTOMIZE = """
import os
import signal

POINT = os.environ.get("ILLADA_TEST_KILL_AT", "")


def _die():
    os.killpg(0, signal.SIGKILL)


if POINT:
    kind, _, arg = POINT.partition(":")
    if kind in ("writer_start", "mid_shard"):
        from array_record.python import array_record_module

        _Writer = array_record_module.ArrayRecordWriter

        class KillingWriter:
            def __init__(self, path, options):
                self._mine = os.path.basename(path).startswith(arg)
                if self._mine and kind == "writer_start":
                    _die()
                self._writer, self._records = _Writer(path, options), 0

            def write(self, record):
                self._records += 1
                if self._mine and self._records == 3:
                    _die()
                return self._writer.write(record)

            def close(self):
                return self._writer.close()

        array_record_module.ArrayRecordWriter = KillingWriter
    elif kind == "before_write":
        from illada_jax import storage

        _atomic_write = storage.atomic_write

        def atomic_write(target, data):
            if os.path.basename(os.fspath(target)) == arg:
                _die()
            return _atomic_write(target, data)

        storage.atomic_write = atomic_write
"""

COMMAND = ["prepare", "--format", "embedded", "--input", "heldout", "--shard-chars", "20000",
           "--workers", "1", "--quiet"]  # fmt: skip
# Each kill happens in the re-run of the previous one, so every re-run also resumes.
KILL_POINTS = [
    "writer_start:shard-00001",  # shard 0 finished, nothing of shard 1 yet
    "mid_shard:shard-00002",  # shard 2 half-written in its temporary file
    "before_write:shard-00003.stats.json",  # shard 3's file in place, its finished-marker not
    "before_write:manifest.json",  # every shard finished, no manifest
]


def run_prepare(output: pathlib.Path, tmp: pathlib.Path, kill_at: str | None = None):
    env = dict(os.environ, ILLADA_CACHE=str(tmp / "cache"))
    if kill_at:
        env["ILLADA_TEST_KILL_AT"] = kill_at
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp / "hook"),
                                                          env.get("PYTHONPATH")]))  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", *COMMAND, "--output", str(output)],
        capture_output=True, text=True, env=env, timeout=300, start_new_session=True,
    )  # fmt: skip


def tree(directory: pathlib.Path) -> dict[str, bytes]:
    """Every file below `directory` (hidden ones too) by relative path, with its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
        if p.is_file()
    }  # fmt: skip


def test_kill_9_at_each_point_then_rerun_gives_the_uninterrupted_bytes(tmp_path):
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    reference = tmp_path / "reference"
    done = run_prepare(reference, tmp_path)
    assert done.returncode == 0, done.stderr
    expected = tree(reference)
    shards = sorted(name for name in expected if name.endswith(".arrayrecord"))
    assert len(shards) >= 5, shards  # every kill point falls inside the run

    output = tmp_path / "killed"
    for point in KILL_POINTS:
        killed = run_prepare(output, tmp_path, kill_at=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr)
        assert not (output / "manifest.json").exists(), point
        with pytest.raises(DataError, match="manifest"):  # nothing half-written is readable
            PreparedDataset(output)
        if point.startswith("mid_shard"):  # the half-written shard is only a temporary file
            assert not (output / "shard-00002.arrayrecord").exists()
            assert any(p.name.startswith(".tmp-") for p in output.iterdir())

    rerun = run_prepare(output, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert tree(output) == expected  # byte-identical, and no temporary file left behind
    assert verify_dataset(output).ok
