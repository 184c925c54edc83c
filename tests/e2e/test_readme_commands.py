"""Every shell command shown in README.md and docs/*.md is exercised by a test.

- Blocks marked `<!-- readme-test: run -->` (the line before the fence) are run here, in README
  order, then the docs' (a command shown twice runs once), in one scratch directory, on tiny
  settings: `TINY_ARGS` are appended to commands that train or benchmark and `TINY_REPLACE` swaps
  a few sizes (the commands otherwise run as written; shell variables such as `$BUCKET` take the
  values of `PLACEHOLDERS`, as after docs/pods.md's `export` line). Each must exit 0 without a
  traceback, and every path it names as its output must exist after. The inputs the commands
  name (docs.jsonl, chat.jsonl, gsm8k_test.jsonl, notes/, part-0.parquet, corpus.txt) and the `runs/tiny` run of the Quickstart
  are made by the `sandbox` fixture.
- Blocks marked `<!-- rehearsal: PHASE -->` (docs/pods.md's "From zero to a running pod job") are
  run as written by the pod rehearsal (tests/e2e/test_pod_rehearsal.py).
- Every other command must be listed in `COVERED` with the test that exercises it (checked to
  exist), so a new documented command without a test fails here.
- The `Example: illada ...` of each subcommand's --help runs here too (after the documents'
  commands, in the same sandbox), unless a document shows the same command or COVERED names it.
  The launchers' --help examples are run by tests/unit/test_launch.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
RUN_MARK = "<!-- readme-test: run -->"
REHEARSAL_MARK = re.compile(r"^<!-- rehearsal: [\w-]+ -->$")
REHEARSAL_TEST = "tests/e2e/test_pod_rehearsal.py::test_the_rehearsal_runs_the_guide"
# The values of the docs' shell variables (docs/pods.md sets them with one `export` line).
PLACEHOLDERS = {"BUCKET": "my-illada-bucket", "ZONE": "us-east5-a", "TPU": "illada-v5p",
                "CLUSTER": "my-cluster",
                "IMAGE": "us-docker.pkg.dev/my-project/illada/illada:latest"}  # fmt: skip

TINY_TRAIN = [
    "--config=set:train.steps=2",
    "--config=set:optim.warmup_steps=1",
    "--config=set:train.seq_len=32",
    "--config=set:train.batch_size=2",
    "--config=set:model.n_layers=2",
    "--config=set:train.log_every=1",
    "--config=set:train.eval_every=0",
    "--config=set:train.sample_length=0",
]
# Appended to a command whose words start with the key.
TINY_ARGS = {
    ("illada", "train"): TINY_TRAIN,
    # After TINY_TRAIN (a later setting wins): one group of 8 completions of prompts up to 56
    # tokens.
    ("illada", "train", "--config=config:tiny_grpo"): [
        "--config=set:train.batch_size=8",
        "--config=set:train.seq_len=64",
        "--config=set:grpo.gen_length=8",
        "--config=set:grpo.steps=8",
    ],
    # After TINY_TRAIN: blocks that tile its 32-token windows.
    ("illada", "train", "--config=config:tiny_ar_to_dlm"): [
        "--config=set:diffusion.block_size=32",
        "--config=set:diffusion.block_schedule_sizes=(1, 4, 16, 32)",
    ],
    ("illada", "sweep"): TINY_TRAIN,
    ("illada", "compile"): ["--no-probes"],
    ("illada", "compile", "--config=config:tiny", "--topology=v5p-8", "--search"): [
        "--search-batches=1",
        "--search-remat=full",
    ],  # one candidate: the search's path, not its minutes
    ("python", "launch/"): TINY_TRAIN,  # printed into the plan (dry runs), never run
    ("python", "bench/forward.py"): ["--batch", "1", "--seq", "32", "--repeats", "1"],
    ("python", "bench/data.py"): [
        "--seq",
        "64",
        "--batch",
        "2",
        "--batches",
        "2",
        "--shards",
        "1000",
    ],
    ("python", "bench/train.py"): [
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq",
        "32",
        "--loop-steps",
        "2",
    ],
    ("python", "bench/sample.py"): [
        "--preset",
        "tiny",
        "--prompt-len",
        "8",
        "--gen-length",
        "16",
        "--block",
        "8",
        "--repeats",
        "1",
        "--train-steps",
        "2",
        "--mc",
        "2",
    ],  # fmt: skip
    ("python", "bench/convert.py"): ["--preset", "tiny"],
    ("python", "bench/objectives.py"): [
        "--preset",
        "tiny",
        "--batch",
        "2",
        "--seq",
        "32",
        "--block-size",
        "8",
        "--steps",
        "1",
        "--loop-steps",
        "1",
        "--rounds",
        "1",
    ],  # fmt: skip
    ("python", "bench/adaptation.py"): [
        "--config",
        "set:train.steps=4",
        "--config",
        "set:train.eval_every=2",
        "--config",
        "set:train.batch_size=2",
        "--config",
        "set:train.eval_batches=1",
        "--config",
        "set:train.sample_length=0",
    ],  # fmt: skip
    ("python", "bench/quickstart.py"): TINY_TRAIN,
    ("python", "bench/post_train.py"): [
        *TINY_TRAIN,
        "--pairs",
        "4",
        "--draws",
        "4",
        "--grpo-config",
        "set:train.batch_size=8",
        "--grpo-config",
        "set:train.seq_len=64",
        "--grpo-config",
        "set:grpo.gen_length=8",
        "--grpo-config",
        "set:grpo.steps=8",
        "--grpo-config",
        "set:train.eval_every=1",
    ],  # fmt: skip
    ("python", "bench/compile.py"): [
        "--config=config:tiny",
        "--topology",
        "v5p-8",
        "--global-batch",
        "8",
        "--seq-len",
        "128",
        "--no-probes",
        "--restart-config=config:tiny",
        "--restart-config=set:model.n_layers=1",
    ],  # fmt: skip
}
# Word replacements for commands whose words start with the key.
TINY_REPLACE = {
    ("illada", "compile"): {
        "--config=config:illada_8b": "--config=config:tiny",
        "--topology=v5p-256": "--topology=v5p-8",
        "640": "8",
        "8192": "128",
    },  # fmt: skip
    ("illada", "tokenizer"): {"8192": "512"},
    ("illada", "eval"): {"20": "4"},
}
STDIN = {("illada", "chat"): "Hello there\nHow are you?\n/quit\n"}
OUTPUT_FLAGS = ("--output", "--dst", "--workdir")

# command (a regex on the joined words) -> the test that exercises it ("path::function").
COVERED = {
    # docs/models.md, README: autoregressive checkpoints (needs transformers' models: the hf extra)
    r"^illada (convert --from hf --to native --src (Qwen2\.5-7B|Llama-3\.1-8B) --dst runs/|"
    r"prepare .*--tokenizer runs/qwen2_5_7b-native/|"
    r"train --config=file:runs/qwen2_5_7b-native/config\.json )": (
        "tests/unit/test_hf_autoregressive.py::"
        "test_an_hf_checkpoint_becomes_a_run_that_trains_as_ar_and_block_diffusion"
    ),
    r"^illada prepare --runner beam .*--beam-option=--runner=DataflowRunner": (
        "tests/unit/test_beam_prepare.py::test_pipeline_options_defaults_and_pass_through"
    ),
    r"^python3 -m venv \.venv && \.venv/bin/pip install -e \. && \.venv/bin/illada train$": (
        "tests/e2e/test_cli.py::test_train_writes_run_directory_and_reproduces_from_file"
    ),
    r"^python3 -m venv \.venv && .*pytest$": (
        "tests/unit/test_readme.py::test_ci_runs_the_readme_test_command"
    ),
    r"^pip install -e \.\[eval,notebooks\]$": (
        "tests/unit/test_readme.py::test_ci_runs_the_readme_test_command"
    ),
    r"^ILLADA_QUICK=1 jupyter execute notebooks/01_quickstart\.ipynb$": (
        "tests/notebooks/test_notebooks.py::test_01_quickstart"
    ),
    r"^python launch/local\.py --num-processes 2 --devices-per-process 2 -- illada train": (
        "tests/multiprocess/test_local_processes.py::test_two_processes_log_the_losses_of_one_process"
    ),
    # README's pod commands are the guide's (docs/pods.md), which the rehearsal runs.
    r"^python launch/tpu_vm\.py --name \$TPU .* --execute -- illada train": (
        "tests/e2e/test_pod_rehearsal.py::test_readme_pod_commands_are_commands_of_the_guide"
    ),
    r"^illada prepare --format jsonl --input gs://\$BUCKET/raw/web/ --output gs://": (
        "tests/e2e/test_pod_rehearsal.py::test_readme_pod_commands_are_commands_of_the_guide"
    ),
    r"^python launch/tpu_vm\.py --name \$TPU .* --stop --execute$": (
        "tests/e2e/test_pod_rehearsal.py::test_readme_pod_commands_are_commands_of_the_guide"
    ),
    r"^tensorboard --logdir gs://": (
        "tests/multiprocess/test_pod_storage.py::test_the_run_directory_is_on_the_bucket"
    ),
    r"^\.venv312/bin/python launch/rehearse\.py --hosts 2$": REHEARSAL_TEST,
    # docs/pods.md, "Meshes for other batch shapes": the multi-slice checks
    r"^illada compile --config=config:\w+ --topology=v5p-\d+ --num-slices \d+ ": (
        "tests/compile/test_recipe_topologies.py::"
        "test_every_documented_topology_builds_with_the_recipes_batch"
    ),
    # docs/data.md
    r"^illada prepare --format tfds --input wiki/": (
        "tests/unit/test_sources_extras.py::test_tfds_by_name_with_version_config_and_split"
    ),
    r"^illada prepare --format tfds --input /data/tfds/my_ds/": (
        "tests/unit/test_sources_extras.py::test_tfds_array_record_dataset"
    ),
    r"^illada prepare --format seqio --seqio-module my_tasks": (
        "tests/unit/test_sources_extras.py::test_seqio_task_in_our_vocabulary_is_read_as_ids"
    ),
    r"^illada prepare --runner beam --format jsonl --input data/raw/ --output data/web --workers": (
        "tests/unit/test_beam_prepare.py::test_worker_count_does_not_change_a_byte"
    ),
    r"^illada train --config=config:small --config=set:data\.datasets=\('raw:jsonl:": (
        "tests/unit/test_onthefly.py::"
        "test_a_mixture_with_a_prepared_dataset_keeps_exact_proportions"
    ),
    r"^illada convert --from hf --to native --src (LLaDA-8B-Instruct|HF_DIR)": (
        "tests/unit/test_hf_convert.py::test_cli_round_trip"
    ),
}


def readme_commands(path: pathlib.Path = README) -> list[tuple[str, str, list[str]]]:
    """(how it is tested: "run" here, "rehearsal" or "" (COVERED), section, words) for every
    command in a document's bash blocks: continuation lines joined, comments dropped, quotes
    resolved as the shell would."""
    lines = path.read_text().splitlines()
    commands, section, previous = [], "", ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            section = line[3:].strip()
        if line.strip() == "```bash":
            marked = previous.strip() == RUN_MARK
            marked = (
                "run" if marked else "rehearsal" if REHEARSAL_MARK.match(previous.strip()) else ""
            )
            index += 1
            text = []
            while lines[index].strip() != "```":
                text.append(lines[index])
                index += 1
            joined = "\n".join(text).replace("\\\n", " ")
            for command in joined.splitlines():
                words = shlex.split(command, comments=True)
                if words:
                    commands.append((marked, section, words))
        if line.strip():
            previous = line
        index += 1
    return commands


def _matches(words: list[str], key: tuple[str, ...]) -> bool:
    """Do the command's first words match `key` (a key word ending in "/" is a prefix)?"""
    return len(words) >= len(key) and all(
        word == k or (k.endswith("/") and word.startswith(k)) for word, k in zip(words, key)
    )


