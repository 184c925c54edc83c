"""`--format seqio`: documents from registered seqio tasks and mixtures (the `[seqio]` extra).

An input is a registered task or mixture, `NAME` or `NAME:SPLIT` (default
`train`); import the module that registers it with `--seqio-module`; `--data-dir` sets seqio's
TFDS data dir for tasks that read TFDS (T5X's `--tfds_data_dir`). A mixture is read as its
tasks, each in full for one epoch, in seqio's task order (by name); tasks without the split are
skipped as seqio does; the mixing rates are recorded in the manifest, not applied (mix prepared
datasets with `data.weights`). Each example is read with `sequence_length=None` (no trimming),
`shuffle=False`, `num_epochs=1`.
`field` names the feature(s) that make the document: a comma-separated list, concatenated in
order (each feature tokenised on its own, no separator, one EOS at the end), e.g.
`targets` or `inputs,targets` (prefix and target as one document). The default `text` means
`targets` for a task whose examples have no `text` feature. Per feature:
- a string feature is text, tokenised with our tokenizer (mode `text`);
- a token-id feature (`seqio.preprocessors.tokenize`) whose vocabulary is our tokenizer's —
  a `SentencePieceVocabulary` whose model proto (after seqio's edits: `extra_ids`, normalizer
  overrides) equals our SentencePiece `.model`'s as a protobuf message, so every piece, score,
  normaliser and trainer setting that decides the encoding is the same — is used as ids (mode
  `ids`); a trailing vocabulary EOS (seqio's `append_eos`) is dropped and ours appended; ids
  must never hold our mask id;
- any other vocabulary: re-tokenised from `{feature}_pretokenized` (mode `retokenized`; kept by
  `seqio.preprocessors.tokenize` with `copy_pretokenized=True`, its default); without it the
  task is refused.
The manifest's `source.seqio` says which (features, mode, vocabulary, per task).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
from collections.abc import Iterator, Sequence

import numpy as np

from illada_jax.data.sources.records import SourceError, common, decode, keep, spec_parts


def import_seqio(module: str | None, data_dir: str | None):
    try:
        import seqio
    except ImportError as err:
        raise SourceError(
            "seqio data (--format seqio, raw:seqio:) needs the [seqio] extra: "
            "pip install 'illada-jax[seqio]'"
        ) from err
    if module:
        importlib.import_module(module)
    if data_dir:
        seqio.set_tfds_data_dir_override(data_dir)  # as T5X's --tfds_data_dir
    return seqio


def _same_vocabulary(vocab, tokenizer) -> bool:
    """Whether a seqio vocabulary is our tokenizer: a SentencePiece model proto (as seqio uses
    it, after `extra_ids` and normaliser overrides) equal, as a protobuf message, to our `.model`'s
    — every piece with its score and type, the normaliser and the trainer settings that shape the
    encoding (byte fallback, ...) are the same, hence the same ids for every text."""
    proto = getattr(vocab, "sp_model", None)
    if tokenizer.kind != "sentencepiece" or not isinstance(proto, bytes):
        return False
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto
    return model.FromString(proto) == model.FromString(tokenizer.path.read_bytes())


def _vocabulary_info(vocab, same: bool) -> dict:
    info: dict = {"type": type(vocab).__name__ if vocab is not None else None}
    file = getattr(vocab, "sentencepiece_model_file", None)
    if file:
        info["file"] = str(file)
    for attr in ("vocab_size", "extra_ids"):
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            info[attr] = int(getattr(vocab, attr))
    proto = getattr(vocab, "sp_model", None)
    if isinstance(proto, bytes):
        info["sha256"] = hashlib.sha256(proto).hexdigest()
    info["same_as_tokenizer"] = same
    return info


@dataclasses.dataclass
class _SeqioTask:
    """One task of a seqio input, resolved: the features that make a document, how each is read
    (`text`, `ids`, `retokenized`), and what the token-id features' vocabularies are."""

    spec: str
    task: object  # seqio.Task
    split: str
    rate: float | None  # its mixing rate when the input is a mixture
    dataset: object  # tf.data.Dataset
    modes: dict[str, str]  # feature -> mode, in document order
    vocabularies: dict[str, dict]  # token-id feature -> _vocabulary_info
    eos: dict[str, int | None]  # `ids` feature -> the vocabulary's EOS (dropped at the end)

    def info(self) -> dict:
        info = {
            "input": self.spec,
            "task": self.task.name,
            "split": self.split,
            "rate": self.rate,
            "features": list(self.modes),
            "mode": common(self.modes.values()),
            "vocabulary": self.vocabularies,
        }
        if info["mode"] == "mixed":
            info["modes"] = dict(self.modes)
        return info


