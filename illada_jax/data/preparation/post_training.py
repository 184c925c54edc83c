"""`illada prepare --format pref | rl`: preference pairs or RL prompts (JSONL) -> a prepared
dataset for the post-training objectives (docs/data.md#preference-pairs, docs/data.md#rl-prompts).

The dataset is a directory (local or gs://), written whole or not at all
(`storage.atomic_directory`):
- `pairs.npz`: `tokens [T] int32`, `offsets [N, 4] int64` (`data/chat/pref.py: pack_pairs`);
- `manifest.json`: `{"format": "pref", "pairs": N, "bad_records": {problem: count},
  "bad_examples": [...], "tokenizer": {...}, "source": {...}, "longest": {...}}`.

An RL prompt dataset (`--format rl`, `data/chat/rl.py`'s records) is a directory of
`prompts.npz` (`tokens [T] int32`, `offsets [N + 1] int64`: each chat-formatted prompt),
`examples.jsonl` (each record as given: what a reward function receives as `example`) and
`manifest.json` (`"format": "rl"`, `"prompts": N`, bad records as for pairs).

With a held-out fraction F the pairs (prompts) whose *prompt* hashes below F (`prepare.in_heldout` of the
prompt's token ids) go to `OUTPUT-heldout`, so no held-out prompt is trained on, whatever the
input order.
"""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np

from illada_jax import storage
from illada_jax.data.chat.pref import (
    PAIRS_FILE,
    PreferencePair,
    pack_pairs,
    read_preference_jsonl,
    unpack_pairs,
)
from illada_jax.data.preparation.manifest import MANIFEST
from illada_jax.data.preparation.prepare import (
    PrepareError,
    _tokenizer_info,
    _worker_tokenizer,
    in_heldout,
)

PREF_FORMAT = "pref"
RL_FORMAT = "rl"
PROMPTS_FILE, EXAMPLES_FILE = "prompts.npz", "examples.jsonl"


def prepare_pref(source: str, output: storage.PathLike, *, tokenizer_path: str | None = None,
                 heldout_fraction: float | None = None) -> dict[str, dict]:  # fmt: skip
    """Prepare the preference JSONL `source` (or `demo`: `demo_preference_jsonl`'s pairs) into
    `output` (and `output-heldout` with `heldout_fraction`); returns {output dir: manifest}.
    Nothing is written when no record is usable."""
    from illada_jax.data.chat.sft import ChatFormatter

    tokenizer = _worker_tokenizer(tokenizer_path, {})
    path = source
    if source == "demo":
        from illada_jax.data.chat.pref_demo import demo_preference_jsonl

        path = demo_preference_jsonl()
    elif not storage.path(source).is_file():
        raise PrepareError(f"preference data {source} does not exist (a JSONL file, or `demo`)")
    pairs, bad, examples = read_preference_jsonl(path, ChatFormatter(tokenizer))
    if not pairs:
        found = "; ".join(examples[:3]) or "the file holds no record"
        raise PrepareError(f"{source}: no usable preference pair ({found}). Each line needs "
                           '{"prompt" (or "messages"), "chosen", "rejected"}')  # fmt: skip
    parts = {str(output): pairs}
    if heldout_fraction is not None:
        held = [in_heldout(np.asarray(p.prompt, np.int32), heldout_fraction) for p in pairs]
        parts = {
            f"{str(output).rstrip('/')}-heldout": [p for p, h in zip(pairs, held) if h],
            str(output): [p for p, h in zip(pairs, held) if not h],
        }
        empty = [name for name, part in parts.items() if not part]
        if empty:
            raise PrepareError(f"--heldout-fraction {heldout_fraction} leaves {empty[0]} empty "
                               f"({len(pairs)} pairs in all): change the fraction")  # fmt: skip
    source_info = {"format": PREF_FORMAT, "inputs": [source], "template": "default"}
    _check_empty(parts)
    return {
        name: _write(name, part, bad, examples, _tokenizer_info(tokenizer), source_info)
        for name, part in parts.items()
    }


