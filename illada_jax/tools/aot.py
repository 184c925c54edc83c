"""`illada compile`: ahead-of-time compile the real train step for a named TPU topology.

Nothing is allocated and no TPU is needed: the devices come from libtpu's topology description
(`illada_jax.parallel.topology`), the state is `train.state.abstract_state` (ShapeDtypeStructs
with their shardings), the batch is ShapeDtypeStructs with the runner's row shardings, and the
step is `train.step.make_train_step` — the function `illada train` runs — lowered and compiled
with `jax.jit(...).lower(...).compile()` under the mesh.

Report, per chip (one JAX device = one chip on every TPU generation here):
- memory from `compiled.memory_analysis()`: arguments, outputs, aliased (donated state reused by
  the outputs), temporaries, generated code; total = arguments + outputs - aliased + temporaries
  + generated code, the peak XLA reserves for the program;
- the verdict `fits`: total <= HBM per chip x `SAFETY_MARGIN` (0.95: the runtime, collectives'
  buffers and fragmentation need headroom). When XLA itself refuses (RESOURCE_EXHAUSTED while
  compiling), `fits=false` with XLA's message and the bytes it asked for;
- FLOPs: `compiled.cost_analysis()["flops"]` is the per-device SPMD program, so the step's
  compiled FLOPs = per-device x chips. XLA counts a while-loop body once (the scanned layers,
  the loss chunks, the micro-batches), so the tool also compiles small unrolled probes and
  corrects for the trip counts (`loop_corrected_flops`; `--no-probes` skips them). They include
  remat recomputation, the loss and the optimizer, and exclude Pallas custom calls (splash
  attention, estimated separately) — compare with the model FLOPs of
  `obs.flops.train_flops_per_token` x global tokens per step (SPEC §8: 6·N + 12·L·d·S);
- estimated step time at a stated MFU: model FLOPs per step / (chips x peak x MFU), and the days
  to train `--tokens` tokens.

TPU defaults (printed as notes; a `set:` directive for the field wins):
- `model.attention_impl=splash` (Pallas flash attention: no [B, H, S, S] scores in HBM);
- `model.compute_dtype=bfloat16` (the pod default, `fiddler:bf16`; parameters stay float32);
- the mesh, when the config leaves it at the default (`fsdp=-1`): FSDP over every chip of a
  slice and data parallelism across slices; when the global batch does not divide by the chips
  (640 on 256 chips) the data-parallel size is the largest that divides it and the rest of each
  slice becomes a `tensor` axis with the `fsdp_tp` rules;
- remat: when the config's policy does not fit and no directive sets it, `full` is tried next.
  For illada_8b at 640 x 8192 on v5p-256 (5 sequences of 8192 tokens per chip) the default
  `save_dots_no_batch` keeps every projection output of 32 layers (~2.7 MB per token in bf16;
  XLA asks for 115.8 GiB of 95 per chip); `full` keeps only each layer's input (~0.26 MB per
  token) and compiles to 36.8 GiB per chip.

`--search` compiles per-device batch x remat candidates (global batch = per-device batch x
data-parallel size) and ranks those that fit by estimated time per token from the compiled FLOPs
(+ the splash attention FLOPs XLA does not count, x4/3 when remat recomputes the forward).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import json
import math
import os
import re
import time

from illada_jax.config.schema import REMAT_POLICIES, ConfigError, Experiment, MeshConfig

SAFETY_MARGIN = 0.95
DEFAULT_MFU = 0.4
DEFAULT_TOKENS = 12e12  # iLLaDA-8B's pre-training budget (SPEC §3.2)
SEARCH_BATCHES = (1, 2, 4, 8)
SEARCH_REMATS = ("full", "save_dots_no_batch", "save_dots")
_LIBTPU_QUIET = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_ACCELERATOR_TYPE": "v5p-8",
    "TPU_WORKER_HOSTNAMES": "localhost",
    # No TPU to guard: let several compiling processes (tests, a search) load libtpu at once
    # instead of failing on /tmp/libtpu_lockfile.
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


# ----------------------------------------------------------------------------- environment


def _has_local_accelerator() -> bool:
    """TPU (/dev/accel*, /dev/vfio/N) or NVIDIA GPU device files on this host."""
    patterns = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*")
    return any(glob.glob(pattern) for pattern in patterns)


def quiet_libtpu_on_cpu_host() -> bool:
    """On a CPU-only host, stop libtpu probing for TPU metadata (PLATFORM.md): set its variables
    before JAX's backends start. Never on TPU VMs. Returns whether it changed anything."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    cpu_only = platforms == "cpu" or (not platforms and not _has_local_accelerator())
    if not cpu_only:
        return False
    if not platforms:
        os.environ["JAX_PLATFORMS"] = "cpu"  # TPU programs still compile via the topology
    for name, value in _LIBTPU_QUIET.items():
        os.environ.setdefault(name, value)
    return True