def _seqio_features(field: str, element_spec: dict, task_name: str) -> list[str]:
    names = [name.strip() for name in field.split(",") if name.strip()]
    if names == ["text"] and "text" not in element_spec and "targets" in element_spec:
        names = ["targets"]  # the default field: a T5-style task keeps its text in `targets`
    missing = [name for name in names if name not in element_spec]
    if not names or missing:
        raise SourceError(
            f"seqio task {task_name!r} has no feature {', '.join(missing) or field!r}; its "
            f"examples have {sorted(element_spec)}; pass --field a feature or a comma-separated "
            "list (e.g. targets or inputs,targets)"
        )
    return names


def _seqio_task(spec: str, task, split: str, rate, tokenizer, field: str) -> _SeqioTask:
    dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
    element_spec = dataset.element_spec
    if not isinstance(element_spec, dict):
        raise SourceError(f"seqio task {task.name!r} yields {element_spec}, not a dict of features")
    modes, vocabularies, eos = {}, {}, {}
    for feature in _seqio_features(field, element_spec, task.name):
        tensor = element_spec[feature]
        if tensor.dtype.name == "string" and tensor.shape.rank == 0:
            modes[feature] = "text"
            continue
        if not (tensor.dtype.is_integer and tensor.shape.rank == 1):
            raise SourceError(
                f"seqio task {task.name!r}: feature {feature!r} is neither one string nor 1-D "
                f"token ids ({tensor.dtype.name}, shape {tensor.shape})"
            )
        if tokenizer is None:
            raise SourceError(
                f"seqio task {task.name!r}: feature {feature!r} holds token ids; comparing their "
                "vocabulary with ours needs the tokenizer (pass tokenizer=)"
            )
        vocab = getattr(task.output_features.get(feature), "vocabulary", None)
        same = _same_vocabulary(vocab, tokenizer)
        vocabularies[feature] = _vocabulary_info(vocab, same)
        pretokenized = element_spec.get(f"{feature}_pretokenized")
        if same:
            modes[feature] = "ids"
            eos[feature] = vocab.eos_id
        elif pretokenized is not None and pretokenized.dtype.name == "string":
            modes[feature] = "retokenized"
        else:
            raise SourceError(
                f"seqio task {task.name!r}: feature {feature!r} holds ids of a vocabulary that "
                f"is not our tokenizer's ({vocabularies[feature]}), and the task keeps no "
                f"{feature}_pretokenized text to re-tokenise. Fix: tokenise with "
                "seqio.preprocessors.tokenize with copy_pretokenized=True (its default), pass "
                "--field a text feature, or pass --tokenizer the task's SentencePiece .model"
            )
    if len(modes) > 1 and tokenizer is None:
        raise SourceError("a document of several seqio features needs the tokenizer")
    return _SeqioTask(spec, task, split, rate, dataset, modes, vocabularies, eos)