def _check_empty(outputs) -> None:
    """Refuse before anything is written when any output directory exists with files in it."""
    for output in outputs:
        target = storage.path(output)
        if target.exists() and any(target.iterdir()):
            raise PrepareError(f"{output} exists and is not empty: choose another --output or "
                               "delete it")  # fmt: skip


def _write(output: str, pairs: list[PreferencePair], bad, examples, tokenizer_info: dict,
           source_info: dict) -> dict:  # fmt: skip
    target = storage.path(output)
    buffer = io.BytesIO()
    np.savez(buffer, **pack_pairs(pairs))
    manifest = {
        "format": PREF_FORMAT,
        "pairs": len(pairs),
        "tokens": int(sum(len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)),
        "longest": {
            name: max(len(getattr(p, name)) for p in pairs) for name in PreferencePair._fields
        },  # fmt: skip
        "bad_records": dict(bad),
        "bad_examples": examples,
        "tokenizer": tokenizer_info,
        "source": source_info,
    }
    with storage.atomic_directory(target) as directory:
        (directory / PAIRS_FILE).write_bytes(buffer.getvalue())
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def check_tokenizer(manifest: dict, model_cfg, dataset, error: type[Exception]) -> None:
    """Raise `error` when a prepared post-training dataset was tokenised for another vocabulary
    or with other special ids (mask, EOS, BOS) than `model_cfg`'s."""
    tokenizer = manifest["tokenizer"]
    problems = [] if tokenizer["vocab_size"] == model_cfg.vocab_size else [
        f"vocab_size {tokenizer['vocab_size']} != model.vocab_size {model_cfg.vocab_size}"
    ]  # fmt: skip
    for name in ("mask", "eos", "bos"):
        data_id, model_id = (
            tokenizer["special_ids"].get(name),
            getattr(model_cfg, f"{name}_token_id"),
        )
        if data_id != model_id:
            problems.append(f"{name} id {data_id} != model.{name}_token_id {model_id}")
    if problems:
        raise error(f"{dataset} was prepared with tokenizer {tokenizer['identity']}, which does "
                    f"not match the model: {'; '.join(problems)}. Prepare it with the model's "
                    "tokenizer (--tokenizer)")  # fmt: skip


def load_pref(directory: storage.PathLike) -> tuple[list[PreferencePair], dict]:
    """(pairs, manifest) of a prepared preference dataset; `PrepareError` naming the fix when
    the directory is not one."""
    tokens, offsets, manifest = load_pref_arrays(directory)
    return unpack_pairs(tokens, offsets), manifest


