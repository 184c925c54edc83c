"""What `illada train` checks before it writes anything (illada_jax/train/preflight.py).

- A refused run leaves its run directory as it was: every file's path and bytes hashed before
  and after each refusal (a resume with another model shape, a missing dataset or held-out set,
  a mesh the devices cannot hold, a model too big for the host, a wrong-type `set:`), and a
  refused fresh run creates no directory.
- The memory preflight: an 8B recipe on this host is one line naming the memory per device and
  the `illada compile` command to size a pod, exit 2, in seconds.
- Object storage at start-up: a bucket that cannot be reached, or does not exist, is one line
  naming it and the likely causes, exit 2, in seconds.
- Smoke runs: every recipe in configs/ runs with `set:train.steps=2` (tiny-sized model and the
  embedded data where its own shapes and data are pod-sized); a schedule too long for the run
  is scaled, with a note.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest
from _cli import FAST_TRAIN

from illada_jax.cli import main


def _tree_hash(root: pathlib.Path) -> dict[str, str]:
    """Relative path -> sha256 of the bytes, for every file under `root` (directories too)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _run_cli(argv, capfd) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capfd.readouterr()
    return code, captured.out + captured.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
    """A real 2-step run of a 1-layer tiny model (checkpoints, metrics, config, events)."""
    workdir = tmp_path_factory.mktemp("preflight") / "run"
    argv = ["train", *FAST_TRAIN, "--config=set:train.steps=2", "--config=set:model.n_layers=1",
            f"--workdir={workdir}"]  # fmt: skip
    assert main(argv) == 0
    assert (workdir / "checkpoints" / "2" / "state").is_dir()
    return workdir


BASE = [*FAST_TRAIN, "--config=set:train.steps=4", "--config=set:model.n_layers=1"]
REFUSALS = [
    pytest.param(["--config=set:model.n_layers=2"], "does not fit this run", id="other-shape"),
    pytest.param(["--config=set:model.mlp_dim=96"], "does not fit this run", id="other-width"),
    pytest.param(
        ["--config=set:data.datasets=('no/such/data',)"], "no/such/data", id="missing-dataset"
    ),  # fmt: skip
    pytest.param(
        ["--config=set:train.eval_every=2", "--config=set:train.eval_dataset=no/such"],
        "no/such",
        id="missing-heldout",
    ),  # fmt: skip
    pytest.param(
        ["--config=set:mesh.tensor=3"], "mesh: the fixed axes (3 devices)", id="mesh-too-big"
    ),  # fmt: skip
    pytest.param(
        ["--config=set:optim.learning_rate=fast"], "optim.learning_rate", id="wrong-type"
    ),  # fmt: skip
    pytest.param(["--config=config:llada_8b"], "does not fit these devices", id="memory"),
]


@pytest.mark.parametrize(("extra", "expected"), REFUSALS)
def test_a_refused_run_leaves_its_directory_as_it_was(run_dir, extra, expected, capfd):
    before = _tree_hash(run_dir)
    argv = ["train", *BASE, *extra, f"--workdir={run_dir}"]
    if extra[0] == "--config=config:llada_8b":  # a recipe first, then nothing of the tiny run
        argv = ["train", *extra, f"--workdir={run_dir}"]
    code, output = _run_cli(argv, capfd)
    assert code == 2, output
    assert expected in output, output
    assert "Traceback" not in output
    assert _tree_hash(run_dir) == before


@pytest.mark.parametrize(("extra", "expected"), REFUSALS[2:])
def test_a_refused_fresh_run_creates_nothing(tmp_path, extra, expected, capfd):
    workdir = tmp_path / "new-run"
    argv = ["train", *BASE, *extra, f"--workdir={workdir}"]
    if extra[0] == "--config=config:llada_8b":
        argv = ["train", *extra, f"--workdir={workdir}"]
    code, output = _run_cli(argv, capfd)
    assert code == 2 and expected in output, output
    assert not workdir.exists()
    assert list(tmp_path.iterdir()) == []


def _illada(*args, env=None, timeout=120) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return result, time.monotonic() - start


def test_an_8b_recipe_on_this_host_is_refused_with_the_command_to_size_a_pod(tmp_path):
    result, _ = _illada("train", "--config=config:llada_8b", f"--workdir={tmp_path / 'r'}")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("illada train: error: llada_8b does not fit these devices: ")
    # 8.0e9 parameters: fp32 weights + two Adam moments + fp32 gradients = 16 bytes each
    import re

    needed = float(re.search(r"needs ([\d.]+) GiB per device", line).group(1))
    devices = int(re.search(r"each of the (\d+) cpu devices", line).group(1))
    assert 8.0e9 * 16 / devices / 2**30 * 0.9 < needed < 8.1e9 * 16 / devices / 2**30 * 1.1
    assert "illada compile --config=... --topology=v5p-" in line
    assert not (tmp_path / "r").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends


EMULATED = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x"}


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("http://127.0.0.1:{port}", "cannot be reached", id="refused"),
        pytest.param("http://no-such-host.invalid:80", "cannot be reached", id="dns"),
    ],
)
def test_an_unreachable_bucket_is_one_line_in_seconds(tmp_path, host, expected):
    url = host.format(port=_closed_port())
    env = {**EMULATED, "STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url}
    result, seconds = _illada("train", *BASE, "--workdir=gs://some-bucket/runs/x", env=env)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("illada train: error: gs://some-bucket cannot be reached ("), line
    assert "no network, DNS failing" in line and "gcloud storage ls gs://some-bucket" in line
    assert seconds < 60  # start-up (JAX import, config) plus one failed request, no retries


def test_a_missing_bucket_is_one_line(gcs_emulator):
    result, _ = _illada("train", *BASE, "--workdir=gs://no-such-bucket/runs/x", env=gcs_emulator)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        "illada train: error: gs://no-such-bucket does not exist: check the bucket name (create "
        "it with gcloud storage buckets create gs://no-such-bucket)"
    )


