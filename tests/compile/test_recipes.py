"""The recipes in `configs/`: each builds and validates, documents its command, hardware and
expected result, counts its parameters, and compiles for the TPU slice its docstring names; and
`illada compile` lowers exactly the program the runner builds (the way MaxText guards its AOT
tool: the same train step, the same HLO).

The compiles run as a user runs them (`illada compile` in a subprocess; libtpu compiles real TPU
programs for abstract devices on this CPU host). The runner's side (`runner_program`) compiles in
a subprocess too, with `train.builder.build_run` and `train.loop.compile_steps` — what
`train.loop.train` calls before its first step — on the same abstract devices and libtpu flags.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest

from illada_jax import cli
from illada_jax.config import experiments, flags, registry
from illada_jax.model.transformer import count_params

pytestmark = pytest.mark.core

RECIPES = registry.recipes()
CHECKOUT = {name: r for name, r in RECIPES.items() if r.path is not None}
POD_RECIPES = [name for name, r in CHECKOUT.items() if "Check:" in (r.function.__doc__ or "")]
RESULT = re.compile(r"^RESULT fits=(true|false) bytes_per_chip=(\d+) ")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _check_command(name: str) -> list[str]:
    """The `illada compile ...` command of a recipe's `Check:` docstring line, as words."""
    match = re.search(r"^\s*Check:\s+(illada compile .*)$", RECIPES[name].function.__doc__, re.M)
    assert match, f"{name}: no 'Check: illada compile ...' line in its docstring"
    return shlex.split(match.group(1))


def test_the_checkout_holds_the_project_recipes():
    expected = {"llada_8b", "llada_8b_sft", "illada_8b", "illada_8b_sft", "ablation_1b",
                "ablation_100m", "tiny", "tiny_sft", "tiny_sft_llada", "tiny_lr", "time_sampling"}  # fmt: skip
    assert expected <= CHECKOUT.keys(), expected - CHECKOUT.keys()
    assert {name for name, r in RECIPES.items() if r.sweep} == {"tiny_lr", "time_sampling"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_and_validates(name):
    experiment = flags.experiment_from_flags([f"config:{name}"])
    assert experiment.train.seq_len <= experiment.model.max_seq_len


@pytest.mark.parametrize("name", sorted(CHECKOUT))
def test_every_recipe_documents_command_hardware_and_expected_result(name):
    doc = inspect.getdoc(RECIPES[name].function) or ""
    for field in ("Command:", "Hardware:", "Expected:"):
        assert re.search(rf"^{field}\s+\S", doc, re.M), f"{name}: no '{field}' line"
    assert f"--config=config:{name}" in doc or name == "tiny"
    assert not re.search(r"\{\w+\}", doc), f"{name}: an unfilled placeholder in its docstring"


def test_a_recipe_named_like_a_builtin_is_the_builtin():
    for name, builtin in registry.builtin_recipes().items():
        if name in CHECKOUT:
            assert flags.build(CHECKOUT[name].function()) == flags.build(builtin.function())


def test_pod_recipes_carry_their_tpu_settings():
    assert POD_RECIPES, "no recipe has a 'Check:' line"
    for name in POD_RECIPES:
        model = flags.experiment_from_flags([f"config:{name}"]).model
        assert (model.attention_impl, model.compute_dtype, model.param_dtype) == (
            "splash",
            "bfloat16",
            "float32",
        ), name


def test_published_recipes_follow_the_papers():
    llada = flags.experiment_from_flags(["config:llada_8b"])
    tokens = llada.train.batch_size * llada.train.seq_len
    assert (llada.train.batch_size, llada.train.seq_len) == (1280, 4096)
    assert llada.optim.schedule == "wsd" and llada.optim.learning_rate == 4e-4
    assert llada.optim.warmup_steps == 2000
    assert llada.optim.wsd_drop_step * tokens == pytest.approx(1.2e12, rel=1e-5)
    assert llada.optim.learning_rate * llada.optim.wsd_drop_factor == pytest.approx(1e-4)
    assert llada.optim.decay_steps * tokens == pytest.approx(0.3e12, rel=1e-5)
    assert llada.train.steps * tokens == pytest.approx(2.3e12, rel=1e-5)
    assert (llada.diffusion.random_length_mode, llada.diffusion.random_length_prob) == (
        "llada_truncate",
        0.01,
    )
    illada = flags.experiment_from_flags(["config:illada_8b"])
    assert illada.train.seq_len == 8192 and illada.model.vocab_size == 155136
    assert (illada.optim.schedule, illada.optim.learning_rate) == ("illada", 2e-4)
    assert illada.optim.final_learning_rate == 5e-6
    assert (illada.diffusion.random_length_mode, illada.diffusion.two_segment_prob) == (
        "illada_split",
        0.3,
    )
    assert illada.data.tokenizer.endswith("tokenizer.json")
    for name, objective in (("llada_8b_sft", "sft_llada"), ("illada_8b_sft", "sft_illada")):
        sft = flags.experiment_from_flags([f"config:{name}"])
        assert sft.diffusion.objective == objective and sft.checkpoint.init_from


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_params_runs_on_every_recipe(name, capsys):
    assert cli.main(["params", f"--config=config:{name}"]) == 0
    out = dict(line.split("=") for line in capsys.readouterr().out.split())
    total, non_embedding = count_params(flags.experiment_from_flags([f"config:{name}"]).model)
    assert (int(out["total_params"]), int(out["non_embedding_params"])) == (total, non_embedding)


# ------------------------------------------------------------------------------ registry


def test_recipes_are_read_from_ILLADA_CONFIGS_and_names_must_be_unique(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(
        "from illada_jax.config.experiments import tiny\n"
        "def deep():\n    cfg = tiny()\n    cfg.model.n_layers = 6\n    return cfg\n"
        "def deep_sweep():\n    return [{'train.seed': 1}]\n"
        "def _helper():\n    return None\n"
    )
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path))
    found = registry.recipes()
    assert {"deep", "tiny", "small"} <= found.keys() and "_helper" not in found
    assert found["deep"].sweep is not None and found["tiny"].path is None  # the built-in
    assert flags.experiment_from_flags(["config:deep"]).model.n_layers == 6
    (tmp_path / "other.py").write_text("def deep():\n    return None\n")
    registry._checkout_recipes.cache_clear()
    with pytest.raises(flags.ConfigError, match="'deep' is defined in both"):
        registry.recipes()
    registry._checkout_recipes.cache_clear()


