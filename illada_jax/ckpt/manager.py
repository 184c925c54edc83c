"""Orbax checkpoints of a run: `WORKDIR/checkpoints/<step>/{state,data,meta}`.

- `state`: the sharded train state (every process writes its own shards);
- `data`: the data pipeline's position (the next data step; batches are a pure function of it);
- `data_streams` (runs with on-the-fly datasets only): each process's position in its raw-file
  streams, grain's iterator state, one `process_<i>-of-<n>.json` per process (grain's orbax
  handler);
- `meta`: the resolved config and the runner's controls (learning-rate scale after rollbacks).

The directory may be local or on object storage (`gs://...`; orbax writes through tensorstore).
Saves are asynchronous and committed atomically by orbax (a half-written step directory is never
listed). Retention: the last `keep` steps plus every `keep_every`-th step.

Restore (`restore_latest`) tells two failures apart, before anything is written:
- incompatible: the newest checkpoint holds another model shape, optimizer structure or tokenizer
  (its stored tree or config differs from this run's): `IncompatibleCheckpointError` naming the
  difference and the two ways out (a new workdir, or `checkpoint.init_from` to start from its
  weights);
- damaged: it cannot be read (a truncated or missing file): the previous step is tried, with a
  warning naming both. A damaged step is never deleted or overwritten: retention keeps it and a
  save at its step is skipped, so it stays there for inspection.
All processes agree on the outcome (each reads its own shards).

Saving through storage faults: the storage clients retry each request themselves (gcsfs: 6 tries,
backing off up to 32 s; tensorstore: `checkpoint.request_retries`, see `bound_request_retries`).
A save that still fails is tried again as a whole, `checkpoint.save_attempts` times, `checkpoint.save_retry_seconds` apart (doubling);
after that `save` raises `CheckpointSaveError` naming the step and the restore point (the newest
committed step, untouched). A background (asynchronous) write that fails is reported the same way
by the next `settle`/`save`/`wait`. A step whose write failed is never listed (orbax lists only
committed steps), so a restart resumes from the restore point.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time

import grain
import numpy as np
import orbax.checkpoint as ocp

from illada_jax import storage
from illada_jax.ckpt import rundir
from illada_jax.config.schema import CheckpointConfig
from illada_jax.errors import IlladaError

log = logging.getLogger(__name__)


class CheckpointError(IlladaError, RuntimeError):
    """No usable checkpoint where one was required."""


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written; the newest committed one stays the restore point."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class IncompatibleCheckpointError(CheckpointError):
    """The workdir's checkpoint belongs to a different model, optimizer or tokenizer."""


@dataclasses.dataclass
class _KeepSteps(ocp.checkpoint_managers.PreservationPolicy):
    """Retention never deletes these steps (the damaged ones, which may be inspected)."""

    steps: set[int]

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        return [c.step in self.steps for c in checkpoints]


_OK, _DAMAGED, _INCOMPATIBLE = 0, 1, 2


def _ignore_late_read_callbacks() -> None:
    """After a restore fails on a damaged checkpoint, tensorstore reads still in flight finish
    after orbax closed the asyncio loop that awaited them; their completion callbacks then raise
    "Event loop is closed", which Python prints as an unraisable exception with a traceback (at
    any moment, even after the command printed its error). The restore has already failed and
    been reported: drop exactly those, pass everything else to the previous hook. Installed once,
    on the first failed restore."""
    previous = sys.unraisablehook
    if getattr(previous, "_illada_late_reads", False):
        return

    def hook(unraisable) -> None:
        tb = unraisable.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        late = (
            isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"
            and tb is not None
            and tb.tb_frame.f_code.co_name == "_check_closed"
        )
        if not late:
            previous(unraisable)

    hook._illada_late_reads = True
    sys.unraisablehook = hook


def bound_request_retries(retries: int) -> None:
    """Make tensorstore, which reads and writes orbax's arrays, retry each object-storage request
    at most `retries` times (1 s doubling to 32 s) instead of its default 32. Orbax builds every
    tensorstore context from these two module-level dicts (checked by
    tests/unit/test_checkpoint_retries.py, so an orbax that stops doing so fails there)."""
    from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

    setting = {"max_retries": retries, "initial_delay": "1s", "max_delay": "32s"}
    for context in (ts_utils._BASE_TS_CONTEXT, ts_utils._DEFAULT_OCDBT_TS_CONTEXT):
        context["gcs_request_retries"] = setting