# ---------------------------------------------------------------------------------------------
# Smoke runs of every recipe
# ---------------------------------------------------------------------------------------------


def _recipes() -> list[str]:
    from illada_jax.config import registry

    return sorted(registry.recipes())


# The tiny model's shape and ids, for recipes whose own model is pod-sized.
TINY_MODEL = ["set:model.vocab_size=1024", "set:model.d_model=64", "set:model.n_layers=1",
              "set:model.n_heads=2", "set:model.n_kv_heads=2", "set:model.head_dim=32",
              "set:model.mlp_dim=128", "set:model.max_seq_len=64", "set:model.mask_token_id=4",
              "set:model.pad_token_id=0", "set:model.bos_token_id=2", "set:model.eos_token_id=3",
              "set:model.eot_token_id=7", "set:model.attention_impl='xla'",
              "set:model.param_dtype='float32'"]  # fmt: skip
RUN_SMALL = ["set:train.steps=2", "set:train.seq_len=64", "set:train.batch_size=2",
             "set:train.grad_accum=1", "set:train.eval_every=0", "set:train.sample_length=0",
             "set:train.log_every=1", "set:mesh.dcn_data=1", "set:mesh.data=1",
             "set:mesh.fsdp=-1", "set:mesh.tensor=1", "set:mesh.cpu_devices=0",
             "set:checkpoint.init_from=''", "set:data.weights=()"]  # fmt: skip


def _demo_data(tmp_path_factory, fmt: str) -> str:
    """The demo data of `illada prepare --format FMT --input demo`, with shipped:sp1k."""
    out = tmp_path_factory.mktemp(fmt) / "data"
    assert main(["prepare", "--format", fmt, "--input", "demo", "--tokenizer", "shipped:sp1k",
                 "--output", str(out)]) == 0  # fmt: skip
    return str(out)


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> str:
    """The demo dialogues prepared as iLLaDA-style SFT data."""
    return _demo_data(tmp_path_factory, "sft")


@pytest.fixture(scope="module")
def pref_data(tmp_path_factory) -> str:
    """The demo preference pairs."""
    return _demo_data(tmp_path_factory, "pref")


@pytest.fixture(scope="module")
def rl_data(tmp_path_factory) -> str:
    """The demo RL prompts."""
    return _demo_data(tmp_path_factory, "rl")


@pytest.mark.parametrize("recipe", _recipes())
def test_every_recipe_runs_two_steps(recipe, sft_data, pref_data, rl_data, tmp_path, capsys):
    from illada_jax.config import flags
    from illada_jax.train.loop import train

    own = flags.experiment_from_flags([f"config:{recipe}"])
    directives = [f"config:{recipe}", *RUN_SMALL]
    if own.model.d_model > 256 or own.model.vocab_size != 1024:
        directives += TINY_MODEL  # with the tiny model's tokenizer
        directives.append("set:data.tokenizer='shipped:sp1k'")
    objective = own.diffusion.objective
    if objective == "sft_llada":
        directives.append("set:data.datasets=('demo',)")
    elif objective == "sft_illada":  # the demo dialogues, prepared with shipped:sp1k
        directives.append(f"set:data.datasets=('{sft_data}',)")
    elif objective in ("vrpo", "grpo"):  # the demo pairs / prompts, from a one-step run
        start = [*directives, "set:diffusion.objective='pretrain'", "set:train.steps=1",
                 "set:data.datasets=('embedded',)"]  # fmt: skip
        train(flags.experiment_from_flags(start), tmp_path / "start", print_fn=lambda _: None)
        data = pref_data if objective == "vrpo" else rl_data
        directives += [f"set:data.datasets=('{data}',)",
                       f"set:checkpoint.init_from='{tmp_path / 'start'}'"]  # fmt: skip
        if objective == "grpo":  # one prompt's group, prompts up to 48 tokens, the demo's reward
            directives += [f"set:train.batch_size={own.grpo.group_size}", "set:grpo.gen_length=16",
                           "set:grpo.steps=16", "set:grpo.block_length=16",
                           "set:grpo.reward='format_regex'"]  # fmt: skip
    else:
        directives.append("set:data.datasets=('embedded',)")
    if objective == "block_diffusion":  # blocks that tile 64 tokens; a schedule: two phases
        directives.append("set:diffusion.block_size=16")
        if own.diffusion.block_schedule_steps:
            directives += ["set:diffusion.block_schedule_steps=(0, 1)",
                           "set:diffusion.block_schedule_sizes=(4, 16)"]  # fmt: skip
    experiment = flags.experiment_from_flags(directives)
    printed = []
    history = train(experiment, tmp_path / "run", print_fn=printed.append)
    losses = [r["loss"] for r in history if "loss" in r and "event" not in r]
    assert len(losses) == 2 and all(loss == loss for loss in losses), history
    scaled = [line for line in printed if "phases are scaled to fit" in line]
    from illada_jax.train.optim import fit_schedule

    assert bool(scaled) == (fit_schedule(own.optim, 2)[1] is not None), printed
