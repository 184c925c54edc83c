"""The `illada compile` report: memory per chip, FLOPs, estimates and the verdict `fits`.

- memory from `compiled.memory_analysis()`: arguments, outputs, aliased (donated state reused by
  the outputs), temporaries, generated code; total = arguments + outputs - aliased + temporaries
  + generated code, the peak XLA reserves for the program;
- `fits`: total <= HBM per chip x `SAFETY_MARGIN` (0.95: the runtime, collectives' buffers and
  fragmentation need headroom). When XLA itself refuses (RESOURCE_EXHAUSTED while compiling),
  `fits=false` with XLA's message and the bytes it asked for;
- FLOPs: `compiled.cost_analysis()["flops"]` is the per-device SPMD program, so the step's
  compiled FLOPs = per-device x chips (loops counted once unless corrected by
  `tools/flop_probes.py`); model FLOPs = `obs.flops.train_flops_per_token` x tokens per step;
- the estimated step time at a stated MFU: model FLOPs per step / (chips x peak x MFU), and the
  days to train a token budget.
"""

from __future__ import annotations

import dataclasses
import re

from illada_jax.config.schema import Experiment

SAFETY_MARGIN = 0.95
DEFAULT_MFU = 0.4
DEFAULT_TOKENS = 12e12  # iLLaDA-8B's pre-training budget

OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Ran out of memory", "exceeds the memory")
# How much XLA wanted, in the two forms its TPU out-of-memory messages take (G = GiB).
_OOM_SIZES = (
    re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)"),
    re.compile(r"Used\s+([\d.]+)([KMGT]?)\s+of\s+[\d.]+[KMGT]?\s+hbm", re.IGNORECASE),
)


def _bytes(value: str, unit: str) -> int:
    return int(float(value) * 1024 ** " KMGT".index(unit or " "))


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
    program: str = ""  # `train.builder.program_fingerprint` of the compiled step
    libtpu_init_args: str = ""  # the libtpu flags it was compiled with (TPU targets)

    @property
    def hardware_s_per_mtok(self) -> float:
        """Seconds per million tokens from the compiled FLOPs at utilisation `mfu` (search)."""
        flops = self.compiled_flops_per_step + self.uncounted_attention_flops
        rate = self.chips * self.peak_flops_per_chip * self.mfu
        return flops / rate / self.tokens_per_step * 1e6 if rate and self.tokens_per_step else 0.0


def memory(compiled) -> dict[str, int]:
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


def compiled_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def uncounted_attention_flops(experiment: Experiment) -> float:
    """Splash attention is a Pallas custom call XLA does not count: its share of the
    12·L·d·S attention FLOPs per token (docs/architecture.md#flops), x4/3 when remat recomputes
    the forward in the backward pass."""
    model, tcfg = experiment.model, experiment.train
    if model.attention_impl != "splash":
        return 0.0
    per_token = 12 * model.n_layers * model.n_heads * model.head_dim * tcfg.seq_len
    recompute = 4 / 3 if model.remat_policy != "none" else 1.0
    return float(per_token * tcfg.batch_size * tcfg.seq_len * recompute)


def oom_bytes(message: str) -> int:
    """Bytes per chip XLA asked for (temporaries, or its total), 0 when the message has none."""
    for pattern in _OOM_SIZES:
        match = pattern.search(message)
        if match:
            return _bytes(match.group(1), match.group(2).upper())
    return 0