# ----------------------------------------------------------------------------- the target


@dataclasses.dataclass(frozen=True)
class Target:
    """An experiment made concrete for one slice: its batch, sequence length and mesh."""

    experiment: Experiment
    topology: str
    notes: tuple[str, ...] = ()

    @property
    def global_batch(self) -> int:
        return self.experiment.train.batch_size

    @property
    def seq_len(self) -> int:
        return self.experiment.train.seq_len


def _directive_sets(directives, field: str) -> bool:
    return any(d.startswith("set:") and field in d.partition("=")[0] for d in directives or ())


def tpu_defaults(experiment: Experiment, directives) -> tuple[Experiment, list[str]]:
    """splash attention and bf16 compute unless a `set:` directive chose otherwise."""
    model, notes = experiment.model, []
    if model.attention_impl != "splash" and not _directive_sets(directives, "attention_impl"):
        model = dataclasses.replace(model, attention_impl="splash")
        notes.append("model.attention_impl=splash (TPU default)")
    if model.compute_dtype != "bfloat16" and not _directive_sets(directives, "compute_dtype"):
        model = dataclasses.replace(model, compute_dtype="bfloat16")
        notes.append("model.compute_dtype=bfloat16 (TPU default; parameters stay float32)")
    return dataclasses.replace(experiment, model=model), notes