def test_without_a_checkout_only_the_builtins_exist(tmp_path, monkeypatch):
    """No configs/ anywhere (no checkout, no installed copy): `tiny` (the default) still works."""
    monkeypatch.setattr(registry, "configs_dir", lambda: None)
    assert set(registry.recipes()) == set(experiments.EXPERIMENTS) == {"tiny", "small"}
    assert flags.experiment_from_flags([]).model.name == "tiny"
    with pytest.raises(flags.ConfigError, match="no configs/ directory was found"):
        flags.experiment_from_flags(["config:illada_8b"])


def test_a_checkout_is_found_from_a_subdirectory(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    (repo / "pyproject.toml").write_text('[project]\nname = "illada-jax"\n')
    (repo / "notebooks").mkdir()
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    monkeypatch.chdir(repo / "notebooks")
    assert registry.configs_dir() == repo / "configs"
    # A `configs/` that belongs to another project is not ours.
    other = tmp_path / "other"
    (other / "configs").mkdir(parents=True)
    (other / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    assert not registry._is_checkout(other)


# ------------------------------------------------------------------------------ compiles


RUNNER_PROGRAM = textwrap.dedent(
    """
    import json
    import sys

    from illada_jax.parallel.topology import abstract_devices, quiet_libtpu_on_cpu_host

    quiet_libtpu_on_cpu_host()
    from illada_jax.parallel import tpu_runtime

    name, topology = sys.argv[1:]
    tpu_runtime.apply_to_environment(topology)  # what the launchers set on the workers
    from illada_jax.config import flags
    from illada_jax.train.builder import build_run
    from illada_jax.train.loop import compile_steps

    experiment = flags.experiment_from_flags([f"config:{name}"])
    run = build_run(experiment, devices=abstract_devices(topology))
    # What `illada train` compiles (and then calls) before its first step.
    record = compile_steps(run)
    print("RESULT " + json.dumps({**record, "hlo": run.compiled_lowering().as_text()}))
    """
)


def runner_program(name: str, topology: str) -> dict:
    """The runner's compile of recipe `name` on the slice's abstract devices: the program
    fingerprints `train.loop.compile_steps` logs, and the train step's lowering."""
    result = subprocess.run(
        [sys.executable, "-c", RUNNER_PROGRAM, name, topology],
        capture_output=True, text=True, env=_env(), timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _compile(command: list[str], tmp_path) -> dict:
    """Run `illada compile ... --no-probes`, dumping the HLO; returns what it wrote."""
    assert command[:2] == ["illada", "compile"], command
    hlo, report = tmp_path / "compile.hlo", tmp_path / "report.json"
    args = [*command[2:], "--no-probes", f"--dump-hlo={hlo}", f"--json={report}"]
    result = subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", "compile", *args],
        capture_output=True, text=True, env=_env(), timeout=900,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stdout.strip().splitlines()
    return {"rc": result.returncode, "last": lines[-1], "hlo": hlo.read_text(),
            "report": json.loads(report.read_text())["report"]}  # fmt: skip


CPU_RECIPES = sorted(set(RECIPES) - set(POD_RECIPES) - {"tiny"})  # tiny: tests/compile/test_aot.py


@pytest.mark.tpu_compile
@pytest.mark.parametrize("name", CPU_RECIPES)
def test_every_cpu_recipe_compiles_for_a_small_slice(name, tmp_path):
    """The CPU recipes (the demo, its SFT, the sweeps' bases) compile for TPU too, as they are."""
    out = _compile(["illada", "compile", f"--config=config:{name}", "--topology=v5p-8"], tmp_path)
    assert out["rc"] == 0 and RESULT.match(out["last"]), out["last"]
    assert out["report"]["attention"] == "xla"  # nothing applied behind the config's back