def seqio_tasks(seqio, spec: str, tokenizer, field: str) -> list[_SeqioTask]:
    parts = spec_parts(spec)
    if len(parts) > 2 or not parts[0]:
        raise SourceError(f"seqio input {spec!r}: expected TASK_OR_MIXTURE[:SPLIT]")
    name, split = parts[0], (parts[1] if len(parts) == 2 else "") or "train"
    try:
        provider = seqio.get_mixture_or_task(name)
    except ValueError as err:
        raise SourceError(
            f"no seqio task or mixture {name!r} is registered; import the module that registers "
            "it with --seqio-module"
        ) from err
    if isinstance(provider, seqio.Mixture):
        members = [(task, float(provider.get_rate(task))) for task in provider.tasks]
    else:
        members = [(provider, None)]
    kept = [(task, rate) for task, rate in members if split in task.splits]
    if not kept:
        splits = sorted({s for task, _ in members for s in task.splits})
        raise SourceError(f"seqio {name!r} has no split {split!r}; its splits are {splits}")
    return [_seqio_task(spec, task, split, rate, tokenizer, field) for task, rate in kept]


def _seqio_task_documents(plan: _SeqioTask, stats, tokenizer) -> Iterator[str | np.ndarray]:
    for record in plan.dataset.as_numpy_iterator():
        document = example_document(plan, record, stats, tokenizer)
        if document is not None:
            yield document


def example_document(plan: _SeqioTask, record: dict, stats, tokenizer) -> str | np.ndarray | None:
    """One seqio example's document: a string (one text feature: the caller tokenises it) or
    int32 token ids without EOS; None for a dropped example (counted in `stats`)."""
    parts = []
    for feature, mode in plan.modes.items():
        if mode == "ids":
            ids = np.asarray(record[feature], np.int32)
            if ids.size and ids[-1] == plan.eos[feature]:
                ids = ids[:-1]  # seqio's append_eos: we append our EOS
            parts.append(ids)
        else:
            key = feature if mode == "text" else f"{feature}_pretokenized"
            parts.append(decode(record[key], stats))
    if len(parts) == 1 and isinstance(parts[0], str):  # tokenised (in batches) by the caller
        return parts[0] if keep(parts[0], stats) else None
    ids = np.concatenate(
        [
            p if isinstance(p, np.ndarray) else np.asarray(tokenizer.encode(p), np.int32)
            for p in parts
        ]
    )
    if not ids.size:
        stats["empty_skipped"] += 1
        return None
    if ids.min() < 0 or ids.max() >= tokenizer.vocab_size:
        raise SourceError(
            f"seqio task {plan.task.name!r}: token id outside our vocabulary "
            f"[0, {tokenizer.vocab_size}): {ids[(ids < 0) | (ids >= tokenizer.vocab_size)][0]}"
        )
    if np.any(ids == tokenizer.mask_id):
        raise SourceError(
            f"seqio task {plan.task.name!r}: its token ids contain our mask id "
            f"{tokenizer.mask_id}, which data must never hold (a preprocessor inserted it?); "
            "remove it or pass --field a text feature"
        )
    return ids


def seqio_documents(
    inputs,
    stats,
    field: str,
    module: str | None = None,
    *,
    tokenizer=None,
    data_dir: str | None = None,
) -> Iterator[str | np.ndarray]:
    seqio = import_seqio(module, data_dir)
    plans = [plan for spec in inputs for plan in seqio_tasks(seqio, spec, tokenizer, field)]
    for plan in plans:
        yield from _seqio_task_documents(plan, stats, tokenizer)


def describe(inputs: Sequence[str], field: str, tokenizer, module: str | None,
             data_dir: str | None) -> dict:  # fmt: skip
    """What seqio inputs resolve to (features, mode, vocabulary, per task), for the manifest."""
    seqio = import_seqio(module, data_dir)
    tasks = [t.info() for spec in inputs for t in seqio_tasks(seqio, spec, tokenizer, field)]
    summary = {
        "features": common([t["features"] for t in tasks]),
        "mode": common([t["mode"] for t in tasks]),
        "vocabulary": common([v for t in tasks for v in t["vocabulary"].values()]),
        "tasks": tasks,
    }
    return {"data_dir": data_dir, "seqio": summary}
