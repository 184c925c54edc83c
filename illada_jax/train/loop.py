"""The runner: `train(experiment, workdir)` trains (or resumes) a run; read it top to bottom.

1. `build_run` (train/builder.py): mesh, rules, optimizer, shardings and the steps.
2. Preflight (train/preflight.py), before anything is written: the inputs (datasets,
   `init_from`), the existing checkpoints against this run, the train state against the
   devices' memory; then compile the train and eval steps ahead of time under the mesh
   (`Run.compile_train_step`: the executable `illada compile` reports on; JAX's persistent cache
   in `WORKDIR/compile_cache` makes a restart's compile a load) and check the compiled step's
   memory. A refused run leaves its directory as it was.
3. `config.json`, the checkpoint manager and the metric writers; `start`: resume from the newest
   good checkpoint in `WORKDIR/checkpoints` (state, data position, learning-rate scale, spike
   window, the metrics of the unfinished log window), else initialise (parameters from
   `checkpoint.init_from` when set; for vrpo also the frozen reference `ref_params`).
4. The loop: take this process's rows of the next global batch, dispatch the train step, fetch
   the previous step's metrics (this step's only when a hook needs them: logging), then the
   hooks that are due (train/hooks.py, train/recovery.py): logging, held-out evaluation, text
   samples, checkpoints, loss health / rollback, profiling, preemption.

Everything that decides a step's outcome (data position, RNG, state, learning-rate scale, spike
window) is restored from the checkpoint, so a killed and restarted run repeats the uninterrupted
losses, and every logged value but the timings.
"""

from __future__ import annotations

import collections
import logging

from illada_jax import storage
from illada_jax.ckpt import rundir
from illada_jax.ckpt.manager import RunCheckpoints, init_from_step_dir, restore_params
from illada_jax.config import flags
from illada_jax.config.schema import Experiment
from illada_jax.obs.progress import TrainProgress
from illada_jax.obs.writers import MetricWriter, import_wandb
from illada_jax.parallel import tpu_runtime
from illada_jax.train import compile_cache, preflight, recovery
from illada_jax.train import hooks as hooks_lib
from illada_jax.train.builder import Run, build_run
from illada_jax.train.hooks import Hook, LoopState, resolve_metrics

log = logging.getLogger(__name__)


def train(
    experiment: Experiment, workdir: storage.PathLike | None = None, print_fn=print
) -> list[dict]:
    """Train (or resume) `experiment` in `workdir`; returns the records logged by this call.

    Stops early, after saving, when preempted (SIGTERM / pod notice): check `preempted` in the
    last record.
    """
    import jax

    workdir = storage.path(workdir or f"runs/{experiment.model.name}")
    check_shared_workdir(workdir, experiment.checkpoint.shared_filesystem, jax.process_count())
    is_main = jax.process_index() == 0
    obs = experiment.obs
    if obs.wandb_project:  # every process, before anything is built: all of them stop alike
        import_wandb(obs.wandb_project)
    # Everything that can refuse the run comes before its first write (train/preflight.py):
    # a refused run leaves its directory as it was.
    preflight.check_buckets(experiment, workdir)
    run = build_run(experiment)
    preflight.check_memory(run)
    pipeline = preflight.check_inputs(run)
    preflight.check_checkpoints(run, workdir)
    if run.schedule_note and is_main:
        print_fn(run.schedule_note)
    if getattr(pipeline, "dropped", 0) and is_main:  # SFT and preference pairs that do not fit
        what = "RL prompts" if run.reinforcement else "training pairs"
        limit = (f"train.seq_len - grpo.gen_length = {pipeline.width}" if run.reinforcement
                 else f"train.seq_len={experiment.train.seq_len}")  # fmt: skip
        print_fn(f"{pipeline.dropped} of the {what} are longer than {limit} and are left out")
    compile_cache.configure(experiment.train.compilation_cache, workdir)
    compiled = compile_steps(run, print_fn if is_main else None)
    preflight.check_compiled_memory(run, run.train_step)

    runtime = tpu_runtime.runtime_record()  # the flags and versions this run started with
    if is_main:
        rundir.write_config(workdir, experiment, runtime=runtime)
    checkpoints = RunCheckpoints(workdir, experiment.checkpoint)
    writer = MetricWriter(
        workdir,
        enabled=is_main,
        wandb_project=obs.wandb_project,
        wandb_entity=obs.wandb_entity,
        wandb_mode=obs.wandb_mode,
        wandb_config={**flags.to_dict(experiment), rundir.RUNTIME: runtime},  # config.json
    )
    loop, hooks = None, []
    try:
        loop = start(run, workdir, pipeline, checkpoints, writer, compiled, print_fn)
        hooks = default_hooks(run, workdir, checkpoints)
        for hook in hooks:
            hook.on_start(loop)
        loop.window.restart_clock()  # tokens/s counts from the first step on
        while loop.step < experiment.train.steps and not loop.stop:
            advance(loop, hooks)
        for hook in hooks:
            hook.on_end(loop)
    finally:
        for hook in hooks:
            hook.close(loop)
        if loop is not None:
            loop.progress.close()
            if hasattr(loop.batches, "close"):  # on-the-fly streams: their worker processes
                loop.batches.close()
        writer.close()
        checkpoints.close()
    return loop.history


