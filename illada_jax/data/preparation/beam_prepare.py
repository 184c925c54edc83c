"""`illada prepare --runner beam`: the `prepare.py` preparation as an Apache Beam pipeline.

Same inputs, tokenizers, bad-record rules and output layout (`manifest.py`) as the single-host
path; the launching process checks the inputs, runs the pipeline (locally Beam's DirectRunner with
worker processes, on a cluster whatever `--runner` the Beam options name) and writes
`manifest.json` last, after every shard is finished.

Work units. For the file formats (text, jsonl, parquet) the input files, in the single-host order
(the inputs as given, a directory's files sorted), are grouped into units of consecutive files that
hold at least `shard_chars` bytes together (a larger file is a unit of its own); tfds, seqio and
embedded inputs are one unit. The pipeline:

    units ─Read (one worker per unit)─▶ ((unit u, shard k in u), documents)   + per unit: shard
          count, bad-record Counter
          ─Reshuffle─▶ Write (any worker: tokenise, `write_records` as shard offset(u) + k)
    shard stats ─ToList─┐
    bad Counters ─Sum───┴─▶ one summary file ─▶ the launcher writes manifest.json

Read cuts a unit's documents into shards exactly as the single-host path cuts its whole stream
(`_chunk_documents`: a shard closes once it holds >= shard_chars characters). offset(u) is the
number of shards of the units before u (a side input built from the per-unit shard counts), so
numbering depends on the inputs only. Counts reach the launcher as data (a CombineGlobally of
Counters and a list of per-shard stats, written to `.beam-summary.json`), not as Beam metrics,
which some runners report only approximately: the manifest's counts are exact on every runner,
retries included.

Order guarantees, whatever the runner and the number of workers:
- shard files are byte-identical from run to run (they depend on the units only);
- reading the shards in order gives the single-host records in the single-host order, and the
  manifest's document, record, token and bad-record counts equal the single-host ones;
- with one unit (one input file, files of fewer than `shard_chars` bytes in all, or a non-file
  format) the `.arrayrecord` and `.lengths.npy` files are byte-identical to the single-host
  path's, so a training pipeline cuts the same windows;
- with several units a shard never spans two units (a single-host shard may), so shard
  boundaries, and the windows near them (a window never spans shards), differ there.

Resuming: a re-run with the same inputs, options and tokenizer re-reads the units but neither
tokenises nor writes the shards that are already finished; a directory holding shards of another
run (a single-host run included: numbering may differ) is an error. `options.runner = "beam"` in
the manifest tells the two apart.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence

from illada_jax import storage
from illada_jax.data.preparation.prepare import (
    WRITER_OPTIONS,
    PrepareError,
    _chunk_documents,
    _finished_shard,
    _tokenizer_info,
    _worker_tokenizer,
    _write_shard,
    check_not_empty,
    remove_partial_files,
    run_fingerprint,
    write_manifest,
)
from illada_jax.data.sources import formats

FILE_FORMATS = ("text", "jsonl", "parquet")
SUMMARY = ".beam-summary.json"  # in the output directory while the launcher reads it
# Runner names as Beam matches them (lower case, "Runner" optional). Local ones see this
# machine's files; the DirectRunner's options (--direct_*) apply to the direct ones.
LOCAL_RUNNERS = {"direct", "switchingdirect", "bundlebaseddirect", "fnapi", "prism", "interactive"}
DIRECT_RUNNERS = {"direct", "switchingdirect", "fnapi"}
# A worker's exception reaches the launcher as text; the project's errors are found in it.
_WORKER_ERROR = re.compile(r"\b(\w+Error): (.+)")
_PROJECT_ERRORS = ("PrepareError", "SourceError", "TokenizerError", "MissingInputError")


class _ApitoolsNotice(logging.Filter):
    """Beam's GCP modules log a warning at import when the optional BigQuery client is missing
    (not needed here); Beam logs it through the root logger, so it is filtered there, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


def _import_beam():
    notice = _ApitoolsNotice()
    logging.getLogger().addFilter(notice)
    try:
        import apache_beam
    except ImportError as err:
        raise PrepareError(
            "--runner beam needs the [beam] extra: pip install 'illada-jax[beam]'"
        ) from err
    finally:
        logging.getLogger().removeFilter(notice)
    return apache_beam


def _runner_name(options) -> str | None:
    """The runner `options` (a PipelineOptions) name, normalised: `dataflow`, `direct`, ..."""
    runner = options.get_all_options(drop_default=True).get("runner")
    return runner and str(runner).rsplit(".", 1)[-1].lower().removesuffix("runner")


