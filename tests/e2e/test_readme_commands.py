"""Every shell command shown in README.md is exercised by a test.

- Blocks marked `<!-- readme-test: run -->` (the line before the fence) are run here, in README
  order, in one scratch directory, on tiny settings: `TINY_ARGS` are appended to commands that
  train or benchmark and `TINY_REPLACE` swaps a few sizes (the commands otherwise run as written).
  Each must exit 0 without a traceback, and every path it names as its output must exist after.
  The inputs the commands name (docs.jsonl, notes/, part-0.parquet, corpus.txt) and the `runs/tiny`
  run of the Quickstart are made by the `sandbox` fixture.
- Every other command must be listed in `COVERED` with the test that exercises it (checked to
  exist), so a new README command without a test fails here.
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
RUN_MARK = "<!-- readme-test: run -->"

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
    ("illada", "sweep"): TINY_TRAIN,
    ("illada", "compile"): ["--no-probes"],
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
    r"^python launch/tpu_vm\.py .* --execute -- illada train": (
        "tests/unit/test_launch.py::test_tpu_vm_execute_runs_the_printed_commands_in_order"
    ),
    r"^illada prepare --format jsonl --input gs://BUCKET/raw/ --output gs://": (
        "tests/multiprocess/test_pod_storage.py::test_prepare_reads_and_writes_the_bucket"
    ),
    r"^python launch/tpu_vm\.py .* --stop --execute$": (
        "tests/unit/test_launch.py::test_tpu_vm_stop_stops_the_service_on_every_worker"
    ),
    r"^tensorboard --logdir gs://": (
        "tests/multiprocess/test_pod_storage.py::test_the_run_directory_is_on_the_bucket"
    ),
    r"^illada convert --from hf --to native --src LLaDA-8B-Instruct": (
        "tests/unit/test_hf_convert.py::test_cli_round_trip"
    ),
}


def readme_commands() -> list[tuple[bool, str, list[str]]]:
    """(runs here, section, words) for every command in the README's bash blocks: continuation
    lines joined, comments dropped, quotes resolved as the shell would."""
    lines = README.read_text().splitlines()
    commands, section, previous = [], "", ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            section = line[3:].strip()
        if line.strip() == "```bash":
            marked = previous.strip() == RUN_MARK
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
    words = list(words)
    for key, table in TINY_REPLACE.items():
        if _matches(words, key):
            words = [table.get(w, w) for w in words]
    for key, extra in TINY_ARGS.items():
        if _matches(words, key):
            words += extra
    return words


RUN = [(section, words) for marked, section, words in readme_commands() if marked]


def test_readme_has_run_blocks_in_every_concept_section():
    sections = {section for section, _ in RUN}
    for concept in ("Configs and overrides", "Data preparation", "Training", "Running on a pod",
                    "Checkpoints and conversion", "Sampling and evaluation", "Benchmarks"):  # fmt: skip
        assert concept in sections, f"README section {concept!r} has no command run by this test"


def test_every_other_command_is_covered_by_a_named_test():
    for marked, section, words in readme_commands():
        if marked:
            continue
        command = " ".join(words)
        hits = [test for pattern, test in COVERED.items() if re.search(pattern, command)]
        assert hits, (
            f"README ({section}): {command!r} is neither in a `{RUN_MARK}` block nor in COVERED"
        )
    for test in set(COVERED.values()):
        path, name = test.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), f"{test} does not exist"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A scratch directory with the README's inputs and a tiny `runs/tiny`; PATH finds this
    interpreter's `illada` and `python`."""
    from illada_jax.data.corpus import embedded_documents

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
    for path in _outputs(command):
        path = home / path  # a directory, a file, or a prefix (tokenizer: PREFIX.model)
        assert path.exists() or any(path.parent.glob(path.name + ".*")), f"{shown}: {path}"
