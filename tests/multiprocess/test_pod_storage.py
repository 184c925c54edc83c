"""A pod run on object storage, for real: a GCS emulator on 127.0.0.1 (tests/conftest.py) is the
bucket, and `launch/local.py --isolate` starts 2 processes that share nothing but that bucket
(each has its own HOME, TMPDIR and data cache).

Module fixtures, in order: `illada prepare --output gs://BUCKET/data`; an uninterrupted 2-process
run on gs:// (the reference). Then: kill -9 of one process and a restart of both; SIGTERM to
process 1 only; generate, eval and convert from the gs:// run; a local workdir refused on 2
processes. Resumed runs must log bit-identical losses: everything that decides a step is restored
from the checkpoint in the bucket.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 40
TRAIN = [
    "train",
    "--config=set:train.seq_len=32",
    "--config=set:train.batch_size=4",
    "--config=set:model.n_layers=2",
    "--config=set:optim.warmup_steps=1",
    # Constant: a resumed run takes the same rates (see tests/multiprocess/test_local_processes).
    "--config=set:optim.learning_rate=1e-3",
    "--config=set:optim.schedule=constant",
    "--config=set:optim.final_learning_rate=0.0",
    "--config=set:train.log_every=1",
    "--config=set:train.eval_every=0",
    "--config=set:train.sample_length=0",
    "--config=set:checkpoint.every=4",
    f"--config=set:train.steps={STEPS}",
]
FAST_XLA = "--xla_backend_optimization_level=0"


@pytest.fixture(scope="module")
def env(gcs_emulator):
    base = {k: v for k, v in os.environ.items() if not k.startswith("ILLADA_")}
    return {**base, **gcs_emulator, "XLA_FLAGS": FAST_XLA, "JAX_PLATFORMS": "cpu",
            "ILLADA_CACHE": os.environ["ILLADA_CACHE"]}  # fmt: skip


def _gs(env, path: str) -> str:
    return f"gs://{env['BUCKET']}/{path}"


def _illada(env, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "illada_jax.cli", *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.fixture(scope="module")
def data(env):
    """The embedded held-out documents as jsonl in gs://BUCKET/raw/, prepared into the bucket
    with the tokenizer file from the bucket, as the README's pod section does."""
    code = (
        "import json; from etils import epath\n"
        "from illada_jax.data.sources.corpus import embedded_documents\n"
        "from illada_jax.data.tokenizers.tokenizer import shipped_model_path\n"
        "lines = [json.dumps({'text': d.text}) for d in embedded_documents('heldout')]\n"
        f"epath.Path({_gs(env, 'raw/docs.jsonl')!r}).write_text('\\n'.join(lines) + '\\n')\n"
        f"epath.Path({_gs(env, 'tokenizers/sp1k.model')!r}).write_bytes("
        "shipped_model_path('sp1k').read_bytes())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    output = _gs(env, "data/heldout")
    prepared = _illada(env, "prepare", "--format", "jsonl", "--input", _gs(env, "raw/"),
                       "--output", output, "--tokenizer", _gs(env, "tokenizers/sp1k.model"),
                       "--quiet")  # fmt: skip
    return output, prepared.stdout


def test_prepare_reads_and_writes_the_bucket(env, data):
    output, stdout = data
    assert f"-> {output}" in stdout
    names = _list(env, output)
    assert "manifest.json" in names and "shard-00000.arrayrecord" in names
    manifest = json.loads(_read(env, f"{output}/manifest.json"))
    assert manifest["source"]["inputs"] == [_gs(env, "raw/")]
    from illada_jax.data.sources.corpus import embedded_documents

    assert manifest["documents"] == len(list(embedded_documents("heldout")))  # one per jsonl line
    assert manifest["tokenizer"]["vocab_size"] == 1024


def _launch(env, data, workdir: str, log_dir: pathlib.Path, *extra: str) -> subprocess.Popen:
    data = data[0]
    """2 isolated processes training on gs:// data into a gs:// workdir; process 0's output (and
    the launcher's) in log_dir/out.log, process 1's in log_dir/local-1.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "launch" / "local.py"), "--num-processes=2",
               "--isolate", f"--log-dir={log_dir}", "--grace=5", "--",
               "illada", *TRAIN, f"--config=set:data.datasets=('{data}',)", *extra,
               f"--workdir={workdir}"]  # fmt: skip
    with open(log_dir / "out.log", "a") as out:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log_dir: pathlib.Path, code: int | None = 0) -> str:
    try:
        proc.wait(timeout=400)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the launcher did not finish:\n{(log_dir / 'out.log').read_text()[-3000:]}")
    text = (log_dir / "out.log").read_text()
    if code is not None:
        assert proc.returncode == code, text[-4000:] + _log(log_dir / "local-1.log")[-3000:]
    return text


def _log(path: pathlib.Path) -> str:
    return path.read_text() if path.exists() else ""


def _wait_for_step(proc, log_dir: pathlib.Path, step: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(rf"step {step}/{STEPS} ", _log(log_dir / "out.log")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no step {step}:\n{_log(log_dir / 'out.log')[-3000:]}")
        time.sleep(0.05)


def _process_pid(launcher: subprocess.Popen, index: int) -> int:
    """The pid of the launcher's child with ILLADA_PROCESS_ID=index."""
    for child in pathlib.Path(f"/proc/{launcher.pid}/task").glob("*/children"):
        for pid in child.read_text().split():
            environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"ILLADA_PROCESS_ID={index}".encode() in environ:
                return int(pid)
    raise AssertionError(f"no process {index} under the launcher")


def _read(env, url: str) -> str:
    """A file on the emulator, read in a subprocess (this process keeps its storage clients
    unconfigured)."""
    code = f"from etils import epath; print(epath.Path({url!r}).read_text(), end='')"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _list(env, url: str) -> list[str]:
    code = f"from etils import epath; print(*sorted(p.name for p in epath.Path({url!r}).iterdir()))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


def _losses(env, workdir: str) -> dict[int, float]:
    """step -> loss of the last record of each step (a resumed run appends)."""
    rows = [json.loads(line) for line in _read(env, f"{workdir}/metrics.jsonl").splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}


@pytest.fixture(scope="module")
def reference(env, data, tmp_path_factory):
    workdir = _gs(env, "runs/reference")
    log_dir = tmp_path_factory.mktemp("reference")
    text = _finish(_launch(env, data, workdir, log_dir), log_dir)
    assert "done: loss" in text
    losses = _losses(env, workdir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return workdir, losses, log_dir


def test_the_run_directory_is_on_the_bucket(env, reference):
    workdir, _, log_dir = reference
    names = _list(env, workdir)
    assert {"config.json", "metrics.jsonl", "checkpoints"} <= set(names)
    assert any(name.startswith("events.out.tfevents") for name in names)  # TensorBoard
    assert _list(env, f"{workdir}/checkpoints")[-1] == str(STEPS)
    # Each process kept its own scratch: the shards each one read came from the bucket.
    for index in (0, 1):
        assert list((log_dir / f"process-{index}" / "cache" / "remote-shards").iterdir())


def test_kill_9_of_one_process_then_restart_repeats_the_losses(env, data, reference,
                                                               tmp_path):  # fmt: skip
    workdir, expected = _gs(env, "runs/killed"), reference[1]
    proc = _launch(env, data, workdir, tmp_path)
    _wait_for_step(proc, tmp_path, 10)
    os.kill(_process_pid(proc, 1), signal.SIGKILL)
    _finish(proc, tmp_path, code=None)
    assert proc.returncode != 0  # the launcher stops the survivor and reports the failure
    restarted = tmp_path / "restart"
    text = _finish(_launch(env, data, workdir, restarted), restarted)
    resumed = int(re.search(r"resumed from checkpoint (\d+)", text).group(1))
    assert 4 <= resumed < STEPS
    losses = _losses(env, workdir)
    assert {s: losses[s] for s in range(resumed + 1, STEPS + 1)} == {
        s: expected[s] for s in range(resumed + 1, STEPS + 1)
    }


def test_sigterm_to_process_1_only_saves_the_same_step_on_both(env, data, reference, tmp_path):
    workdir, expected = _gs(env, "runs/sigterm"), reference[1]
    proc = _launch(env, data, workdir, tmp_path)
    _wait_for_step(proc, tmp_path, 5)
    os.kill(_process_pid(proc, 1), signal.SIGTERM)
    text = _finish(proc, tmp_path)  # both processes exit 0
    saved = re.findall(r"preempted at step (\d+): checkpoint saved", text)
    saved_1 = re.findall(r"preempted at step (\d+): checkpoint saved",
                         _log(tmp_path / "local-1.log"))  # fmt: skip
    assert saved and saved == saved_1, (text[-2000:], _log(tmp_path / "local-1.log")[-2000:])
    step = int(saved[0])
    assert step < STEPS
    assert str(step) in _list(env, f"{workdir}/checkpoints")
    resumed_dir = tmp_path / "resumed"
    text = _finish(_launch(env, data, workdir, resumed_dir), resumed_dir)
    assert f"resumed from checkpoint {step}" in text
    assert _losses(env, workdir) == expected


def test_generate_eval_and_convert_read_the_gs_run(env, reference):
    workdir = reference[0]
    result = _illada(env, "generate", f"--checkpoint={workdir}", "--prompt=In the beginning",
                     "--gen-length=8", "--steps=8")  # fmt: skip
    assert result.stdout.strip()
    result = _illada(env, "eval", f"--checkpoint={workdir}", "--dataset=embedded:heldout",
                     "--batches=2", "--batch-size=2", "--seq-len=32")  # fmt: skip
    assert "nll" in result.stdout.lower() or "bound" in result.stdout.lower()
    hf = _gs(env, "hf/reference")
    _illada(env, "convert", "--from=native", "--to=hf", f"--src={workdir}", f"--dst={hf}")
    names = _list(env, hf)
    assert {"config.json", "model.safetensors", "tokenizer.model"} <= set(names)
    # The HF directory on gs:// loads back to the same parameters' logits.
    code = (
        "import numpy as np, illada_jax\n"
        f"a = illada_jax.load({workdir!r}); b = illada_jax.load({hf!r})\n"
        "ids = np.arange(1, 17, dtype=np.int32)[None] + 10\n"
        "print(float(np.max(np.abs(np.asarray(a.logits(ids)) - np.asarray(b.logits(ids))))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) < 1e-5


def test_a_run_starts_from_weights_on_the_bucket(env, data, reference, tmp_path):
    result = _illada(env, *TRAIN, "--config=set:train.steps=1",
                     f"--config=set:data.datasets=('{data[0]}',)",
                     f"--config=set:checkpoint.init_from={reference[0]}",
                     f"--workdir={tmp_path / 'from-gs'}")  # fmt: skip
    assert f"initialised parameters from {reference[0]}" in result.stdout
    rows = [
        json.loads(x) for x in (tmp_path / "from-gs" / "metrics.jsonl").read_text().splitlines()
    ]
    first = next(r for r in rows if "masked_ce" in r)
    # Trained weights, not a fresh initialisation: a fresh model's masked cross-entropy is about
    # ln(1024) = 6.93 nats (near-uniform logits); 40 steps of training bring it near 6.
    assert first["step"] == 1 and first["masked_ce"] < math.log(1024) - 0.3


def test_a_local_workdir_is_refused_on_two_processes(env, data, tmp_path):
    workdir = tmp_path / "local-run"
    proc = _launch({k: v for k, v in env.items()}, data, str(workdir), tmp_path / "logs")
    text = _finish(proc, tmp_path / "logs", code=None)
    assert proc.returncode != 0
    assert f"--workdir={workdir} is a local path, but this run has 2 processes" in text
    assert "set:checkpoint.shared_filesystem=True" in text and "gs://" in text
    assert not (workdir / "checkpoints").exists()