def make_report(experiment: Experiment, slice_, mesh, rules: str, compiled, error: str | None,
                seconds: float, mfu: float, tokens: float, notes=()) -> Report:  # fmt: skip
    """Everything the console report and `RESULT` line say about one compile of `experiment` on
    `slice_` (a `parallel.topology.Slice`) with the resolved `mesh` (a `jax.sharding.Mesh`) and
    rule table `rules`."""
    from illada_jax.obs import flops
    from illada_jax.parallel.mesh import data_parallel_size

    tcfg = experiment.train
    tokens_per_step, flops_per_token = flops.train_step_work(experiment)
    peak = getattr(slice_, "peak_flops_per_chip", None)  # a host target: measured
    peak = peak or flops.PEAK_FLOPS[flops.peak_table_key(slice_.generation.device_kind)]
    model_flops = flops_per_token * tokens_per_step
    step_s = model_flops / (slice_.num_chips * peak * mfu)
    report = Report(
        topology=slice_.name,
        chips=slice_.num_chips,
        hbm_per_chip=slice_.hbm_per_chip,
        global_batch=tcfg.batch_size,
        seq_len=tcfg.seq_len,
        grad_accum=tcfg.grad_accum,
        per_device_batch=tcfg.batch_size / tcfg.grad_accum / data_parallel_size(mesh),
        remat=experiment.model.remat_policy,
        attention=experiment.model.attention_impl,
        mesh=" ".join(f"{axis}={size}" for axis, size in mesh.shape.items()) + f" rules={rules}",
        fits=False,
        model_flops_per_step=model_flops,
        tokens_per_step=tokens_per_step,
        peak_flops_per_chip=peak,
        mfu=mfu,
        est_step_s=step_s,
        token_budget=tokens,
        est_days=tokens / tokens_per_step * step_s / 86400,
        compile_s=seconds,
        notes=list(notes),
    )
    if compiled is None:
        report.error = (error or "").strip()
        report.total_bytes = oom_bytes(report.error)
        return report
    for name, value in memory(compiled).items():
        setattr(report, name, value)
    report.scanned_flops_per_device = compiled_flops(compiled)
    report.compiled_flops_per_device = report.scanned_flops_per_device
    report.flops_source = "as reported: each loop body counted once"
    report.compiled_flops_per_step = report.compiled_flops_per_device * slice_.num_chips
    report.uncounted_attention_flops = uncounted_attention_flops(experiment)
    report.fits = 0 < report.total_bytes <= SAFETY_MARGIN * slice_.hbm_per_chip
    return report


def gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB"


def format_report(report: Report) -> str:
    """The human-readable report (ends before the RESULT line)."""
    lines = [
        f"topology        {report.topology}: {report.chips} chips, HBM {gib(report.hbm_per_chip)}"
        f" per chip, peak {report.peak_flops_per_chip / 1e12:.0f} TFLOP/s bf16 per chip",
        f"step            global batch {report.global_batch} x seq {report.seq_len} = "
        f"{report.tokens_per_step} tokens, grad_accum {report.grad_accum}, "
        f"{report.per_device_batch:g} sequences per chip per micro-batch",
        f"model           attention={report.attention} remat={report.remat}",
        f"mesh            {report.mesh}",
        *(f"note            {note}" for note in report.notes),
        f"compile         {report.compile_s:.1f} s (+ {report.probe_s:.1f} s FLOPs probes)",
    ]
    if report.libtpu_init_args:
        lines.append(f"libtpu flags    {report.libtpu_init_args}")
    if report.program:
        lines.append(f"program         {report.program} (the fingerprint `illada train` prints)")
    if report.error:
        first = report.error.splitlines()[0][:400]
        lines.append(f"XLA refused     {first}")
    else:
        lines += [
            "memory per chip (compiled.memory_analysis())",
            f"  arguments     {gib(report.argument_bytes)}",
            f"  outputs       {gib(report.output_bytes)}",
            f"  aliased       {gib(report.alias_bytes)} (donated state reused by outputs)",
            f"  temporaries   {gib(report.temp_bytes)}",
            f"  generated code {gib(report.generated_code_bytes)}",
            f"  total         {gib(report.total_bytes)} = args + outputs - aliased + temp + code",
            f"FLOPs per step  compiled {report.compiled_flops_per_step:.4g} "
            f"= cost_analysis per device {report.compiled_flops_per_device:.4g} x {report.chips} "
            f"chips ({report.flops_source}; the scanned program alone reports "
            f"{report.scanned_flops_per_device:.4g})",
            f"                model {report.model_flops_per_step:.4g} (6N + 12·L·d·S per token);"
            f" compiled/model {ratio(report):.2f}",
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
        f"= {gib(SAFETY_MARGIN * report.hbm_per_chip)})"
    )
    return "\n".join([*lines, budget_line, verdict])


def ratio(report: Report) -> float:
    return report.compiled_flops_per_step / report.model_flops_per_step


def result_line(report: Report) -> str:
    return (
        f"RESULT fits={str(report.fits).lower()} bytes_per_chip={report.total_bytes} "
        f"hbm_per_chip={report.hbm_per_chip} flops_per_step={report.compiled_flops_per_step:.6g} "
        f"model_flops_per_step={report.model_flops_per_step:.6g} program={report.program or '-'}"
    )


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
            f"{(ratio(r) if r.compiled_flops_per_step else 0):>14.2f} "
            f"{r.hardware_s_per_mtok:>11.3f} {r.est_step_s:>7.2f}"
        )
    return "\n".join(rows)
