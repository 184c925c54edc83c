"""One function builds a run: `build_run(experiment, devices=None) -> Run`.

A `Run` is everything about a training job that depends only on its `Experiment` and its devices,
not on data or progress: the mesh, the resolved rule table, the optimizer and its schedule, the
network's graph definition, the state's shardings and abstract shapes, the batch's keys and
shardings, and the train and eval steps. Nothing is allocated until a step is compiled.

One step object. `jax.jit` traces at the first call, not where the jitted function is made, so a
mesh entered around `jax.jit(...)` does not reach a lazy trace: the model's activation
constraints (`parallel.rules.constrain`) and splash attention's `shard_map` read the mesh being
traced under and vanish outside it. So nothing here is ever traced lazily: `lower_train_step()`
lowers the step under the run's mesh on the abstract inputs (`abstract_step_inputs`, which are
`jax.eval_shape` of the very methods that make the runner's real inputs: `controls`, `step_key`,
`global_batch`), and `train_step` is that lowering compiled (`compile_train_step`, once per run).
The runner (`train/loop.py`) calls `run.train_step`, the AOT tool (`tools/aot.py`, behind
`illada compile`) compiles `run.lower_train_step()` on a TPU topology's abstract devices: the same
lowering, so `illada compile` reports the executable `illada train` runs (its
`program_fingerprint` is printed by both). A call with another shape, dtype or sharding than
compiled is an error from JAX, never a silent retrace. The held-out evaluation step is built the
same way (`lower_eval_step`, `eval_step`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from illada_jax.config.objectives import block_size_at
from illada_jax.config.post_training import REFERENCE_OBJECTIVES
from illada_jax.config.schema import Experiment
from illada_jax.data.pipeline.batches import LladaSftPipeline, Pipeline, PipelineSpec
from illada_jax.data.pipeline.preference import PreferencePipeline
from illada_jax.data.pipeline.rl import RlPipeline
from illada_jax.model.transformer import graphdef_and_specs
from illada_jax.parallel import mesh as mesh_lib
from illada_jax.parallel.rules import batch_spec
from illada_jax.parallel.rules import resolve as resolve_rules
from illada_jax.train import state as state_lib
from illada_jax.train.optim import fit_schedule, learning_rate_schedule, make_optimizer
from illada_jax.train.rollout import rollout_abstract
from illada_jax.train.step import (
    batch_shardings,
    is_row_vector,
    make_eval_step,
    make_train_step,
    weights_compute_dtype,
)


@dataclasses.dataclass(frozen=True)
class Run:
    """A training job made concrete for a set of devices (see the module docstring)."""

    experiment: Experiment
    mesh: jax.sharding.Mesh
    rules: str  # the resolved rule table (`auto` becomes `dp` or `fsdp`)
    optimizer: optax.GradientTransformation
    schedule: Callable[[int], Any]  # optimizer update count -> learning rate
    graphdef: Any
    state_shardings: Any  # pytree of NamedSharding, the train state's structure
    abstract_state: Any  # pytree of ShapeDtypeStruct carrying those shardings
    batch_keys: tuple[str, ...]
    batch_shardings: dict[str, NamedSharding]
    # The jitted functions, never called directly: only lowered under the mesh (module doc).
    jitted_train_step: Callable  # (state, batch, key, controls) -> (state, metrics)
    jitted_eval_step: Callable  # (eval_params(state), batch, key) -> (bound_sum, n_tokens)
    # Set when the schedule's phases were scaled to fit train.steps (`optim.fit_schedule`).
    schedule_note: str | None = None
    # A block-size schedule's other phases: block size -> jitted train step (the last phase,
    # `diffusion.block_size`, is `jitted_train_step`); compiled when their phase starts.
    jitted_phase_steps: dict = dataclasses.field(default_factory=dict, compare=False)
    _compiled: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    # ------------------------------------------------------------------ the compiled steps

    @property
    def train_step(self) -> jax.stages.Compiled:
        """The compiled train step `(state, batch, key, controls) -> (state, metrics)` (the
        state is donated); compiled on first use (`compile_train_step`)."""
        return self.compile_train_step()

    @property
    def eval_step(self) -> jax.stages.Compiled:
        """The compiled held-out step `(eval_params(state), batch, key) -> (bound_sum,
        n_tokens)`; for objective=vrpo -> the held-out preference sums."""
        return self.compile_eval_step()

    @property
    def preference(self) -> bool:
        """Whether the run optimises preferences (objective=vrpo): preference batches, a frozen
        reference in the state, held-out preference accuracy."""
        return self.experiment.diffusion.objective == "vrpo"

    @property
    def reinforcement(self) -> bool:
        """Whether the run is online RL (objective=grpo): rollouts in the state, prompt batches,
        the held-out reward of sampled completions."""
        return self.experiment.diffusion.objective == "grpo"

    def eval_params(self, state):
        """The held-out step's first argument: the parameters, or (params, ref_params)."""
        return (state["params"], state["ref_params"]) if self.preference else state["params"]

    def compile_train_step(self, block_size: int | None = None) -> jax.stages.Compiled:
        """`lower_train_step().compile()`, once per run: what `illada compile` compiles too;
        with `block_size`, the train step of that phase of a block-size schedule."""
        name = "train" if block_size not in self.jitted_phase_steps else f"train_block{block_size}"
        if name not in self._compiled:
            jitted = self.jitted_phase_steps.get(block_size, self.jitted_train_step)
            with jax.set_mesh(self.mesh):
                lowered = jitted.lower(*self.abstract_step_inputs())
            self._compiled[name] = _timed_compile(lowered)
        return self._compiled[name][0]

    def block_size_at(self, step: int) -> int | None:
        """The block size of optimizer step `step` under a block-size schedule (else None)."""
        if not self.jitted_phase_steps:
            return None
        return block_size_at(self.experiment.diffusion, step)

    def train_step_at(self, step: int) -> jax.stages.Compiled:
        """The compiled train step of optimizer step `step` (its schedule phase's)."""
        return self.compile_train_step(self.block_size_at(step))

    def compile_eval_step(self) -> jax.stages.Compiled:
        """`lower_eval_step().compile()`, once per run."""
        if "eval" not in self._compiled:
            self._compiled["eval"] = _timed_compile(self.lower_eval_step())
        return self._compiled["eval"][0]

    def compile_seconds(self) -> dict[str, float]:
        """Seconds each compiled step took to compile, by name (`train`, `eval`)."""
        return {name: seconds for name, (_, seconds, _) in self._compiled.items()}

    def compiled_lowering(self, name: str = "train") -> jax.stages.Lowered:
        """The lowering that step `name` was compiled from (for reports and tests: lowering
        again in the same process numbers Pallas kernels anew, so its text would differ)."""
        return self._compiled[name][2]

    # ------------------------------------------------------------------ step inputs

    def controls(self, *, lr_scale: float, loss_ceiling: float, data_step: int) -> dict:
        """The train step's scalar controls (see `train/step.py`)."""
        return {
            "lr_scale": jnp.float32(lr_scale),
            "loss_ceiling": jnp.float32(loss_ceiling),
            "data_step": jnp.int32(data_step),
        }

    def step_key(self, step: int) -> jax.Array:
        """The random key of optimizer step `step` (0-based): a function of (seed, step) only,
        so a resumed run draws the same times and masks."""
        return jax.random.fold_in(jax.random.key(self.experiment.train.seed), step)

    def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows -> global `jax.Array`s with the batch shardings."""
        rows = self.experiment.train.batch_size
        return {
            key: jax.make_array_from_process_local_data(
                self.batch_shardings[key], value, (rows, *value.shape[1:])
            )
            for key, value in local.items()
        }

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch as ShapeDtypeStructs: int32 `[batch, seq_len]` arrays (and `[batch]`
        `*_lengths` for sft_llada and vrpo), with the batch shardings."""
        shape = (self.experiment.train.batch_size, self.experiment.train.seq_len)
        return {
            key: jax.ShapeDtypeStruct(
                shape[:1] if is_row_vector(key) else shape,
                jnp.int32,
                sharding=self.batch_shardings[key],
            )
            for key in self.batch_keys
        }

    def abstract_step_inputs(self) -> tuple:
        """(state, batch, key, controls) as ShapeDtypeStructs, for lowering without data."""
        replicated = NamedSharding(self.mesh, PartitionSpec())

        def placed(tree):
            return jax.tree.map(
                lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), tree
            )

        key = placed(jax.eval_shape(self.step_key, 0))
        controls = placed(
            jax.eval_shape(lambda: self.controls(lr_scale=1.0, loss_ceiling=np.inf, data_step=0))
        )
        return self.abstract_state, self.abstract_batch(), key, controls

    def lower_train_step(self, *inputs) -> jax.stages.Lowered:
        """The train step lowered under the run's mesh on `inputs` (default: the abstract ones,
        which is what `train_step` compiles)."""
        with jax.set_mesh(self.mesh):
            return self.jitted_train_step.lower(*(inputs or self.abstract_step_inputs()))

    def abstract_eval_inputs(self) -> tuple:
        """(params, batch, key) of the held-out step as ShapeDtypeStructs: the held-out data is
        prepared shards (`Pipeline` rows, also for sft_llada runs), `[batch, seq_len]` int32
        arrays with `eval_rows_sharding`; for vrpo, preference batches like the training ones."""
        if self.preference:
            key = self.abstract_step_inputs()[2]
            return self.eval_params(self.abstract_state), self.abstract_batch(), key
        rows = eval_rows_sharding(self)
        shape = (self.experiment.train.batch_size, self.experiment.train.seq_len)
        batch = {key: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=rows)
                 for key in Pipeline.output_keys}  # fmt: skip
        key = self.abstract_step_inputs()[2]
        return self.abstract_state["params"], batch, key

    def eval_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a held-out batch -> global arrays with `eval_rows_sharding`
        (preference batches: the training batch's shardings)."""
        if self.preference:
            return self.global_batch(local)
        rows, sharding = self.experiment.train.batch_size, eval_rows_sharding(self)
        return {
            key: jax.make_array_from_process_local_data(sharding, value, (rows, *value.shape[1:]))
            for key, value in local.items()
        }

    def lower_eval_step(self, *inputs) -> jax.stages.Lowered:
        """The held-out step lowered under the run's mesh (default: on the abstract inputs)."""
        with jax.set_mesh(self.mesh):
            return self.jitted_eval_step.lower(*(inputs or self.abstract_eval_inputs()))

    # ------------------------------------------------------------------ state and data

    def init_state(self):
        """A freshly initialised train state, created already sharded."""
        cfg = self.experiment
        return state_lib.create_state(
            cfg.model, self.optimizer, self.mesh, self.rules, cfg.train.seed,
            reference=cfg.diffusion.objective in REFERENCE_OBJECTIVES,
            rollout=self.abstract_state.get("rollout"),
        )  # fmt: skip

    def pipeline(self, *, dataset: str | None = None, seed: int | None = None):
        """This process's data (or one `dataset`, e.g. for evaluation); see `make_pipeline`."""
        return make_pipeline(self.experiment, dataset=dataset, seed=seed)


def pipeline_class(experiment: Experiment) -> type:
    """The pipeline the experiment's objective reads: dialogues for sft_llada, preference
    pairs for vrpo, prompts for grpo, else shards."""
    objective = experiment.diffusion.objective
    if objective == "vrpo":
        return PreferencePipeline
    if objective == "grpo":
        return RlPipeline
    return LladaSftPipeline if objective == "sft_llada" else Pipeline


def make_pipeline(experiment: Experiment, *, dataset: str | None = None, seed: int | None = None):
    """This process's data for `experiment` (or one `dataset`, e.g. for evaluation), checked
    against the model's vocabulary and special ids: a `Pipeline` over prepared shards, for
    objective=sft_llada a `LladaSftPipeline` over dialogues, for vrpo a `PreferencePipeline`
    (held-out data too)."""
    data, tcfg = experiment.data, experiment.train
    process = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if pipeline_class(experiment) is RlPipeline:  # held-out prompts: one rollout per batch
        grpo = experiment.grpo
        pipeline = RlPipeline(dataset or data.datasets[0], tcfg.seq_len - grpo.gen_length,
                              tcfg.batch_size // grpo.group_size,
                              tcfg.seed if seed is None else seed,
                              inner_updates=1 if dataset else grpo.inner_updates,
                              **process)  # fmt: skip
    elif pipeline_class(experiment) is PreferencePipeline:
        pipeline = PreferencePipeline(dataset or data.datasets[0], tcfg.seq_len, tcfg.batch_size,
                                      tcfg.seed if seed is None else seed, **process)  # fmt: skip
    elif pipeline_class(experiment) is LladaSftPipeline and dataset is None:
        from illada_jax.data.tokenizers.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(data.tokenizer) if data.tokenizer else Tokenizer.default()
        pipeline = LladaSftPipeline(data.datasets[0], tcfg.seq_len, tcfg.batch_size, tcfg.seed,
                                    tokenizer, **process)  # fmt: skip
    else:
        spec = PipelineSpec(
            datasets=(dataset,) if dataset else data.datasets,
            weights=() if dataset else data.weights,
            seq_len=tcfg.seq_len,
            global_batch=tcfg.batch_size,
            seed=tcfg.seed if seed is None else seed,
            document_aware=data.document_aware,
            shuffle=data.shuffle,
            read_threads=data.read_threads,
            tokenizer=data.tokenizer,
            raw_field=data.raw_field,
            raw_text_unit=data.raw_text_unit,
            tokenize_workers=data.tokenize_workers,
            seqio_module=data.seqio_module,
            tfds_data_dir=data.tfds_data_dir,
        )
        pipeline = Pipeline(spec, cache_dir=data.cache_dir or None, **process)
    pipeline.check_compatible(experiment.model)
    return pipeline


def build_run(experiment: Experiment, devices: Sequence[Any] | None = None) -> Run:
    """The `Run` of `experiment` on `devices` (default: every device of the job). Raises
    `ConfigError` when the mesh or the batch does not fit the devices."""
    tcfg = experiment.train
    devices = list(devices if devices is not None else jax.devices())
    mesh = mesh_lib.make_mesh(experiment.mesh, devices=devices)
    mesh_lib.check_batch(mesh, tcfg.batch_size, tcfg.grad_accum)
    rules = resolve_rules(experiment.mesh.rules, devices[0].platform)
    # A recipe's schedule scaled to a shorter run (a smoke run): `schedule_note` says so.
    optim_cfg, schedule_note = fit_schedule(experiment.optim, tcfg.steps)
    optimizer = make_optimizer(optim_cfg, total_steps=tcfg.steps)
    schedule = learning_rate_schedule(optim_cfg, total_steps=tcfg.steps)
    graphdef = graphdef_and_specs(experiment.model)[0]
    reference = experiment.diffusion.objective in REFERENCE_OBJECTIVES
    grpo = experiment.diffusion.objective == "grpo"
    rollout = rollout_abstract(experiment, mesh, rules) if grpo else None
    abstract_state = state_lib.abstract_state(experiment.model, optimizer, mesh, rules, tcfg.seed,
                                              reference, rollout)  # fmt: skip
    shardings = jax.tree.map(lambda leaf: leaf.sharding, abstract_state)
    # grpo's train step reads its rows from the state's rollout: its batch is empty.
    keys = () if grpo else pipeline_class(experiment).output_keys

    # Jitted only: traced by `Run.lower_*` under the mesh, never at a call (module doc).
    def train_step_of(diffusion):
        return make_train_step(
            graphdef,
            diffusion,
            optimizer,
            grad_accum=tcfg.grad_accum,
            inject_nan_step=tcfg.inject_nan_step,
            state_shardings=shardings,
            mesh=mesh,
            rules=rules,
            global_batch=tcfg.batch_size,
            batch_keys=keys,
            compute_dtype=weights_compute_dtype(experiment.model),
            vrpo=experiment.vrpo,
            grpo=experiment.grpo,
        )

    train_step = train_step_of(experiment.diffusion)
    phase_steps = {
        size: train_step_of(dataclasses.replace(experiment.diffusion, block_size=size))
        for size in set(experiment.diffusion.block_schedule_sizes)
        if size != experiment.diffusion.block_size
    }
    preference = experiment.diffusion.objective == "vrpo"
    eval_step = make_eval_step(
        graphdef,
        param_shardings=(shardings["params"], shardings["ref_params"])
        if preference
        else shardings["params"],
        mesh=mesh,
        rules=rules,
        global_batch=tcfg.batch_size,
        vrpo=experiment.vrpo if preference else None,
        chunk_size=experiment.diffusion.loss_chunk_size,
        batch_keys=keys if preference else None,
        diffusion=experiment.diffusion,
    )
    return Run(
        experiment=experiment,
        mesh=mesh,
        rules=rules,
        optimizer=optimizer,
        schedule=schedule,
        graphdef=graphdef,
        state_shardings=shardings,
        abstract_state=abstract_state,
        batch_keys=tuple(keys),
        batch_shardings=batch_shardings(mesh, rules, tcfg.batch_size, keys),
        jitted_train_step=train_step,
        jitted_eval_step=eval_step,
        schedule_note=schedule_note,
        jitted_phase_steps=phase_steps,
    )


def _timed_compile(lowered: jax.stages.Lowered) -> tuple[jax.stages.Compiled, float, Any]:
    start = time.perf_counter()
    compiled = lowered.compile()
    return compiled, time.perf_counter() - start, lowered


def program_fingerprint(compiled: jax.stages.Compiled) -> str:
    """A short hash of a compiled program's optimized HLO: equal fingerprints, same executable.
    `illada train` logs its train step's; `illada compile` reports the one it compiled.

    Printed with XLA's fingerprint options (no metadata, canonical names): the source locations
    and stack-frame tables of `compiled.as_text()` name the calling script and change order when
    the persistent compilation cache loads an executable, although the program is the same."""
    from jaxlib import _hlo  # XLA's HLO bindings; HloPrintOptions has no public path in jax

    options = _hlo.HloPrintOptions.fingerprint()
    text = "\n".join(m.to_string(options) for m in compiled.runtime_executable().hlo_modules())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def eval_rows_sharding(run: Run) -> NamedSharding:
    """The sharding of an evaluation batch's `[batch, length]` arrays."""
    return NamedSharding(run.mesh, batch_spec(run.rules, run.mesh, run.experiment.train.batch_size))
