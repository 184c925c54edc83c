"""A checkpoint save that fails is tried again a bounded number of times; when every try fails
the error names the step and the restore point, and nothing new is listed. Object storage's own
per-request retries are bounded by `checkpoint.request_retries` (tensorstore's, through orbax).
The real faults (an HTTP proxy answering 503) are in tests/e2e/test_storage_faults.py."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from illada_jax.ckpt.manager import CheckpointSaveError, RunCheckpoints
from illada_jax.config.schema import CheckpointConfig, ConfigError

STATE = {"w": jnp.arange(6.0).reshape(2, 3)}


def _checkpoints(tmp_path, **fields) -> RunCheckpoints:
    cfg = CheckpointConfig(async_save=False, save_retry_seconds=0.0, **fields)
    return RunCheckpoints(tmp_path, cfg)


def _failing(checkpoints: RunCheckpoints, failures: int) -> list[int]:
    """Make the first `failures` calls of orbax's save raise; returns the list of calls."""
    calls, save = [], checkpoints.manager.save

    def flaky(step, *args, **kwargs):
        calls.append(step)
        if len(calls) <= failures:
            raise OSError("503 Service Unavailable (injected)")
        return save(step, *args, **kwargs)

    checkpoints.manager.save = flaky
    return calls


def test_a_save_that_fails_once_is_saved_by_the_next_attempt(tmp_path):
    checkpoints = _checkpoints(tmp_path, save_attempts=2)
    calls = _failing(checkpoints, failures=1)
    assert checkpoints.save(3, STATE, {}, {})
    assert calls == [3, 3]
    assert checkpoints.steps() == [3]


def test_a_save_that_always_fails_names_the_step_and_the_restore_point(tmp_path):
    checkpoints = _checkpoints(tmp_path, save_attempts=3)
    assert checkpoints.save(2, STATE, {}, {})
    calls = _failing(checkpoints, failures=3)
    with pytest.raises(CheckpointSaveError) as caught:
        checkpoints.save(4, STATE, {}, {})
    assert calls == [4, 4, 4] and caught.value.step == 4
    message = str(caught.value)
    assert "checkpoint 4 in" in message and "3 attempt(s)" in message
    assert "the restore point is still checkpoint 2" in message
    assert checkpoints.steps() == [2]


def test_request_retries_reach_every_tensorstore_context_orbax_makes(tmp_path):
    from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

    _checkpoints(tmp_path, request_retries=4)
    for use_ocdbt in (True, False):
        spec = ts_utils.get_ts_context(use_ocdbt=use_ocdbt).spec.to_json()
        assert spec["gcs_request_retries"]["max_retries"] == 4, spec


@pytest.mark.parametrize("field, value", [("save_attempts", 0), ("request_retries", -1),
                                          ("save_retry_seconds", -1.0)])  # fmt: skip
def test_retry_bounds_are_checked(field, value):
    with pytest.raises(ConfigError, match=field):
        CheckpointConfig(**{field: value})