def auto_mesh(
    num_chips: int, num_slices: int, global_batch: int, grad_accum: int
) -> tuple[MeshConfig, str]:
    """FSDP over each slice, data parallel across slices; a tensor axis takes the chips the
    micro-batch cannot cover (see the module docstring)."""
    chips_per_slice = num_chips // num_slices
    rows = global_batch // grad_accum
    if global_batch % grad_accum or rows % num_slices:
        raise ConfigError(
            f"train.batch_size={global_batch} must divide by grad_accum={grad_accum} x "
            f"{num_slices} slices; choose a batch that is a multiple of {grad_accum * num_slices}"
        )
    fsdp = math.gcd(rows // num_slices, chips_per_slice)
    tensor = chips_per_slice // fsdp
    rules = "fsdp" if tensor == 1 else "fsdp_tp"
    mesh = MeshConfig(dcn_data=num_slices, data=1, fsdp=fsdp, tensor=tensor, rules=rules)
    note = f"mesh dcn_data={num_slices} fsdp={fsdp} tensor={tensor} rules={rules}"
    if tensor > 1:
        note += f" (a micro-batch of {rows} rows covers only {fsdp * num_slices} chips)"
    return mesh, note


def make_target(
    experiment: Experiment,
    topology: str,
    *,
    directives=(),
    global_batch: int | None = None,
    seq_len: int | None = None,
    num_slices: int | None = None,
    tpu_default: bool = True,
) -> Target:
    """The experiment with the batch/sequence overrides, TPU defaults and the slice's mesh."""
    from illada_jax.parallel.topology import parse_slice

    slice_ = parse_slice(topology, num_slices)
    train = dataclasses.replace(
        experiment.train,
        batch_size=global_batch or experiment.train.batch_size,
        seq_len=seq_len or experiment.train.seq_len,
    )
    experiment = dataclasses.replace(experiment, train=train)  # validates seq_len <= max
    notes: list[str] = []
    if tpu_default:
        experiment, notes = tpu_defaults(experiment, directives)
    # The config's own mesh wins when it is not the default (fsdp=-1) or a directive set it.
    if tpu_default and experiment.mesh.fsdp == -1 and not _directive_sets(directives, "mesh."):
        mesh, note = auto_mesh(
            slice_.num_chips, slice_.num_slices, train.batch_size, train.grad_accum
        )
        experiment = dataclasses.replace(experiment, mesh=mesh)
        notes.append(note)
    return Target(experiment, slice_.name, tuple(notes))


# ----------------------------------------------------------------------------- compiling


def _abstract_batch(target: Target, mesh, rules: str) -> dict:
    import jax
    import jax.numpy as jnp

    from illada_jax.data.pipeline import LladaSftPipeline, Pipeline
    from illada_jax.train.step import batch_shardings

    sft = target.experiment.diffusion.objective == "sft_llada"
    keys = (LladaSftPipeline if sft else Pipeline).output_keys
    shardings = batch_shardings(mesh, rules, target.global_batch, keys)
    shape = (target.global_batch, target.seq_len)
    return {
        key: jax.ShapeDtypeStruct(
            shape[:1] if key == "prompt_lengths" else shape, jnp.int32, sharding=shardings[key]
        )
        for key in keys
    }


def _abstract_scalars(mesh) -> tuple:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    replicated = NamedSharding(mesh, PartitionSpec())
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
    controls = {
        name: jax.ShapeDtypeStruct((), dtype, sharding=replicated)
        for name, dtype in (
            ("lr_scale", jnp.float32),
            ("loss_ceiling", jnp.float32),
            ("data_step", jnp.int32),
        )
    }
    return key, controls


def lower_train_step(target: Target, devices):
    """`jax.jit(train_step).lower(...)` of the runner's step on `devices` (abstract is fine)."""
    import jax

    from illada_jax.parallel import mesh as mesh_lib
    from illada_jax.parallel.rules import resolve
    from illada_jax.train import state as state_lib
    from illada_jax.train.optim import make_optimizer
    from illada_jax.train.step import make_train_step

    experiment = target.experiment
    tcfg = experiment.train
    mesh = mesh_lib.make_mesh(experiment.mesh, devices=devices)
    mesh_lib.check_batch(mesh, tcfg.batch_size, tcfg.grad_accum)
    rules = resolve(experiment.mesh.rules, devices[0].platform)
    optimizer = make_optimizer(experiment.optim, total_steps=tcfg.steps)
    graphdef, _, _ = state_lib.model_graphdef_and_specs(experiment.model)
    state = state_lib.abstract_state(experiment.model, optimizer, mesh, rules, tcfg.seed)
    shardings = jax.tree.map(lambda leaf: leaf.sharding, state)
    batch = _abstract_batch(target, mesh, rules)
    key, controls = _abstract_scalars(mesh)
    with jax.set_mesh(mesh):
        step = make_train_step(
            graphdef,
            experiment.diffusion,
            optimizer,
            grad_accum=tcfg.grad_accum,
            state_shardings=shardings,
            mesh=mesh,
            rules=rules,
            global_batch=tcfg.batch_size,
            batch_keys=tuple(batch),
        )
        return step.lower(state, batch, key, controls)


_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Ran out of memory", "exceeds the memory")
# How much XLA wanted, in the two forms its TPU out-of-memory messages take (G = GiB).
_OOM_SIZES = (
    re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)"),
    re.compile(r"Used\s+([\d.]+)([KMGT]?)\s+of\s+[\d.]+[KMGT]?\s+hbm", re.IGNORECASE),
)


def _bytes(value: str, unit: str) -> int:
    return int(float(value) * 1024 ** " KMGT".index(unit or " "))