def copy_params(params, shardings):
    """A second copy of `params` on the devices, with `shardings` (nothing read again)."""
    import jax
    import jax.numpy as jnp

    return jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)(params)


def check_shared_workdir(workdir, shared_filesystem: bool, process_count: int) -> None:
    """A multi-host run writes one run directory that every host must see: refuse a local path
    (each host would write its own) unless the user says it is a shared filesystem."""
    if process_count > 1 and storage.is_local(workdir) and not shared_filesystem:
        raise storage.StorageError(
            f"--workdir={workdir} is a local path, but this run has {process_count} processes: "
            "each host would write checkpoints to its own disk and a restart could not find "
            "them. Use object storage (--workdir=gs://BUCKET/runs/NAME), or, if this path is a "
            "filesystem mounted on every host (NFS, Lustre, gcsfuse), say so with "
            "--config=set:checkpoint.shared_filesystem=True"
        )


def start(
    run: Run, workdir, pipeline, checkpoints, writer, compiled: dict, print_fn=print
) -> LoopState:
    """The loop's state: resumed from a checkpoint, or fresh (optionally from `init_from`).
    `compiled`: `compile_steps`' record, logged as the `compiled` event."""
    experiment = run.experiment
    tcfg, ccfg = experiment.train, experiment.checkpoint
    restored = checkpoints.restore_latest(run.abstract_state, config=experiment)
    if restored is not None:
        step, state, data_position, meta = restored
        next_data_step, lr_scale = int(data_position["next_data_step"]), float(meta["lr_scale"])
        data_state = data_position.get("streams")
        recent = meta.get("recent_losses", ())
        unresolved = [(int(s), m) for s, m in meta.get("unresolved_metrics", ())]
        window = hooks_lib.MetricWindow.from_saved(meta.get("metric_window"))
        print_fn(f"resumed from checkpoint {step} in {checkpoints.directory}")
    else:
        step, next_data_step, lr_scale, recent, data_state = 0, 0, 1.0, (), None
        unresolved, window = [], hooks_lib.MetricWindow()
        init_from = init_from_step_dir(ccfg.init_from) if ccfg.init_from else None
        state = run.init_state()
        if init_from is not None:
            params = restore_params(init_from, run.abstract_state["params"])
            state = {**state, "params": params}
            if "ref_params" in state:  # the frozen reference: a copy on the devices, never updated
                state["ref_params"] = copy_params(params, run.state_shardings["ref_params"])
            print_fn(
                f"initialised parameters from {ccfg.init_from}"
                + (" (also the frozen reference)" if "ref_params" in state else "")
            )
        writer.write_text("config", flags.to_json(experiment), step=0)
    progress = TrainProgress(tcfg.steps, initial_step=step, enabled=writer.enabled)
    loop = LoopState(
        run=run,
        workdir=workdir,
        state=state,
        step=step,
        next_data_step=next_data_step,
        lr_scale=lr_scale,
        recent_losses=collections.deque(recent, maxlen=tcfg.spike_window),
        pipeline=pipeline,
        data_state=data_state,
        writer=writer,
        progress=progress,
        unresolved=collections.deque(unresolved),
        window=window,
        rollouts=rollouts(run),
    )
    loop.restart_data()
    if writer.enabled:
        writer.write_metrics(step, {"event": "compiled", **compiled})
    return loop