class RunCheckpoints:
    """`create=False`: read existing checkpoints only (`check_latest` before a run writes)."""

    def __init__(self, workdir: storage.PathLike, cfg: CheckpointConfig, *, create: bool = True):
        bound_request_retries(cfg.request_retries)
        self.directory = storage.path(workdir) / rundir.CHECKPOINTS
        self.attempts, self.retry_seconds = cfg.save_attempts, cfg.save_retry_seconds
        self.writing: int | None = None  # the step an asynchronous save is still writing
        self.failed: int | None = None  # the last step whose save failed (already reported)
        self.damaged: set[int] = set()  # steps that failed to restore; kept, never replaced
        policies = [ocp.checkpoint_managers.LatestN(n=cfg.keep), _KeepSteps(self.damaged)]
        if cfg.keep_every:
            policies.append(ocp.checkpoint_managers.EveryNSteps(cfg.keep_every))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=cfg.async_save,
            create=create,
        )
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
            "data_streams": grain.checkpoint.CheckpointHandler(),
        }
        assert set(handlers) == {*rundir.ITEMS, "data_streams"}
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def steps(self) -> list[int]:
        self.manager.reload()  # see steps committed by other processes or earlier runs
        return sorted(self.manager.all_steps())

    def save(
        self,
        step: int,
        state,
        data: dict,
        meta: dict,
        *,
        force: bool = False,
        streams: str | None = None,
    ) -> bool:
        """`streams`: this process's on-the-fly data position (a JSON string), if any."""
        if step in self.damaged:
            log.warning("not saving step %d: the damaged checkpoint there is kept", step)
            return False
        if step in self.manager.all_steps():
            return False  # never overwrite a committed checkpoint
        items = {
            "state": ocp.args.StandardSave(state),
            "data": ocp.args.JsonSave(data),
            "meta": ocp.args.JsonSave(meta),
        }
        if streams is not None:
            items["data_streams"] = grain.checkpoint.CheckpointSave(_StreamPosition(streams))
        self.settle()  # an earlier step's failed background write is that step's error
        error = None
        for attempt in range(1, self.attempts + 1):
            try:
                saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
            except Exception as err:  # gcsfs, tensorstore and orbax raise many types
                error = err
                log.warning("checkpoint %d: save attempt %d of %d failed: %s: %s", step, attempt,
                            self.attempts, type(err).__name__, str(err)[:300])  # fmt: skip
                self.manager.reload()  # forget the step orbax began to write
                if attempt < self.attempts:
                    time.sleep(self.retry_seconds * 2 ** (attempt - 1))
                continue
            self.writing = step if saved and self.manager.is_saving_in_progress() else None
            return saved
        raise self._save_failed(
            step, f"{self.attempts} attempt(s), last: {type(error).__name__}: {error}"
        )

    def settle(self) -> None:
        """Wait for an asynchronous save still writing; `CheckpointSaveError` if it failed."""
        step, self.writing = self.writing, None
        try:
            self.manager.wait_until_finished()
        except Exception as err:
            self.manager.reload()
            for _ in range(2):  # orbax may raise a failed write's error again: let it go now
                try:
                    self.manager.wait_until_finished()
                    break
                except Exception:
                    continue
            raise self._save_failed(
                step, f"the background write: {type(err).__name__}: {err}"
            ) from None

    def _save_failed(self, step: int | None, detail: str) -> CheckpointSaveError:
        """`step`: None when the failed background write's step is not known."""
        self.failed = -1 if step is None else step
        committed = self.steps()
        restore_point = f"checkpoint {committed[-1]}" if committed else "none (a fresh start)"
        which = "an earlier checkpoint" if step is None else f"checkpoint {step}"
        return CheckpointSaveError(
            f"{which} in {self.directory} was not saved ({detail[:300]}); the restore point is "
            f"still {restore_point}. Check that the storage answers (`gcloud storage ls` the "
            "bucket); a restart resumes from the restore point",
            self.failed,
        )

    def restore_latest(self, abstract_state, *, before: int | None = None, config=None):
        """(step, state, data, meta) of the newest checkpoint that restores (optionally only
        steps < `before`), or None when there is none. Damaged ones are skipped with a warning;
        an incompatible one (tree shapes, or `config`'s model/tokenizer, differ) raises
        `IncompatibleCheckpointError`."""
        damaged = []
        for step in reversed(self.steps()):
            if before is not None and step >= before:
                continue
            status, detail, restored = self._try_restore(step, abstract_state, config)
            status = _agree(status)
            if status == _INCOMPATIBLE:
                self._refuse(step, detail)
            if status == _DAMAGED:
                log.warning(
                    "checkpoint %d in %s is damaged (%s); trying an older one (the damaged "
                    "step is kept, not deleted)", step, self.directory, detail or "on another process",
                )  # fmt: skip
                damaged.append(step)
                self.damaged.add(step)
                continue
            if damaged:
                log.warning("restored checkpoint %d instead of damaged %s", step, damaged)
            return step, restored["state"], restored["data"], restored["meta"]
        if damaged:
            log.warning(
                "every checkpoint in %s is damaged (%s); starting from scratch",
                self.directory,
                damaged,
            )
        return None

    def check_latest(self, abstract_state, *, config=None) -> None:
        """Raise `IncompatibleCheckpointError` when the newest checkpoint whose metadata reads
        does not fit this run (as `restore_latest` would); reads metadata only, writes nothing."""
        for step in reversed(self.steps()):
            mine, detail = self._check(step, abstract_state, config)
            status = _agree(mine)
            if status == _INCOMPATIBLE:
                self._refuse(step, detail if mine == _INCOMPATIBLE else None)
            if status == _OK:
                return

    def _refuse(self, step: int, detail: str | None) -> None:
        raise IncompatibleCheckpointError(
            f"checkpoint {step} in {self.directory} does not fit this run: "
            f"{detail or 'another process found a difference (see its log)'}. Nothing "
            "was changed. Either train in a new --workdir, or keep this workdir's "
            "weights as a starting point: a new --workdir with "
            f"set:checkpoint.init_from={self.directory / str(step)}"
        )

    def _check(self, step: int, abstract_state, config) -> tuple[int, str]:
        """(status, detail) from a step's stored tree and config, before reading any array:
        an incompatible checkpoint is named, not mistaken for a damaged one."""
        try:
            stored = self.manager.item_metadata(step)["state"]
            if stored is None:
                raise FileNotFoundError("no readable metadata for the train state")
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as err:  # orbax/tensorstore raise many types for damaged files
            _ignore_late_read_callbacks()
            return _DAMAGED, f"{type(err).__name__}: {str(err)[:200]}"
        problems = []
        if config is not None:
            problems += config_differences(meta["meta"].get("config", {}), config)
        problems += tree_differences(stored, abstract_state)
        if problems:
            return _INCOMPATIBLE, "; ".join(problems[:6])
        return _OK, ""

    def _try_restore(self, step: int, abstract_state, config):
        """(status, detail, restored) for one step: `_check`, then the arrays."""
        status, detail = self._check(step, abstract_state, config)
        if status != _OK:
            return status, detail, None
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as err:
            _ignore_late_read_callbacks()
            return _DAMAGED, f"{type(err).__name__}: {str(err)[:200]}", None
        try:
            restored["data"]["streams"] = self._stream_position(step)
        except Exception as err:  # the file is there but cannot be read
            return _DAMAGED, f"on-the-fly data position: {type(err).__name__}: {err}", None
        return _OK, "", restored

    def _stream_position(self, step: int) -> str | None:
        """This process's saved on-the-fly data position at `step`, or None: none saved, or saved
        by a run with another process count (the pipeline then starts its streams over)."""
        import jax

        saved = self.directory / str(step) / "data_streams"
        mine = saved / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not saved.exists():
            return None
        if not mine.exists():
            log.warning("checkpoint %d has no on-the-fly data position for %s (saved by a run "
                        "with another process count)", step, mine.name)  # fmt: skip
            return None
        position = _StreamPosition()
        self.manager.restore(
            step, args=ocp.args.Composite(data_streams=grain.checkpoint.CheckpointRestore(position))
        )
        return position.state

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.settle()

    def close(self) -> None:
        try:
            self.manager.close()  # waits for a background write: raises its error again
        except Exception:
            if self.failed is None:
                raise
            log.warning("closing after the failed save of checkpoint %d", self.failed)