def compile_target(target: Target, devices):
    """(compiled or None, out-of-memory message or None, seconds). Other errors propagate."""
    start = time.perf_counter()
    try:
        compiled = lower_train_step(target, devices).compile()
    except Exception as err:  # XLA's OOM arrives as a runtime error while compiling
        text = str(err)
        if not any(marker in text for marker in _OOM_MARKERS):
            raise
        return None, text, time.perf_counter() - start
    return compiled, None, time.perf_counter() - start


def _probe_target(target: Target, n_layers: int, chunk: int) -> Target:
    """One sequence per data-parallel rank, `n_layers` unrolled layers, loss chunks of `chunk`."""
    experiment = target.experiment
    return dataclasses.replace(
        target,
        experiment=dataclasses.replace(
            experiment,
            model=dataclasses.replace(experiment.model, n_layers=n_layers, scan_layers=False),
            diffusion=dataclasses.replace(experiment.diffusion, loss_chunk_size=chunk),
            train=dataclasses.replace(experiment.train, batch_size=_dp_size(target), grad_accum=1),
        ),
    )


def _probe_flops(target: Target, devices, n_layers: int, chunk: int) -> float:
    compiled, error, _ = compile_target(_probe_target(target, n_layers, chunk), devices)
    if compiled is None:
        raise ConfigError(f"FLOPs probe ({n_layers} layers, chunk {chunk}) ran out of memory")
    return _compiled_flops(compiled)


