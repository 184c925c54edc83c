"""Every `illada ...` command in the recipes' docstrings (configs/*.py: `Command:`, `Data:`,
`Scale-out:` lines) is a command that works as written:

- `illada train` lines build their experiment with the directives as given (and, at toy size with
  `fiddler:rehearsal` appended, the run: mesh, batch, state shapes), and on a pod recipe every
  path they read is on the bucket and produced by an `illada prepare` / `illada convert` line of
  the recipes' docstrings (the data, the held-out set, `checkpoint.init_from`), with the
  tokenizer the preparation used;
- the other `illada` lines parse with the command line's own parser (an unknown option or a
  wrong value fails here).

The `illada compile` lines (`Check:`, `Scale-out:`) are compiled or built by
tests/compile/test_recipes.py and tests/compile/test_recipe_topologies.py; the pod recipes at
toy size train in the pod rehearsal (tests/e2e/test_pod_rehearsal.py).
"""

from __future__ import annotations

import inspect
import re
import shlex

import pytest

from illada_jax import cli
from illada_jax.config import flags, registry

CHECKOUT = {n: r for n, r in registry.recipes().items() if r.path is not None}
FIELD = re.compile(r"^(\w[\w-]*):\s+(.*)$")
COMMAND_FIELDS = ("Command", "Data", "Scale-out")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(recipe, field, words) of every `illada ...` line of a recipe docstring's command fields."""
    out = []
    for name, recipe in sorted(CHECKOUT.items()):
        field = None
        for line in (inspect.getdoc(recipe.function) or "").splitlines():
            match = FIELD.match(line)
            if match:
                field, line = match.group(1), match.group(2)
            elif not line.startswith(" "):
                field = None
            line = line.strip()
            if field in COMMAND_FIELDS and line.startswith("illada "):
                words = shlex.split(line.split("  (")[0])  # drop a trailing "(the same as ...)"
                out.append((name, field, words))
    return out


COMMANDS = documented_commands()
TRAIN = [(n, w) for n, f, w in COMMANDS if w[1] == "train"]
OTHER = [(n, w) for n, f, w in COMMANDS if w[1] not in ("train", "compile")]
POD = {n for n, r in CHECKOUT.items() if "Check:" in (r.function.__doc__ or "")}


def _directives(words: list[str]) -> list[str]:
    return [w.split("=", 1)[1] for w in words if w.startswith("--config=")]


def _option(words: list[str], name: str) -> str | None:
    for index, word in enumerate(words):
        if word.startswith(f"{name}="):
            return word.split("=", 1)[1]
        if word == name and index + 1 < len(words):
            return words[index + 1]
    return None


def test_the_docstrings_hold_commands():
    assert {n for n, _ in TRAIN} >= POD, POD - {n for n, _ in TRAIN}
    assert any(w[1] == "prepare" for _, w in OTHER)


@pytest.mark.parametrize("name, words", TRAIN, ids=[n for n, _ in TRAIN])
def test_train_lines_build_as_written(name, words):
    directives = _directives(words) or ["config:tiny"]  # `illada train` alone: the demo
    assert directives[0] == f"config:{name}"
    experiment = flags.experiment_from_flags(directives)
    toy = flags.experiment_from_flags([*directives, "fiddler:rehearsal"])
    from illada_jax.train.builder import build_run

    run = build_run(toy)  # mesh, rules, batch and state shapes of the recipe's code path
    assert run.abstract_state["params"]
    assert toy.model.attention_impl == "xla" and experiment.model.name == toy.model.name


def _produced() -> dict[str, str | None]:
    """Paths the recipes' `illada prepare` / `convert` / `train` lines write -> the tokenizer
    used (None for a conversion or a run)."""
    out = {}
    for _, words in OTHER:
        if words[1] == "prepare":
            out[_option(words, "--output")] = _option(words, "--tokenizer")
            if _option(words, "--heldout-fraction"):  # the held-out part, beside the output
                out[_option(words, "--output") + "-heldout"] = _option(words, "--tokenizer")
        elif words[1] == "convert":
            out[_option(words, "--dst")] = None
    for _, words in TRAIN:  # a run directory: what a later recipe starts from (init_from)
        out[_option(words, "--workdir")] = None
    return out


@pytest.mark.parametrize(
    "name, words", [t for t in TRAIN if t[0] in POD], ids=[n for n, _ in TRAIN if n in POD]
)
def test_pod_train_lines_read_what_the_recipes_prepare_on_the_bucket(name, words):
    experiment = flags.experiment_from_flags(_directives(words))
    produced = _produced()
    reads = [*experiment.data.datasets]
    if experiment.train.eval_every:
        reads.append(experiment.train.eval_dataset)
    if experiment.checkpoint.init_from:
        reads.append(experiment.checkpoint.init_from)
    assert _option(words, "--workdir").startswith("gs://BUCKET/"), words
    for path in reads:
        assert path.startswith("gs://BUCKET/"), f"{name} reads {path}: not on the bucket"
        if experiment.diffusion.objective == "sft_llada" and path in experiment.data.datasets:
            continue  # a raw JSONL file (its Data: line)
        assert path in produced, f"{name} reads {path}, which no recipe's command writes"
        if produced[path] is not None:
            assert produced[path] == experiment.data.tokenizer, (path, produced[path])


@pytest.mark.parametrize("name, words", OTHER, ids=[f"{n}-{w[1]}" for n, w in OTHER])
def test_other_lines_parse_with_the_command_line(name, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Released weights, a run or prepared data the lines before made.
    for option in ("--src", "--checkpoint", "--rl-data"):
        source = _option(words, option)
        if source and not source.startswith("gs://"):
            (tmp_path / source).mkdir(parents=True)
    args = cli.build_parser().parse_args(words[1:])
    assert args.func is not None