def _outputs(words: list[str]) -> list[str]:
    """The paths an `illada` command names as its outputs (launchers only print theirs)."""
    if words[0] != "illada":
        return []
    paths = [value for flag, value in zip(words, words[1:]) if flag in OUTPUT_FLAGS]
    paths += [w.split("=", 1)[1] for w in words if w.split("=", 1)[0] in OUTPUT_FLAGS and "=" in w]
    return paths


def tiny(words: list[str]) -> list[str]:
    """The command on tiny settings (see the module docstring)."""
    words = [_expand(word) for word in words]
    for key, table in TINY_REPLACE.items():
        if _matches(words, key):
            words = [table.get(w, w) for w in words]
    for key, extra in TINY_ARGS.items():
        if _matches(words, key):
            words += extra
    return words


def _run_list() -> list[tuple[str, list[str]]]:
    """The run-marked commands of README, then of docs/*.md, each once."""
    found = []
    for path in DOCS:
        name = path.relative_to(ROOT).as_posix()
        for marked, section, words in readme_commands(path):
            if marked == "run" and words not in [w for _, w in found]:
                found.append((section if path == README else f"{name}: {section}", words))
    return found


RUN = _run_list()


def _expand(word: str) -> str:
    """`$NAME` / `${NAME}` of PLACEHOLDERS replaced, as the shell would after the docs' export."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: PLACEHOLDERS.get(m.group(1), m.group(0)), word)


def test_readme_has_run_blocks_in_every_concept_section():
    sections = {section for section, _ in RUN}
    for concept in ("Configs and overrides", "Data preparation", "Training", "Running on a pod",
                    "Checkpoints and conversion", "Sampling and evaluation", "Benchmarks"):  # fmt: skip
        assert concept in sections, f"README section {concept!r} has no command run by this test"


def test_every_other_command_is_covered_by_a_named_test():
    for path in DOCS:
        for marked, section, words in readme_commands(path):
            if marked:
                continue
            command = " ".join(words)
            hits = [test for pattern, test in COVERED.items() if re.search(pattern, command)]
            assert hits, (
                f"{path.name} ({section}): {command!r} is neither in a `{RUN_MARK}` or rehearsal "
                "block nor in COVERED"
            )
    for test in set(COVERED.values()):
        path, name = test.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), f"{test} does not exist"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A scratch directory with the README's inputs and a tiny `runs/tiny`; PATH finds this
    interpreter's `illada` and `python`."""
    from illada_jax.data.sources.corpus import embedded_documents

    home = tmp_path_factory.mktemp("readme")
    for name in ("bench", "launch"):
        (home / name).symlink_to(ROOT / name)
    docs = [doc.text for _, doc in zip(range(40), embedded_documents("train"))]
    with (home / "docs.jsonl").open("w") as out:
        for text in docs[:20]:
            out.write(json.dumps({"text": text[:2000]}) + "\n")
    (home / "notes").mkdir()
    for k in range(3):
        (home / "notes" / f"note{k}.txt").write_text("\n\n".join(docs[20 + k][:3000].split("\n\n")))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": [t[:2000] for t in docs[25:35]]}), home / "part-0.parquet")
    (home / "corpus.txt").write_text("\n".join(docs)[:300_000])
    pairs = [("Hello, how are you?", "I am well, thank you."), ("What is your name?", "I am a model."),
             ("Where do you live?", "In a checkpoint."), ("Good morning.", "Good morning to you."),
             ("Do you like books?", "I read many of them."), ("Thank you.", "You are welcome.")]  # fmt: skip
    with (home / "chat.jsonl").open("w") as out:  # docs/guide.md's own dialogues
        for question, answer in pairs * 4:
            turns = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            out.write(json.dumps({"messages": turns}) + "\n")
    with (home / "gsm8k_test.jsonl").open("w") as out:  # a local copy in GSM8K's fields
        for a, b in [(3, 2), (4, 5), (7, 1), (6, 6)]:
            question = f"Tom has {a} apples and buys {b} more. How many apples does he have?"
            out.write(
                json.dumps({"question": question, "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
                + "\n"
            )
    bin_dir = home / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = (
        f"{bin_dir}{os.pathsep}{pathlib.Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    )
    quickstart = _run(["illada", "train", "--workdir=runs/tiny", *TINY_TRAIN], home, env)
    assert quickstart.returncode == 0, quickstart.stderr[-3000:]
    return home, env


def _run(words, cwd, env, stdin=None):
    return subprocess.run(words, cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip


@pytest.mark.parametrize("section, words", RUN, ids=[" ".join(w)[:60] for _, w in RUN])
def test_readme_command_runs(sandbox, section, words):
    home, env = sandbox
    command = tiny(words)
    stdin = next((text for key, text in STDIN.items() if _matches(words, key)), None)
    result = _run(command, home, env, stdin)
    shown = shlex.join(command)
    assert result.returncode == 0, f"{shown}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, f"{shown}\n{result.stderr[-3000:]}"
    # no libtpu / absl start-up lines on this CPU host (`illada` and bench/*.py start quietly)
    assert "TPU_WORKER_HOSTNAMES" not in result.stderr, f"{shown}\n{result.stderr[-3000:]}"
    assert "libtpu_init_utils" not in result.stderr, f"{shown}\n{result.stderr[-3000:]}"
    for path in _outputs(command):
        path = home / path  # a directory, a file, or a prefix (tokenizer: PREFIX.model)
        assert path.exists() or any(path.parent.glob(path.name + ".*")), f"{shown}: {path}"


def help_examples() -> list[tuple[str, list[str]]]:
    """(subcommand, words) of every `Example: illada ...` in the subcommands' --help texts."""
    import argparse

    from illada_jax.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield [*path, name], sub
                    yield from walk(sub, [*path, name])

    found = []
    for path, sub in walk(build_parser(), ["illada"]):
        text = " ".join(f"{sub.description or ''} {sub.epilog or ''}".split())
        for match in re.finditer(r"Examples?: (illada .*?)(?:$|(?<=\S)[.;](?:\s|$)|, or )", text):
            words = shlex.split(match.group(1))
            if words not in [w for _, w in found]:
                found.append((" ".join(path), words))
    return found


def _flags(words: list[str]) -> set[str]:
    return {w.split("=", 1)[0] for w in words if w.startswith("--")}


def _shown_or_covered(words: list[str]) -> bool:
    """Does a document's command run here with the same subcommand and (at least) the same
    options, or does COVERED name it? Then only the example's values differ."""
    subcommand = words[:3] if words[1] == "tokenizer" else words[:2]
    for _, shown in RUN:
        if shown[: len(subcommand)] == subcommand and _flags(words) <= _flags(shown):
            return True
    return any(re.search(pattern, " ".join(words)) for pattern in COVERED)


HELP_RUN = [(name, words) for name, words in help_examples() if not _shown_or_covered(words)]


def test_the_help_examples_are_found():
    names = {name for name, _ in help_examples()}
    for name in ("illada train", "illada prepare", "illada generate", "illada eval"):
        assert name in names, f"no `Example: illada ...` found in `{name} --help`"


@pytest.mark.parametrize("name, words", HELP_RUN, ids=[" ".join(w)[:60] for _, w in HELP_RUN])
def test_help_example_runs(sandbox, name, words):
    test_readme_command_runs(sandbox, f"{name} --help", words)