class _StreamPosition:
    """What grain's checkpoint handler saves and restores: an iterator-like holder of a JSON
    position (a snapshot, so an asynchronous save writes the position of its own step)."""

    def __init__(self, state: str | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return self.state.encode()

    def set_state(self, state: bytes) -> None:
        self.state = state.decode()

    def start_prefetch(self) -> None:
        pass


def _agree(status: int) -> int:
    """The worst status over all processes (each process reads only its own shards)."""
    import jax

    if jax.process_count() == 1:
        return status
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(status))))


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    """{"a/b/c": shape} of a tree of arrays, abstract arrays or orbax array metadata."""
    import jax

    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    out = {}
    for key_path, leaf in flat:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                        for k in key_path)  # fmt: skip
        if hasattr(leaf, "shape"):
            out[name] = tuple(leaf.shape)
    return out


def tree_differences(stored, expected) -> list[str]:
    """What differs between a checkpoint's stored state tree and this run's: missing or extra
    entries (optimizer structure) and shapes (model shape)."""
    have, want = _shapes(stored), _shapes(expected)
    problems = []
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        problems.append(
            f"this run has {len(missing)} entries the checkpoint lacks ({missing[0]}, ...)"
        )
    if extra:
        problems.append(f"the checkpoint has {len(extra)} entries this run lacks ({extra[0]}, ...)")
    reshaped = [n for n in sorted(set(have) & set(want)) if have[n] != want[n]]
    if reshaped:
        name = reshaped[0]
        problems.append(f"{len(reshaped)} arrays differ in shape (e.g. {name}: "
                        f"{have[name]} in the checkpoint, {want[name]} here)")  # fmt: skip
    return problems