def pipeline_options(options: Sequence[str], workers: int = 2):
    """`PipelineOptions` from Beam's own command-line options, passed through unchanged. With no
    runner named, `--runner=FnApiRunner`: the engine Beam's DirectRunner runs batch pipelines on,
    named because Beam 2.77's DirectRunner first tries Prism, a Go binary it downloads from
    GitHub, which needs the network and ignores the --direct_* options. For these local runners
    `--direct_num_workers=workers` and `--direct_running_mode=multi_processing` are added unless
    set: processes, not threads, since reading (JSON, UTF-8) and writing hold the GIL."""
    _import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    options = list(options)
    parsed = PipelineOptions(options)
    given, runner = parsed.get_all_options(drop_default=True), _runner_name(parsed)
    if runner is None:
        options.append("--runner=FnApiRunner")
    if runner is None or runner in DIRECT_RUNNERS:
        if "direct_num_workers" not in given:
            options.append(f"--direct_num_workers={workers}")
        if "direct_running_mode" not in given:
            options.append("--direct_running_mode=multi_processing")
    return PipelineOptions(options)


def work_units(fmt: str, inputs: Sequence[str], files: list, shard_chars: int) -> list[list[str]]:
    """Inputs of each work unit, in order. files: `formats.file_signature` (path, bytes, mtime)
    of every input file (file formats; empty otherwise)."""
    if fmt not in FILE_FORMATS:
        return [list(inputs)]
    units, unit, size = [], [], 0
    for path, nbytes, _ in files:
        unit.append(path)
        size += nbytes
        if size >= shard_chars:
            units.append(unit)
            unit, size = [], 0
    return units + [unit] if unit else units


def _shard_offsets(counts: list[tuple[int, int]]) -> dict[int, int]:
    """{unit: number of its first shard} from [(unit, shards in unit)] in any order."""
    offsets, total = {}, 0
    for unit, count in sorted(counts):
        offsets[unit] = total
        total += count
    return offsets


def _sum_counters(counters) -> collections.Counter:
    """Associative sum (CombineGlobally applies it to inputs and to partial sums)."""
    total = collections.Counter()
    for counter in counters:
        total.update(counter)
    return total


def _write_summary(_, out_dir: str, shards: list[dict], bad: dict) -> None:
    """One JSON object: every shard's stats (by index) and the summed bad-record counts.
    Idempotent, so a retried bundle rewrites the same file."""
    summary = {"shards": sorted(shards, key=lambda s: s["index"]), "bad_records": dict(bad)}
    storage.atomic_write(storage.path(out_dir) / SUMMARY, json.dumps(summary))


def _dofns(beam):
    """The DoFns (defined here so that importing this module does not import Beam; Beam pickles
    them by value)."""

    class ReadUnit(beam.DoFn):
        """(u, unit inputs) -> ((u, k), documents of shard k) for every shard of the unit, the
        number of shards on output `counts` as (u, n), the unit's bad records (a Counter) on
        output `bad`."""

        def __init__(self, fmt, reader_options, shard_chars, tokenizer, overrides):
            self.fmt, self.reader_options, self.shard_chars = fmt, reader_options, shard_chars
            self.tokenizer, self.overrides = tokenizer, overrides

        def process(self, element):
            unit, inputs = element
            stats = collections.Counter()
            # The tokenizer: what seqio token ids are compared with (loaded once per worker).
            tokenizer = _worker_tokenizer(self.tokenizer, self.overrides)
            documents = formats.iter_documents(
                self.fmt, inputs, stats, tokenizer=tokenizer, **self.reader_options
            )
            count = 0
            for shard in _chunk_documents(documents, self.shard_chars):
                yield (unit, count), shard
                count += 1
            yield beam.pvalue.TaggedOutput("counts", (unit, count))
            yield beam.pvalue.TaggedOutput("bad", stats)

    class WriteShard(beam.DoFn):
        """((u, k), documents) -> the stats of shard offsets[u] + k, tokenised and written unless
        a previous run of this fingerprint finished it. The tokenizer loads once per worker."""

        def __init__(self, out_dir, tokenizer, overrides, identity, max_doc_tokens, fingerprint):
            self.out_dir, self.tokenizer, self.overrides = out_dir, tokenizer, overrides
            self.identity, self.max_doc_tokens = identity, max_doc_tokens
            self.fingerprint = fingerprint

        def setup(self):
            loaded = _worker_tokenizer(self.tokenizer, self.overrides)
            if loaded.identity != self.identity:
                raise PrepareError(
                    f"the worker's tokenizer {self.tokenizer} ({loaded.identity}) is not the "
                    f"launcher's ({self.identity}); give every machine the same file"
                )

        def process(self, element, offsets):
            (unit, shard), documents = element
            index = offsets[unit] + shard
            stats = _finished_shard(storage.path(self.out_dir), index, self.fingerprint)
            if stats is None:
                stats = _write_shard(
                    self.out_dir,
                    index,
                    documents,
                    self.tokenizer,
                    self.overrides,
                    self.max_doc_tokens,
                    self.fingerprint,
                )
            yield {**stats, "index": index}

    return ReadUnit, WriteShard