def rollouts(run: Run):
    """objective=grpo's rollout maker (None for the other objectives)."""
    if not run.reinforcement:
        return None
    from illada_jax.data.tokenizers.tokenizer import Tokenizer
    from illada_jax.train.rollout import Rollouts

    experiment = run.experiment
    return Rollouts(run, Tokenizer.for_model(experiment.data.tokenizer, experiment.model)[0])


def compile_steps(run: Run, print_fn=None) -> dict:
    """Compile the run's train step (and its eval step when it evaluates) ahead of time under
    its mesh; returns {"<name>_step_program": fingerprint, "<name>_compile_s": seconds}."""
    from illada_jax.train.builder import program_fingerprint

    steps = {"train": run.compile_train_step()}
    if run.experiment.train.eval_every and not run.reinforcement:  # grpo's is the sampler
        steps["eval"] = run.compile_eval_step()
    seconds = run.compile_seconds()
    record = {}
    for name, compiled in steps.items():
        record[f"{name}_step_program"] = program_fingerprint(compiled)
        record[f"{name}_compile_s"] = round(seconds[name], 3)
    if print_fn is not None:
        print_fn(
            f"compiled the train step in {seconds['train']:.1f} s "
            f"(program {record['train_step_program']})"
        )
    return record


def default_hooks(run: Run, workdir, checkpoints) -> list[Hook]:
    """The runner's hooks, in the order they run after a step."""
    from illada_jax.data.tokenizers.tokenizer import Tokenizer

    tokenizer, why = Tokenizer.for_model(run.experiment.data.tokenizer, run.experiment.model)
    if tokenizer is None:
        log.warning("no text samples: %s", why)
    checkpointing = hooks_lib.Checkpointing(run, checkpoints)
    return [
        hooks_lib.Profile(run, workdir),
        recovery.LossHealth(run, checkpoints),  # may roll back: the hooks after it then skip
        hooks_lib.Progress(),
        hooks_lib.MetricsLog(run),
        checkpointing,  # before evaluation and samples: the final save does not wait on them
        hooks_lib.HeldOutEval(run),
        hooks_lib.TextSamples(run, workdir, tokenizer),
        recovery.Preemption(checkpointing),
    ]


def advance(loop: LoopState, hooks: list[Hook]) -> None:
    """One optimizer step, then the hooks that are due."""
    run = loop.run
    for hook in hooks:
        hook.before_step(loop)
    local = next(loop.batches)
    controls = run.controls(
        lr_scale=loop.lr_scale, loss_ceiling=loop.loss_ceiling, data_step=loop.next_data_step
    )
    timings = {}
    if loop.rollouts is not None:  # grpo: the step trains on the state's rollout, no batch
        if loop.rollouts.due(loop.step):
            loop.state, timings = loop.rollouts(
                loop.state, local, loop.pipeline.examples, loop.step
            )
        batch = {}
    else:
        batch = run.global_batch(local)
    size = run.block_size_at(loop.step)
    if size is not None and (loop.step == 0 or size != run.block_size_at(loop.step - 1)):
        loop.progress.write(f"step {loop.step}: block-size schedule phase, blocks of {size}")
    train_step = run.train_step_at(loop.step)
    loop.state, metrics = train_step(loop.state, batch, run.step_key(loop.step), controls)
    if loop.rollouts is not None:  # every step logs the rollout's seconds (0 between rollouts)
        metrics = {**metrics, "sample_s": timings.get("sample_s", 0.0),
                   "rollout_s": timings.get("rollout_s", 0.0)}  # fmt: skip
    loop.step += 1
    loop.next_data_step += 1
    step = loop.step
    # No host sync on the step just dispatched unless a hook needs its metrics now (logging):
    # fetching the previous step's waits only for that one, so the host takes the next batch
    # while this step runs.
    loop.unresolved.append((step, metrics))
    fresh = any(hook.needs_metrics(loop) for hook in hooks)
    resolve_metrics(loop, hooks, keep_last=not fresh)
    for hook in hooks:
        if loop.step != step:  # a hook moved the run (rollback): the rest wait for the next step
            break
        if hook.due(loop):
            hook.on_step(loop)