def load_pref_arrays(directory: storage.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """(tokens [T] int32, offsets [N, 4] int64, manifest) of a prepared preference dataset, as
    stored (a pipeline slices rows from them: no per-token Python objects)."""
    directory = storage.path(directory)
    if not (directory / PAIRS_FILE).exists() or not (directory / MANIFEST).exists():
        raise PrepareError(f"{directory} is not a prepared preference dataset (no {PAIRS_FILE}): "
                           "objective=vrpo reads pairs made by illada prepare --format pref "
                           "--input PAIRS.jsonl --output DIR; point data.datasets (and "
                           "train.eval_dataset, or set train.eval_every=0) at one")  # fmt: skip
    storage.check_complete(directory)
    manifest = storage.read_json_object(directory / MANIFEST, PrepareError,
                                        "prepare the dataset again")  # fmt: skip
    with (directory / PAIRS_FILE).open("rb") as f:
        arrays = np.load(io.BytesIO(f.read()))
        return arrays["tokens"], arrays["offsets"], manifest


def prepare_rl(source: str, output: storage.PathLike, *, tokenizer_path: str | None = None,
               heldout_fraction: float | None = None) -> dict[str, dict]:  # fmt: skip
    """Prepare the RL prompt JSONL `source` (or `demo`: the opening-word task of
    `data/chat/rl_demo.py`) into
    `output` (and `output-heldout`); returns {output dir: manifest}. Bad records are skipped and
    counted; nothing is written when none is usable."""
    from illada_jax.data.chat.rl import read_rl_jsonl
    from illada_jax.data.chat.sft import ChatFormatter

    tokenizer = _worker_tokenizer(tokenizer_path, {})
    path = source
    if source == "demo":
        from illada_jax.data.chat.rl_demo import demo_rl_jsonl

        storage.path(storage.default_cache_dir()).mkdir(parents=True, exist_ok=True)
        path = demo_rl_jsonl()
    elif not storage.path(source).is_file():
        raise PrepareError(f"RL prompts {source} do not exist (a JSONL file, or `demo`)")
    examples, skipped = read_rl_jsonl(path, on_error="skip")
    problems = [f"{source}:{number}: {problem}" for number, problem in skipped[:10]]
    if not examples:
        found = "; ".join(problems[:3]) or "the file holds no record"
        raise PrepareError(f"{source}: no usable RL prompt ({found}). Each line needs "
                           '{"prompt" (or "messages" or "question"), "answer"}')  # fmt: skip
    formatter = ChatFormatter(tokenizer)
    prompts = [formatter.prompt(example.messages) for example in examples]
    rows = list(zip(prompts, examples))
    parts = {str(output): rows}
    if heldout_fraction is not None:
        held = [in_heldout(np.asarray(p, np.int32), heldout_fraction) for p in prompts]
        parts = {
            f"{str(output).rstrip('/')}-heldout": [r for r, h in zip(rows, held) if h],
            str(output): [r for r, h in zip(rows, held) if not h],
        }
        empty = [name for name, part in parts.items() if not part]
        if empty:
            raise PrepareError(f"--heldout-fraction {heldout_fraction} leaves {empty[0]} empty "
                               f"({len(rows)} prompts in all): change the fraction")  # fmt: skip
    bad = dict(Counter(problem for _, problem in skipped))
    info = {"format": RL_FORMAT, "inputs": [source], "template": "default"}
    _check_empty(parts)
    return {
        name: _write_rl(name, part, bad, problems, _tokenizer_info(tokenizer), info)
        for name, part in parts.items()
    }


def _write_rl(output: str, rows, bad: dict, problems: list[str], tokenizer_info: dict,
              source_info: dict) -> dict:  # fmt: skip
    target = storage.path(output)
    lengths = np.array([len(prompt) for prompt, _ in rows], np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, tokens=np.concatenate([np.asarray(p, np.int32) for p, _ in rows]),
             offsets=np.concatenate([[0], np.cumsum(lengths)]))  # fmt: skip
    examples = "".join(json.dumps(example.fields) + "\n" for _, example in rows)
    manifest = {
        "format": RL_FORMAT,
        "prompts": len(rows),
        "tokens": int(lengths.sum()),
        "longest_prompt": int(lengths.max()),
        "bad_records": bad,
        "bad_examples": problems,
        "tokenizer": tokenizer_info,
        "source": source_info,
    }
    with storage.atomic_directory(target) as directory:
        (directory / PROMPTS_FILE).write_bytes(buffer.getvalue())
        (directory / EXAMPLES_FILE).write_text(examples)
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def load_rl(directory: storage.PathLike) -> tuple[list[list[int]], list[dict], dict]:
    """(prompt ids, examples, manifest) of a prepared RL prompt dataset; `PrepareError` naming
    the fix when the directory is not one."""
    directory = storage.path(directory)
    if not (directory / PROMPTS_FILE).exists() or not (directory / MANIFEST).exists():
        raise PrepareError(f"{directory} is not a prepared RL prompt dataset (no {PROMPTS_FILE}); "
                           "make one with illada prepare --format rl --input PROMPTS.jsonl "
                           f"--output {directory}")  # fmt: skip
    storage.check_complete(directory)
    manifest = storage.read_json_object(directory / MANIFEST, PrepareError,
                                        "prepare the dataset again")  # fmt: skip
    with (directory / PROMPTS_FILE).open("rb") as f:
        arrays = np.load(io.BytesIO(f.read()))
    tokens, offsets = arrays["tokens"], arrays["offsets"]
    prompts = [tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    examples = [json.loads(line) for line in (directory / EXAMPLES_FILE).read_text().splitlines()]
    return prompts, examples, manifest