def _on_every_machine(path: str) -> bool:
    """A path every worker resolves alike: object storage or a shipped tokenizer."""
    from illada_jax.data.tokenizers.tokenizer import SHIPPED_PREFIX

    return not storage.is_local(path) or str(path).startswith(SHIPPED_PREFIX)


def _check_paths(runner: str, fmt: str, inputs, output, tokenizer_path, data_dir) -> None:
    """A cluster's workers cannot read this machine's files: refuse local paths up front."""
    paths = [str(output), *(str(p) for p in (tokenizer_path, data_dir) if p)]
    if fmt in FILE_FORMATS:
        paths += list(inputs)
    elif fmt == "tfds":  # a local dataset directory DIR[:SPLIT] (names are read from data_dir)
        paths += [i for i in inputs if storage.is_local(i) and os.path.exists(i.split(":")[0])]
    local = [p for p in paths if not _on_every_machine(p)]
    if local:
        raise PrepareError(
            f"Beam's {runner} runner works on other machines, which cannot read the local paths "
            f"{local}; put them on gs:// (or use a shipped: tokenizer)"
        )


def _check_previous_run(out_dir: storage.Path, fingerprint: str) -> None:
    """Refuse a directory with shards of another run before starting the pipeline (workers check
    every shard they skip as well)."""
    first = next(iter(sorted(out_dir.glob("shard-*.stats.json"))), None)
    if first is not None:
        _finished_shard(out_dir, int(first.name[len("shard-") :].split(".")[0]), fingerprint)