# Model fields that decide parameter shapes, and the tokenizer's ids the model was trained with.
_MODEL_FIELDS = (
    "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim", "tie_embeddings",
    "vocab_size", "mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id",
)  # fmt: skip


def config_differences(stored: dict, experiment) -> list[str]:
    """Model-shape and tokenizer fields that differ between a checkpoint's stored config and
    `experiment` (the shapes are also checked through the state tree)."""
    from illada_jax.config import flags

    current = flags.to_dict(experiment)
    problems = []
    old_model, new_model = stored.get("model", {}), current.get("model", {})
    for key in _MODEL_FIELDS:
        if old_model.get(key) != new_model.get(key):
            problems.append(f"model.{key} is {old_model.get(key)!r} in the checkpoint, "
                            f"{new_model.get(key)!r} here")  # fmt: skip
    old_tok = stored.get("data", {}).get("tokenizer")
    new_tok = current.get("data", {}).get("tokenizer")
    if old_tok != new_tok:
        problems.append(f"data.tokenizer is {old_tok!r} in the checkpoint, {new_tok!r} here")
    return problems


def init_from_step_dir(path: storage.PathLike) -> storage.Path:
    """The checkpoint step `checkpoint.init_from` names (a step directory, or a run directory's
    latest step); CheckpointError saying what is there instead."""
    path = storage.path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint.init_from={path} does not exist; give a run directory "
            "or one of its checkpoints/<step> directories"
        )
    try:
        return rundir.find_step_dir(path)
    except rundir.LoadError as err:
        raise CheckpointError(f"checkpoint.init_from={path}: {err}") from None


def check_init_from(path: storage.PathLike, abstract_params) -> None:
    """Refuse (`CheckpointError`) a `checkpoint.init_from` whose parameters do not fit this
    model, from the checkpoint's metadata only (no array is read), before a run writes anything."""
    step_dir = init_from_step_dir(path)
    try:
        stored = ocp.PyTreeCheckpointHandler().metadata(step_dir / "state")["params"]
    except Exception as err:  # orbax raises many types for damaged or foreign directories
        raise CheckpointError(
            f"checkpoint.init_from={step_dir}: cannot read its parameters' metadata "
            f"({type(err).__name__}: {' '.join(str(err).split())[:200]}); give a checkpoint "
            "written by illada train"
        ) from None
    problems = tree_differences({"params": stored}, {"params": abstract_params})
    if problems:
        raise CheckpointError(
            f"checkpoint.init_from={step_dir} does not fit this model: {'; '.join(problems[:3])}. "
            "Start from a run of the same model config (its config.json), or change model.* to "
            "match it"
        )


def restore_params(path: storage.PathLike, abstract_params, *, init_from: bool = True,
                   name: str = "params"):  # fmt: skip
    """Parameters only, from a checkpoint step directory or a run directory (its latest step).
    `init_from`: the path is `checkpoint.init_from` (named so in errors); else a checkpoint being
    loaded (`illada_jax.load`). `name`: the state's entry (`ref_params`: a preference run's
    frozen reference)."""
    step_dir = init_from_step_dir(path) if init_from else rundir.find_step_dir(path)
    item = {name: abstract_params}
    handler = ocp.PyTreeCheckpointHandler()
    try:
        with ocp.Checkpointer(handler) as checkpointer:
            restored = checkpointer.restore(
                step_dir / "state",
                args=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                ),
            )
    except Exception as err:
        _ignore_late_read_callbacks()
        detail = f"{type(err).__name__}: {str(err)[:300]}"
        if init_from:
            raise CheckpointError(
                f"checkpoint.init_from={step_dir}: cannot restore parameters of this model "
                f"({detail}); is it a checkpoint of the same model config?"
            ) from err
        raise CheckpointError(
            f"{step_dir}: cannot restore the parameters ({detail}); the checkpoint is damaged "
            "(a truncated or missing file) or does not match its stored config. Give another "
            "checkpoints/<step> directory of the run"
        ) from err
    return restored[name]


def restore_checkpoint_params(path: storage.PathLike):
    """(experiment, step, params) of the newest checkpoint under `path` (a run directory, its
    `checkpoints/` directory or one step directory), parameters only (no optimiser state)."""
    from illada_jax.model.transformer import graphdef_and_specs

    step_dir = rundir.find_step_dir(path)
    experiment = rundir.read_experiment(step_dir)
    abstract = graphdef_and_specs(experiment.model)[2]
    return experiment, int(step_dir.name), restore_params(step_dir, abstract, init_from=False)
