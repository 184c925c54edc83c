"""Orbax checkpoints of a run: `WORKDIR/checkpoints/<step>/{state,data,meta}`.

- `state`: the sharded train state (every process writes its own shards);
- `data`: the data pipeline's position (the next data step; batches are a pure function of it);
- `meta`: the resolved config and the runner's controls (learning-rate scale after rollbacks).

Saves are asynchronous and committed atomically by orbax (a half-written step directory is never
listed). Retention: the last `keep` steps plus every `keep_every`-th step. Restore takes the
newest step that restores cleanly: a damaged latest checkpoint makes it fall back to the previous
one, with a warning naming both.
"""

from __future__ import annotations

import logging
import pathlib

import orbax.checkpoint as ocp

from illada_jax.ckpt import rundir
from illada_jax.config.schema import CheckpointConfig
from illada_jax.errors import IlladaError

log = logging.getLogger(__name__)


class CheckpointError(IlladaError, RuntimeError):
    """No usable checkpoint where one was required."""


class RunCheckpoints:
    def __init__(self, workdir: str | pathlib.Path, cfg: CheckpointConfig):
        self.directory = pathlib.Path(workdir).absolute() / rundir.CHECKPOINTS
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep,
            keep_period=cfg.keep_every or None,
            enable_async_checkpointing=cfg.async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=rundir.ITEMS
        )
        self.damaged: set[int] = set()  # steps that failed to restore

    def steps(self) -> list[int]:
        self.manager.reload()  # see steps committed by other processes or earlier runs
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data: dict, meta: dict, *, force: bool = False) -> bool:
        if step in self.damaged:
            # A damaged checkpoint is worse than any: replace it with the retrained step.
            log.warning("replacing damaged checkpoint %d", step)
            self.manager.delete(step)
            self.damaged.discard(step)
        elif step in self.manager.all_steps():
            return False  # never overwrite a good committed checkpoint
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data),
                meta=ocp.args.JsonSave(meta),
            ),
            force=force,
        )

    def restore_latest(self, abstract_state, *, before: int | None = None):
        """(step, state, data, meta) of the newest checkpoint that restores (optionally only
        steps < `before`), or None when there is none. Damaged ones are skipped with a warning."""
        damaged = []
        for step in reversed(self.steps()):
            if before is not None and step >= before:
                continue
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=ocp.args.JsonRestore(),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as err:  # orbax/tensorstore raise many types for damaged files
                log.warning(
                    "checkpoint %d in %s is damaged (%s: %s); trying an older one",
                    step,
                    self.directory,
                    type(err).__name__,
                    str(err)[:200],
                )
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

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def restore_params(path: str | pathlib.Path, abstract_params):
    """Parameters only, from a checkpoint step directory or a run directory (its latest step)."""
    path = pathlib.Path(path).absolute()
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint.init_from={path} does not exist; give a run directory "
            "or one of its checkpoints/<step> directories"
        )
    try:
        step_dir = rundir.find_step_dir(path)
    except rundir.LoadError as err:
        raise CheckpointError(f"checkpoint.init_from={path}: {err}") from None
    item = {"params": abstract_params}
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
        raise CheckpointError(
            f"checkpoint.init_from={step_dir}: cannot restore parameters of this model "
            f"({type(err).__name__}: {str(err)[:300]}); is it a checkpoint of the same model "
            "config?"
        ) from err
    return restored["params"]


def restore_checkpoint_params(path: str | pathlib.Path):
    """(experiment, step, params) of the newest checkpoint under `path` (a run directory, its
    `checkpoints/` directory or one step directory), parameters only (no optimiser state)."""
    from illada_jax.model.transformer import graphdef_and_specs

    step_dir = rundir.find_step_dir(path)
    experiment = rundir.read_experiment(step_dir)
    abstract = graphdef_and_specs(experiment.model)[2]
    return experiment, int(step_dir.name), restore_params(step_dir, abstract)