def prepare_beam(
    inputs: Sequence[str],
    fmt: str,
    output: storage.PathLike,
    *,
    tokenizer_path: str | None = None,
    tokenizer_overrides: dict | None = None,
    field: str = "text",
    text_unit: str = "file",
    seqio_module: str | None = None,
    data_dir: str | None = None,
    shard_chars: int | None = None,
    max_doc_tokens: int = 1 << 20,
    beam_options: Sequence[str] = (),
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Prepare shards on Beam; returns the manifest dict (also written to `output/manifest.json`).

    The arguments are `prepare.prepare`'s, plus beam_options: Beam's command-line options
    (`--runner=DataflowRunner`, `--project=...`); without a runner, the DirectRunner's engine with
    `workers` processes (`pipeline_options`)."""
    beam = _import_beam()
    if fmt not in formats.FORMATS:
        raise PrepareError(f"--format {fmt!r} is not one of {', '.join(formats.FORMATS)}")
    if max_doc_tokens < 2:
        raise PrepareError(f"max_doc_tokens={max_doc_tokens} must be >= 2")
    if fmt == "text" and text_unit not in formats.TEXT_UNITS:
        raise formats.SourceError(
            f"text_unit={text_unit!r} is not one of {', '.join(formats.TEXT_UNITS)}"
        )
    options = pipeline_options(beam_options, workers)
    runner = _runner_name(options)
    if runner not in LOCAL_RUNNERS:
        _check_paths(runner, fmt, inputs, output, tokenizer_path, data_dir)
    overrides = dict(tokenizer_overrides or {})
    tokenizer = _worker_tokenizer(tokenizer_path, overrides)
    # Workers load the tokenizer themselves: shipped and remote ones by name, local ones by path.
    worker_tokenizer = tokenizer_path and (
        str(tokenizer_path) if _on_every_machine(tokenizer_path) else str(tokenizer.path)
    )
    shard_chars = shard_chars or (1_000_000 if fmt == "embedded" else 16_000_000)
    source = {
        "format": fmt,
        "inputs": [str(i) for i in inputs],
        "field": field,
        "text_unit": text_unit,
    }
    run_options = {
        "shard_chars": shard_chars,
        "max_doc_tokens": max_doc_tokens,
        "writer_options": WRITER_OPTIONS,
        "runner": "beam",
    }
    if fmt in ("tfds", "seqio"):  # what the names resolve to, as the single-host path records
        source.update(
            formats.describe(
                fmt,
                inputs,
                field=field,
                tokenizer=tokenizer,
                seqio_module=seqio_module,
                data_dir=data_dir,
            )
        )
    files = formats.file_signature(fmt, inputs)  # checks the inputs before anything is written
    fingerprint = run_fingerprint(tokenizer.identity, overrides, source, run_options, files)
    units = work_units(fmt, inputs, files, shard_chars)

    out_dir = storage.path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_files(out_dir)
    _check_previous_run(out_dir, fingerprint)
    if progress:
        print(
            f"prepare: {len(units)} work units on Beam's {options.get_all_options()['runner']}"
            f" -> {out_dir}",
            file=sys.stderr,
        )

    ReadUnit, WriteShard = _dofns(beam)
    reader_options = dict(
        field=field, text_unit=text_unit, seqio_module=seqio_module, data_dir=data_dir
    )
    side = beam.pvalue.AsSingleton
    pipeline = beam.Pipeline(options=options)
    read = (
        pipeline
        | "Units" >> beam.Create(list(enumerate(units)))
        | "Read"
        >> beam.ParDo(
            ReadUnit(fmt, reader_options, shard_chars, worker_tokenizer, overrides)
        ).with_outputs("counts", "bad", main="shards")
    )
    offsets = read.counts | "Counts" >> beam.combiners.ToList() | beam.Map(_shard_offsets)
    written = (
        read.shards
        | "Spread" >> beam.Reshuffle()
        | "Write"
        >> beam.ParDo(
            WriteShard(
                str(out_dir),
                worker_tokenizer,
                overrides,
                tokenizer.identity,
                max_doc_tokens,
                fingerprint,
            ),
            side(offsets),
        )
    )
    shard_list = written | "Shards" >> beam.combiners.ToList()
    bad = read.bad | "SumBad" >> beam.CombineGlobally(_sum_counters)
    _ = (
        pipeline
        | "Once" >> beam.Create([None])
        | "Summary" >> beam.Map(_write_summary, str(out_dir), side(shard_list), side(bad))
    )
    _run(pipeline)

    summary = json.loads((out_dir / SUMMARY).read_text())
    shards = summary["shards"]
    if [s["index"] for s in shards] != list(range(len(shards))):
        raise PrepareError(f"{out_dir}: the pipeline's shard numbers are not 0..n-1; re-run")
    bad_records = collections.Counter(summary["bad_records"])
    bad_records["overlong_split"] += sum(s["overlong_split"] for s in shards)
    check_not_empty(shards, source, bad_records)
    manifest = write_manifest(
        out_dir, shards, _tokenizer_info(tokenizer), source, run_options, bad_records, fingerprint
    )
    (out_dir / SUMMARY).unlink()
    return manifest


@contextlib.contextmanager
def _stderr_to(log) -> Iterator[None]:
    """This process's stderr (fd 2, which the processes it starts inherit) points at the file
    `log` inside the block (unchanged when `log` is None)."""
    if log is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _run(pipeline) -> None:
    """Run to completion; a worker's project error (a bad input, a broken tokenizer) is raised as
    a one-line PrepareError, anything else as Beam raised it, after the local workers' log.

    Beam's local workers are processes that log at INFO to the stderr they inherit before they
    read any pipeline option (so `--default_sdk_harness_log_level` cannot quiet them): a local
    pipeline runs with stderr in a temporary file, shown only when the run fails for another
    reason than a mistake in the input. Cluster runners and ILLADA_DEBUG=1 log as usual."""
    local = _runner_name(pipeline.options) in (None, *DIRECT_RUNNERS)
    aside = local and os.environ.get("ILLADA_DEBUG", "").strip() in ("", "0")
    with tempfile.TemporaryFile() as log:
        try:
            with _stderr_to(log if aside else None):
                state = pipeline.run().wait_until_finish()
        except Exception as err:
            found = [m for m in _WORKER_ERROR.findall(str(err)) if m[0] in _PROJECT_ERRORS]
            if found:
                kind, message = found[0]
                raise PrepareError(f"a Beam worker failed: {kind}: {message.strip()}") from err
            if aside:
                log.seek(0)
                tail = log.read().decode(errors="replace").splitlines()[-40:]
                print("\n".join(["Beam workers' log (last lines):", *tail]), file=sys.stderr)
            raise
    if str(state) not in ("DONE", "PipelineState.DONE"):
        raise PrepareError(f"the Beam pipeline ended in state {state}; see the runner's logs")
