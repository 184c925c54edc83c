"""`illada compile`: ahead-of-time compile an experiment's train step for a named TPU topology.

Nothing is allocated and no TPU is needed: the devices come from libtpu's topology description
(`parallel/topology.py`), and the run is built by `train.builder.build_run` — the function
`illada train` builds its run with — on those abstract devices; `Run.lower_train_step()` (the
lowering the runner compiles and calls, under the mesh, on the abstract twins of its inputs) is
compiled here with the TPU generation's libtpu flags (`parallel/tpu_runtime.py`, what the
launchers set on the workers). The report's `program` fingerprint is the one `illada train`
prints for its compiled step. `--topology=cpu` compiles for this host's own devices instead. The
experiment is compiled exactly as given: a pod recipe (configs/) carries its attention kernel,
dtypes, mesh, remat policy and batch, so the report describes the program the pod runs.
`--global-batch` / `--seq-len` are shorthands for `set:train.batch_size=` / `set:train.seq_len=`
and change the run the same way for training.

When the program does not fit, the report says so (exit code 1) and suggests what to change;
`--search` compiles per-chip batch x remat candidates (global batch = per-chip batch x
data-parallel size) and ranks those that fit by estimated time per token from the compiled FLOPs
(+ the splash attention FLOPs XLA does not count, x4/3 when remat recomputes the forward).
Reporting: `tools/aot_report.py`; loop-corrected FLOPs: `tools/flop_probes.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import time

from illada_jax.config.schema import ConfigError, Experiment
from illada_jax.tools import aot_report
from illada_jax.tools.aot_report import Report
from illada_jax.tools.flop_probes import loop_corrected_flops

SEARCH_BATCHES = (1, 2, 4, 8)
SEARCH_REMATS = ("full", "save_dots_no_batch", "save_dots")


HOST = "cpu"  # `--topology=cpu`: this host's own CPU devices, as `illada train` uses them here


@dataclasses.dataclass(frozen=True)
class HostDevices:
    """This host's JAX CPU devices as a compile target (`--topology=cpu`): the program `illada
    train` compiles on this machine. Memory per device: the host's RAM shared by its devices;
    peak: the measured matmul rate (`obs.flops.device_peak_flops`)."""

    name: str
    num_chips: int
    hbm_per_chip: int
    peak_flops_per_chip: float


@dataclasses.dataclass(frozen=True)
class Target:
    """An experiment and the TPU slice (or, `topology="cpu"`, this host) to compile it for."""

    experiment: Experiment
    topology: str
    num_slices: int | None = None

    @property
    def is_host(self) -> bool:
        return self.topology.strip().lower() == HOST

    def slice(self):
        if self.is_host:
            return _host_devices(self.experiment.model.compute_dtype)
        from illada_jax.parallel.topology import parse_slice

        return parse_slice(self.topology, self.num_slices)

    def devices(self) -> list:
        if self.is_host:
            import jax

            if self.num_slices not in (None, 1):
                raise ConfigError("--topology=cpu is this host: --num-slices does not apply")
            return jax.devices("cpu")
        return list(_devices(self.topology, self.num_slices))

    def with_experiment(self, experiment: Experiment) -> Target:
        return dataclasses.replace(self, experiment=experiment)


@functools.cache
def _host_devices(compute_dtype: str) -> HostDevices:
    import os

    import jax

    from illada_jax.obs.flops import device_peak_flops

    devices = jax.devices("cpu")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    peak, _ = device_peak_flops(devices[0], compute_dtype)
    return HostDevices(f"cpu-{len(devices)}", len(devices), ram // len(devices), peak)

    def with_experiment(self, experiment: Experiment) -> Target:
        return dataclasses.replace(self, experiment=experiment)


@functools.cache
def _devices(topology: str, num_slices: int | None) -> tuple:
    from illada_jax.parallel.topology import abstract_devices

    return tuple(abstract_devices(topology, num_slices))


def with_shape(experiment: Experiment, global_batch: int | None = None,
               seq_len: int | None = None) -> Experiment:  # fmt: skip
    """`--global-batch` / `--seq-len`: the same as `set:train.batch_size=` / `set:train.seq_len=`."""
    train = dataclasses.replace(
        experiment.train,
        batch_size=global_batch or experiment.train.batch_size,
        seq_len=seq_len or experiment.train.seq_len,
    )
    return dataclasses.replace(experiment, train=train)  # validates seq_len <= max_seq_len


def build_target_run(target: Target):
    """`train.builder.build_run` of the target's experiment on the slice's abstract devices."""
    from illada_jax.train.builder import build_run

    return build_run(target.experiment, devices=target.devices())


def lower(target: Target):
    """The lowered train step (`jax.stages.Lowered`) and its run."""
    run = build_target_run(target)
    return run.lower_train_step(), run


def compile_target(target: Target, on_lowered=None):
    """(compiled or None, out-of-memory message or None, seconds, run). Other errors propagate.
    `on_lowered(lowered)` sees the lowering that is compiled (`--dump-hlo`): lowering again in the
    same process would not give the same program (Pallas kernels get numbered names)."""
    start = time.perf_counter()
    lowered, run = lower(target)
    if on_lowered is not None:
        on_lowered(lowered)
    try:
        compiled = lowered.compile()
    except Exception as err:  # XLA's OOM arrives as a runtime error while compiling
        text = str(err)
        if not any(marker in text for marker in aot_report.OOM_MARKERS):
            raise
        return None, text, time.perf_counter() - start, run
    return compiled, None, time.perf_counter() - start, run


def compile_report(target: Target, *, mfu: float = aot_report.DEFAULT_MFU,
                   tokens: float = aot_report.DEFAULT_TOKENS, probes: bool = True,
                   on_lowered=None) -> Report:  # fmt: skip
    """Compile `target` and return its `Report`; `probes`: also correct the FLOPs for loops
    (`add_flop_probes`), else they count each loop body once; `on_lowered`: see
    `compile_target`."""
    compiled, error, seconds, run = compile_target(target, on_lowered)
    report = aot_report.make_report(target.experiment, target.slice(), run.mesh, run.rules,
                                    compiled, error, seconds, mfu, tokens,
                                    notes=advice(target, run, compiled))  # fmt: skip
    if compiled is not None:
        from illada_jax.train.builder import program_fingerprint

        report.program = program_fingerprint(compiled)
    if not target.is_host:
        import os

        report.libtpu_init_args = os.environ.get("LIBTPU_INIT_ARGS", "")
    if compiled is not None and probes:
        add_flop_probes(report, target, run)
    return report


def advice(target: Target, run, compiled) -> list[str]:
    """What to try when the program does not fit (nothing when it does)."""
    if compiled is not None:
        stats = aot_report.memory(compiled)["total_bytes"]
        if stats <= aot_report.SAFETY_MARGIN * target.slice().hbm_per_chip:
            return []
    model = target.experiment.model
    notes = []
    if model.remat_policy != "full":
        notes.append("try --config=set:model.remat_policy=full (keeps only each layer's input)")
    notes.append("or a smaller batch per chip: --search ranks per-chip batch x remat candidates")
    return notes


def add_flop_probes(report: Report, target: Target, run) -> None:
    """Replace the report's FLOPs by the loop-corrected ones (a few small compiles)."""
    from illada_jax.parallel.mesh import data_parallel_size

    def probe_flops(experiment: Experiment) -> float:
        compiled, _, _, _ = compile_target(target.with_experiment(experiment))
        if compiled is None:
            raise ConfigError("a FLOPs probe ran out of memory")
        return aot_report.compiled_flops(compiled)

    start = time.perf_counter()
    try:
        per_device = loop_corrected_flops(
            target.experiment, data_parallel_size(run.mesh), probe_flops
        )
    except ConfigError as err:
        report.notes.append(str(err))
        return
    finally:
        report.probe_s = time.perf_counter() - start
    report.compiled_flops_per_device = per_device
    report.compiled_flops_per_step = per_device * report.chips
    report.flops_source = "loop-corrected with probes"


def search_targets(target: Target, batches, remats) -> list[Target]:
    """Per-chip batch x remat candidates (global batch = per-chip batch x dp x grad_accum)."""
    from illada_jax.parallel.mesh import data_parallel_size, make_mesh

    experiment = target.experiment
    dp = data_parallel_size(make_mesh(experiment.mesh, devices=target.devices()))
    out = []
    for per_chip in batches:
        shaped = with_shape(experiment, global_batch=per_chip * dp * experiment.train.grad_accum)
        for remat in remats:
            model = dataclasses.replace(shaped.model, remat_policy=remat)
            out.append(target.with_experiment(dataclasses.replace(shaped, model=model)))
    return out


def run_search(target: Target, batches, remats, **estimates) -> list[Report]:
    """Compile every candidate; FLOPs are probed once per remat policy (on its first candidate
    that fits) and scaled by tokens for the others (FLOPs per token barely depend on batch)."""
    probes = estimates.pop("probes", True)
    candidates = search_targets(target, batches, remats)
    reports = [compile_report(c, probes=False, **estimates) for c in candidates]
    per_token: dict[str, float] = {}
    for report, candidate in zip(reports, candidates):
        if not report.fits or not probes:
            continue
        if report.remat not in per_token:
            add_flop_probes(report, candidate, build_target_run(candidate))
            if not report.flops_source.startswith("loop-corrected"):
                continue  # the probes failed (noted in the report): nothing to scale
            per_token[report.remat] = report.compiled_flops_per_step / report.tokens_per_step
        report.compiled_flops_per_step = per_token[report.remat] * report.tokens_per_step
        report.compiled_flops_per_device = report.compiled_flops_per_step / report.chips
        report.flops_source = "loop-corrected with probes (per token, scaled)"
    return reports


def best_of(reports: list[Report]) -> Report | None:
    """The fitting candidate with the least estimated time per token (compiled FLOPs)."""
    fitting = [r for r in reports if r.fits]
    # Ties (same FLOPs per token) go to the larger batch: better MXU use than the model sees.
    key = lambda r: (round(r.hardware_s_per_mtok, 6), -r.per_device_batch)  # noqa: E731
    return min(fitting, key=key) if fitting else None