def loop_corrected_flops(target: Target, devices) -> float:
    """Per-device FLOPs of one train step with every loop counted as many times as it runs.

    XLA's cost analysis counts a while-loop body once, so the scanned program reports one layer,
    one loss chunk and one micro-batch. Small unrolled probes recover the missing trips:
    F(l layers, chunk c) = F_rest + l·F_layer + c·F_position, from F(1, c), F(2, c) and
    F(1, c/2), each compiled for one sequence per data-parallel rank (unrolled programs need more
    memory than scanned ones, and XLA refuses programs that do not fit); FLOPs grow linearly
    with the batch, so the step is F(L, S) x sequences per rank x grad_accum (the optimizer
    update, scaled along, is negligible).
    """
    model, seq_len = target.experiment.model, target.seq_len
    chunk = min(target.experiment.diffusion.loss_chunk_size, seq_len)
    n_chunks = -(-seq_len // chunk)
    one = _probe_flops(target, devices, 1, chunk)
    per_layer = _probe_flops(target, devices, 2, chunk) - one if model.n_layers > 1 else 0.0
    per_position = 0.0
    if n_chunks > 1 and chunk >= 2:
        half = _probe_flops(target, devices, 1, chunk // 2)
        per_position = (one - half) / (chunk - chunk // 2)
    total = one + (model.n_layers - 1) * per_layer + (n_chunks - 1) * chunk * per_position
    return total * target.global_batch / _dp_size(target)


# ----------------------------------------------------------------------------- the report


@dataclasses.dataclass
class Report:
    """One compile of one target. Bytes are per chip; `*_flops_per_step` are whole-job sums."""

    topology: str
    chips: int
    hbm_per_chip: int
    global_batch: int
    seq_len: int
    grad_accum: int
    per_device_batch: float
    remat: str
    attention: str
    mesh: str
    fits: bool
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    generated_code_bytes: int = 0
    total_bytes: int = 0
    scanned_flops_per_device: float = 0.0
    compiled_flops_per_device: float = 0.0
    flops_source: str = ""
    compiled_flops_per_step: float = 0.0
    uncounted_attention_flops: float = 0.0
    model_flops_per_step: float = 0.0
    tokens_per_step: int = 0
    peak_flops_per_chip: float = 0.0
    mfu: float = DEFAULT_MFU
    est_step_s: float = 0.0
    token_budget: float = DEFAULT_TOKENS
    est_days: float = 0.0
    compile_s: float = 0.0
    probe_s: float = 0.0
    error: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def hardware_s_per_mtok(self) -> float:
        """Seconds per million tokens from the compiled FLOPs at utilisation `mfu` (search)."""
        flops = self.compiled_flops_per_step + self.uncounted_attention_flops
        rate = self.chips * self.peak_flops_per_chip * self.mfu
        return flops / rate / self.tokens_per_step * 1e6 if rate and self.tokens_per_step else 0.0


def _memory(compiled) -> dict[str, int]:
    stats = compiled.memory_analysis()
    fields = {
        "argument_bytes": stats.argument_size_in_bytes,
        "output_bytes": stats.output_size_in_bytes,
        "alias_bytes": stats.alias_size_in_bytes,
        "temp_bytes": stats.temp_size_in_bytes,
        "generated_code_bytes": stats.generated_code_size_in_bytes,
    }
    fields = {name: int(value) for name, value in fields.items()}
    fields["total_bytes"] = (
        fields["argument_bytes"]
        + fields["output_bytes"]
        - fields["alias_bytes"]
        + fields["temp_bytes"]
        + fields["generated_code_bytes"]
    )
    return fields


def _compiled_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _uncounted_attention_flops(target: Target) -> float:
    """Splash attention is a Pallas custom call XLA does not count: its share of SPEC §8's
    12·L·d·S per token, x4/3 when remat recomputes the forward in the backward pass."""
    model = target.experiment.model
    if model.attention_impl != "splash":
        return 0.0
    per_token = 12 * model.n_layers * model.n_heads * model.head_dim * target.seq_len
    recompute = 4 / 3 if model.remat_policy != "none" else 1.0
    return float(per_token * target.global_batch * target.seq_len * recompute)


def _oom_bytes(message: str) -> int:
    """Bytes per chip XLA asked for (temporaries, or its total), 0 when the message has none."""
    for pattern in _OOM_SIZES:
        match = pattern.search(message)
        if match:
            return _bytes(match.group(1), match.group(2).upper())
    return 0


def make_report(target, slice_, compiled, error, seconds, mfu, tokens) -> Report:
    """Everything the console report and `RESULT` line say about one compile."""
    from illada_jax.obs import flops

    experiment = target.experiment
    tokens_per_step = target.global_batch * target.seq_len
    peak = flops.PEAK_FLOPS[flops.peak_table_key(slice_.generation.device_kind)]
    model_flops = flops.train_flops_per_token(experiment.model, target.seq_len) * tokens_per_step
    step_s = model_flops / (slice_.num_chips * peak * mfu)
    mesh = experiment.mesh
    report = Report(
        topology=slice_.name,
        chips=slice_.num_chips,
        hbm_per_chip=slice_.hbm_per_chip,
        global_batch=target.global_batch,
        seq_len=target.seq_len,
        grad_accum=experiment.train.grad_accum,
        per_device_batch=target.global_batch / experiment.train.grad_accum / _dp_size(target),
        remat=experiment.model.remat_policy,
        attention=experiment.model.attention_impl,
        mesh=f"dcn_data={mesh.dcn_data} data={mesh.data} fsdp={mesh.fsdp} "
        f"tensor={mesh.tensor} rules={mesh.rules}",
        fits=False,
        model_flops_per_step=model_flops,
        tokens_per_step=tokens_per_step,
        peak_flops_per_chip=peak,
        mfu=mfu,
        est_step_s=step_s,
        token_budget=tokens,
        est_days=tokens / tokens_per_step * step_s / 86400,
        compile_s=seconds,
        notes=list(target.notes),
    )
    if compiled is None:
        report.error = (error or "").strip()
        report.total_bytes = _oom_bytes(report.error)
        return report
    for name, value in _memory(compiled).items():
        setattr(report, name, value)
    report.scanned_flops_per_device = _compiled_flops(compiled)
    report.compiled_flops_per_device = report.scanned_flops_per_device
    report.flops_source = "as reported: each loop body counted once"
    report.compiled_flops_per_step = report.compiled_flops_per_device * slice_.num_chips
    report.uncounted_attention_flops = _uncounted_attention_flops(target)
    report.fits = 0 < report.total_bytes <= SAFETY_MARGIN * slice_.hbm_per_chip
    return report


def _dp_size(target: Target) -> int:
    mesh = target.experiment.mesh
    return mesh.dcn_data * mesh.data * mesh.fsdp


def _gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB"


def format_report(report: Report) -> str:
    """The human-readable report (ends before the RESULT line)."""
    lines = [
        f"topology        {report.topology}: {report.chips} chips, HBM {_gib(report.hbm_per_chip)}"
        f" per chip, peak {report.peak_flops_per_chip / 1e12:.0f} TFLOP/s bf16 per chip",
        f"step            global batch {report.global_batch} x seq {report.seq_len} = "
        f"{report.tokens_per_step} tokens, grad_accum {report.grad_accum}, "
        f"{report.per_device_batch:g} sequences per chip per micro-batch",
        f"model           attention={report.attention} remat={report.remat}",
        f"mesh            {report.mesh}",
        *(f"default         {note}" for note in report.notes),
        f"compile         {report.compile_s:.1f} s (+ {report.probe_s:.1f} s FLOPs probes)",
    ]
    if report.error:
        first = report.error.splitlines()[0][:400]
        lines.append(f"XLA refused     {first}")
    else:
        lines += [
            "memory per chip (compiled.memory_analysis())",
            f"  arguments     {_gib(report.argument_bytes)}",
            f"  outputs       {_gib(report.output_bytes)}",
            f"  aliased       {_gib(report.alias_bytes)} (donated state reused by outputs)",
            f"  temporaries   {_gib(report.temp_bytes)}",
            f"  generated code {_gib(report.generated_code_bytes)}",
            f"  total         {_gib(report.total_bytes)} = args + outputs - aliased + temp + code",
            f"FLOPs per step  compiled {report.compiled_flops_per_step:.4g} "
            f"= cost_analysis per device {report.compiled_flops_per_device:.4g} x {report.chips} "
            f"chips ({report.flops_source}; the scanned program alone reports "
            f"{report.scanned_flops_per_device:.4g})",
            f"                model {report.model_flops_per_step:.4g} (6N + 12·L·d·S per token);"
            f" compiled/model {_ratio(report):.2f}",
        ]
        if report.uncounted_attention_flops:
            lines.append(
                f"                splash attention is a custom call XLA does not count: "
                f"~{report.uncounted_attention_flops:.4g} more"
            )
    budget_line = (
        f"estimate        {report.est_step_s:.3g} s/step at MFU {report.mfu:g}; "
        f"{report.token_budget:.3g} tokens in {report.est_days:.1f} days"
    )
    verdict = (
        f"fits            {str(report.fits).lower()} (total <= {SAFETY_MARGIN:g} x HBM "
        f"= {_gib(SAFETY_MARGIN * report.hbm_per_chip)})"
    )
    return "\n".join([*lines, budget_line, verdict])


def _ratio(report: Report) -> float:
    return report.compiled_flops_per_step / report.model_flops_per_step


def result_line(report: Report) -> str:
    return (
        f"RESULT fits={str(report.fits).lower()} bytes_per_chip={report.total_bytes} "
        f"hbm_per_chip={report.hbm_per_chip} flops_per_step={report.compiled_flops_per_step:.6g} "
        f"model_flops_per_step={report.model_flops_per_step:.6g}"
    )


# ----------------------------------------------------------------------------- entry points


@functools.cache
def _devices(topology: str) -> tuple:
    from illada_jax.parallel.topology import abstract_devices

    return tuple(abstract_devices(topology))


def compile_report(
    target: Target, *, mfu=DEFAULT_MFU, tokens=DEFAULT_TOKENS, probes=True
) -> Report:
    """Compile `target` on its abstract slice and return its `Report`; `probes`: also correct
    the FLOPs for loops (`add_flop_probes`), else they count each loop body once."""
    from illada_jax.parallel.topology import parse_slice

    devices = list(_devices(target.topology))
    compiled, error, seconds = compile_target(target, devices)
    report = make_report(
        target, parse_slice(target.topology), compiled, error, seconds, mfu, tokens
    )
    if compiled is not None and probes:
        add_flop_probes(report, target)
    return report


def add_flop_probes(report: Report, target: Target) -> None:
    """Replace the report's FLOPs by `loop_corrected_flops` (a few small compiles)."""
    start = time.perf_counter()
    try:
        per_device = loop_corrected_flops(target, list(_devices(target.topology)))
    except ConfigError as err:
        report.notes.append(str(err))
        return
    finally:
        report.probe_s = time.perf_counter() - start
    report.compiled_flops_per_device = per_device
    report.compiled_flops_per_step = per_device * report.chips
    report.flops_source = "loop-corrected with probes"


def _with_remat(target: Target, remat: str, note: str | None = None) -> Target:
    model = dataclasses.replace(target.experiment.model, remat_policy=remat)
    notes = target.notes + ((note,) if note else ())
    return dataclasses.replace(
        target, experiment=dataclasses.replace(target.experiment, model=model), notes=notes
    )


def compile_with_fallback(target: Target, directives=(), **kwargs) -> Report:
    """Compile; when it does not fit and no directive fixed the remat policy, try `full`."""
    probes = kwargs.pop("probes", True)
    report = compile_report(target, probes=False, **kwargs)
    policy = target.experiment.model.remat_policy
    if report.fits or policy == "full" or _directive_sets(directives, "remat_policy"):
        if probes and not report.error:
            add_flop_probes(report, target)
        return report
    fallback = _with_remat(
        target,
        "full",
        f"model.remat_policy=full ({policy} does not fit: "
        f"{_gib(report.total_bytes) if report.total_bytes else report.error[:120]})",
    )
    return compile_report(fallback, probes=probes, **kwargs)


def search_targets(target: Target, batches, remats, directives=()) -> list[Target]:
    """Per-device batch x remat candidates (global batch = per-device batch x dp size)."""
    out = []
    for per_device in batches:
        base = make_target(
            target.experiment,
            target.topology,
            directives=directives,
            global_batch=per_device * _dp_size(target) * target.experiment.train.grad_accum,
        )
        out += [_with_remat(base, remat) for remat in remats]
    return out


def run_search(target: Target, batches, remats, directives=(), **estimates) -> list[Report]:
    """Compile every candidate; FLOPs are probed once per remat policy (on its first candidate
    that fits) and scaled by tokens for the others (FLOPs per token barely depend on batch)."""
    probes = estimates.pop("probes", True)
    candidates = search_targets(target, batches, remats, directives)
    reports = [compile_report(c, probes=False, **estimates) for c in candidates]
    per_token: dict[str, float] = {}
    for report, candidate in zip(reports, candidates):
        if not report.fits or not probes:
            continue
        if report.remat not in per_token:
            add_flop_probes(report, candidate)
            per_token[report.remat] = report.compiled_flops_per_step / report.tokens_per_step
        report.compiled_flops_per_step = per_token[report.remat] * report.tokens_per_step
        report.compiled_flops_per_device = report.compiled_flops_per_step / report.chips
        report.flops_source = "loop-corrected with probes (per token, scaled)"
    return reports


def format_search(reports: list[Report]) -> str:
    header = (
        f"{'per-chip batch':>14} {'global':>7} {'remat':>19} {'fits':>5} {'GiB/chip':>9} "
        f"{'compiled/model':>14} {'s/Mtok (hw)':>11} {'step s':>7}"
    )
    rows = [header]
    for r in reports:
        rows.append(
            f"{r.per_device_batch:>14g} {r.global_batch:>7} {r.remat:>19} "
            f"{str(r.fits).lower():>5} {r.total_bytes / 1024**3:>9.2f} "
            f"{(_ratio(r) if r.compiled_flops_per_step else 0):>14.2f} "
            f"{r.hardware_s_per_mtok:>11.3f} {r.est_step_s:>7.2f}"
        )
    return "\n".join(rows)


def best_of(reports: list[Report]) -> Report | None:
    """The fitting candidate with the least estimated time per token (compiled FLOPs)."""
    fitting = [r for r in reports if r.fits]
    # Ties (same FLOPs per token) go to the larger batch: better MXU use than the model sees.
    key = lambda r: (round(r.hardware_s_per_mtok, 6), -r.per_device_batch)  # noqa: E731
    return min(fitting, key=key) if fitting else None


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, e.g. 1,2,4,8")
    return values


def _remat_list(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in REMAT_POLICIES]
    if not values or bad:
        raise argparse.ArgumentTypeError(
            f"{text!r}: remat policies are {', '.join(REMAT_POLICIES)}"
        )
    return values


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `illada compile` (the parent adds `--config`)."""
    parser.add_argument(
        "--topology",
        required=True,
        help="TPU slice: v4-8, v5e-16, v5p-256, v6e-256, 2xv5p-256 or v5p:4x4x8 "
        "(v4/v5p count TensorCores, v5e/v6e chips, as in Google's accelerator types)",
    )
    parser.add_argument("--num-slices", type=int, default=None, help="slices joined over DCN")
    parser.add_argument("--global-batch", type=int, default=None, help="train.batch_size")
    parser.add_argument("--seq-len", type=int, default=None, help="train.seq_len")
    parser.add_argument(
        "--mfu", type=float, default=DEFAULT_MFU, help="model FLOPs utilisation for estimates"
    )
    parser.add_argument(
        "--tokens", type=float, default=DEFAULT_TOKENS, help="token budget for the days estimate"
    )
    parser.add_argument(
        "--search", action="store_true", help="compile per-chip batch x remat candidates"
    )
    parser.add_argument("--search-batches", type=_int_list, default=SEARCH_BATCHES)
    parser.add_argument("--search-remat", type=_remat_list, default=SEARCH_REMATS)
    parser.add_argument(
        "--no-tpu-defaults",
        action="store_true",
        help="compile the config as is (no splash / bf16 / auto-mesh / remat fallback)",
    )
    parser.add_argument(
        "--no-probes",
        action="store_true",
        help="skip the small FLOPs probe compiles (compiled FLOPs then count loops once)",
    )
    parser.add_argument("--json", default=None, help="also write the report(s) to this file")


def _check_args(args: argparse.Namespace) -> None:
    if not 0 < args.mfu <= 1:
        raise ConfigError(f"--mfu={args.mfu} must lie in (0, 1], e.g. 0.4")
    if not args.tokens > 0:
        raise ConfigError(f"--tokens={args.tokens} must be > 0, e.g. 12e12")
    for name in ("global_batch", "seq_len", "num_slices"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')}={value} must be >= 1")


def run_compile(args: argparse.Namespace) -> int:
    """`illada compile`: print the report and the RESULT line; 0 when it fits, 1 when not."""
    quiet_libtpu_on_cpu_host()
    from illada_jax.config import flags

    _check_args(args)
    directives = list(args.config or ())
    experiment = flags.experiment_from_flags(directives)
    target = make_target(
        experiment,
        args.topology,
        directives=directives,
        global_batch=args.global_batch,
        seq_len=args.seq_len,
        num_slices=args.num_slices,
        tpu_default=not args.no_tpu_defaults,
    )
    estimates = {"mfu": args.mfu, "tokens": args.tokens, "probes": not args.no_probes}
    reports = []
    if args.search:
        reports = run_search(
            target, args.search_batches, args.search_remat, directives, **estimates
        )
        print(format_search(reports))
        report = best_of(reports) or reports[-1]
        print(f"fastest that fits: {'none' if not report.fits else report.remat}")
    elif args.no_tpu_defaults:
        report = compile_report(target, **estimates)
    else:
        report = compile_with_fallback(target, directives, **estimates)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"report": vars(report), "search": [vars(r) for r in reports]}, f, indent=1)
    print(result_line(report))
    return 0 if report.fits else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="illada compile", description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", default=[], metavar="DIRECTIVE")
    add_compile_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_compile(args)
    except ConfigError as err:
        print(f"illada compile: config error: {err}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
