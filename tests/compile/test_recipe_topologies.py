"""Every pod recipe builds on every TPU topology its docstring, docs/pods.md and README.md name,
and the documented multi-slice example compiles.

The commands are read from those texts, not repeated here: a recipe's `illada compile` lines
(`Check:` and `Scale-out:`), the `illada compile` commands of the pages' code blocks, and their
launcher commands (`launch/tpu_vm.py --accelerator-type T`, `launch/xpk.py --tpu-type T
--num-slices N -- illada train ...`) turned into the `illada compile` they imply. A page or a
docstring that names a slice count the recipe's batch does not divide fails here.

Building a run (`tools.aot.build_target_run`: the mesh on the slice's abstract devices, the batch
over its data axes, the shardings) takes seconds and runs on every Python, in one subprocess for
all commands (libtpu describes the topologies; the test process's environment stays as it is).
Compiling the multi-slice example (illada_8b on 2 x v5p-256: 6 CPU-minutes, 3-8 minutes on a
2-core host) is marked `tpu_compile`: it is the one compile of a pod recipe across slices (a
hybrid mesh over DCN with the multi-slice libtpu flags), the example the issue found refused.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap

import pytest
from test_recipes import POD_RECIPES, RECIPES, RESULT, _check_command, _env

from illada_jax.config import flags
from illada_jax.parallel.topology import parse_slice

pytestmark = [
    pytest.mark.core,
    pytest.mark.skipif(
        importlib.util.find_spec("libtpu") is None,
        reason="describing TPU topologies needs libtpu (the [tpu] extra)",
    ),
]

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = ("docs/pods.md", "README.md")
# The launchers' flag naming the slice type of each worker.
LAUNCHERS = {"launch/tpu_vm.py": "--accelerator-type", "launch/xpk.py": "--tpu-type"}
DOCSTRING_COMMAND = re.compile(r"^\s*(?:[A-Z][\w-]*:\s+)?(illada compile .*?)\s*$", re.M)
HARDWARE = re.compile(r"^\s*Hardware:\s+TPU (\S+) \((\d+) chips\): (\d+) \w+ of", re.M)
FENCE = re.compile(r"^\s*```")


# ------------------------------------------------------------------------------ the texts


def docstring_commands(name: str) -> list[str]:
    """The `illada compile` lines of a recipe's docstring (`Check:`, `Scale-out:`)."""
    return DOCSTRING_COMMAND.findall(RECIPES[name].function.__doc__ or "")


def code_block_lines(text: str) -> list[str]:
    """The lines of a Markdown page's fenced code blocks, `\\`-continued lines joined."""
    lines, inside, pending = [], False, ""
    for raw in text.splitlines():
        if FENCE.match(raw):
            inside, pending = not inside, ""
            continue
        line = raw.strip()
        if not inside or not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return lines


def _option(words: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in `words`."""
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def as_compile_command(line: str) -> str | None:
    """An `illada compile` command as written, or the one a launcher command implies (its
    `illada train` configs on the slice it launches); None for any other line."""
    if not line.startswith(("illada compile ", "python launch/")):  # other blocks: not shell
        return None
    words = shlex.split(line, comments=True)
    if words[:2] == ["illada", "compile"]:
        return shlex.join(words)
    if len(words) < 2 or words[0] != "python" or words[1] not in LAUNCHERS or "--" not in words:
        return None
    split = words.index("--")
    launcher, train = words[2:split], words[split + 1 :]
    topology = _option(launcher, LAUNCHERS[words[1]])
    if train[:2] != ["illada", "train"] or topology is None:
        return None
    slices = int(_option(launcher, "--num-slices") or 1)
    configs = [word for word in train if word.startswith("--config=")]
    extra = ["--num-slices", str(slices)] if slices > 1 else []
    return shlex.join(["illada", "compile", *configs, f"--topology={topology}", *extra])


def recipe_of(command: str) -> str | None:
    """The pod recipe a command runs (its `--config=config:NAME`), else None."""
    for word in shlex.split(command):
        if word.startswith("--config=config:") and word.split(":", 1)[1] in POD_RECIPES:
            return word.split(":", 1)[1]
    return None


def page_commands() -> dict[str, str]:
    """{command: page} for the pages' commands that run a pod recipe."""
    found = {}
    for page in PAGES:
        for line in code_block_lines((ROOT / page).read_text()):
            command = as_compile_command(line)
            if command and recipe_of(command):
                found.setdefault(command, page)
    return found


def documented_commands() -> dict[str, str]:
    """{command: where} for every pod recipe's docstring commands and the pages' commands."""
    found = {cmd: f"configs:{name}" for name in POD_RECIPES for cmd in docstring_commands(name)}
    for command, page in page_commands().items():
        found.setdefault(command, page)
    return found


DOCUMENTED = documented_commands()
PAGE_MULTI_SLICE = [c for c in page_commands() if "--num-slices" in shlex.split(c)]

# illada_8b's batch before it became a power of two: two v5p-256 slices (256 chips) do not
# divide 640 sequences. The error must name 512 and 768 and the mesh that keeps 640.
OLD_BATCH = 640
OLD_BATCH_MESH = ("--config=set:mesh.fsdp=64 --config=set:mesh.tensor=2 "
                  "--config=set:mesh.rules=fsdp_tp")  # fmt: skip


def _with_old_batch(command: str) -> str:
    return f"{command} --config=set:train.batch_size={OLD_BATCH}"


# ------------------------------------------------------------------------------ building

BUILD_EACH = textwrap.dedent(
    """
    import json
    import shlex
    import sys

    from illada_jax.parallel.topology import quiet_libtpu_on_cpu_host

    quiet_libtpu_on_cpu_host()
    from illada_jax.cli import build_parser
    from illada_jax.config import flags
    from illada_jax.errors import IlladaError
    from illada_jax.tools import aot

    commands, out = json.loads(sys.argv[1]), sys.argv[2]
    results = {}
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        try:
            experiment = aot.with_shape(
                flags.experiment_from_flags(args.config), args.global_batch, args.seq_len
            )
            run = aot.build_target_run(aot.Target(experiment, args.topology, args.num_slices))
            results[command] = {"mesh": dict(run.mesh.shape), "batch": experiment.train.batch_size}
        except IlladaError as err:
            results[command] = {"error": str(err)}
        except Exception as err:  # a bug, reported as one (the other commands still build)
            results[command] = {"error": f"{type(err).__name__}: {err}", "bug": True}
    with open(out, "w") as f:
        json.dump(results, f)
    """
)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, dict]:
    """{command: {"mesh": {axis: size}, "batch": global batch} or {"error": message}}: each
    command's run built as `illada compile` builds it (its argument parser, then the builder),
    without compiling."""
    old = _with_old_batch(PAGE_MULTI_SLICE[0]) if PAGE_MULTI_SLICE else None
    commands = [*DOCUMENTED, *([old, f"{old} {OLD_BATCH_MESH}"] if old else [])]
    out = tmp_path_factory.mktemp("built") / "built.json"
    result = subprocess.run(
        [sys.executable, "-c", BUILD_EACH, json.dumps(commands), str(out)],
        capture_output=True, text=True, env=_env(), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_texts_name_topologies_for_every_pod_recipe():
    """Every pod recipe's docstring says how it scales out (a command besides its `Check:`), and
    the pages' examples were found: the extraction above reads what is there."""
    for name in POD_RECIPES:
        assert len(docstring_commands(name)) >= 2, f"{name}: no `Scale-out:` command"
        assert shlex.join(_check_command(name)) in docstring_commands(name)
    assert any(where in PAGES for where in DOCUMENTED.values()), "no command found in the pages"
    assert PAGE_MULTI_SLICE, "docs/pods.md or README.md: no multi-slice pod recipe example"


@pytest.mark.parametrize("command", sorted(DOCUMENTED), ids=lambda c: c.split("config:")[1])
def test_every_documented_topology_builds_with_the_recipes_batch(command, built):
    """The mesh fits the slice and the batch divides over its data axes; a scale-out keeps the
    recipe's global batch (the schedule counts steps of it) unless the command sets one."""
    result = built[command]
    assert "error" not in result, f"{DOCUMENTED[command]}: {command}\n{result.get('error')}"
    recipe = flags.experiment_from_flags([f"config:{recipe_of(command)}"])
    if "train.batch_size=" not in command and "--global-batch" not in command:
        assert result["batch"] == recipe.train.batch_size, command


@pytest.mark.parametrize("name", POD_RECIPES)
def test_the_hardware_line_matches_the_check_topology(name, built):
    """`Hardware: TPU T (C chips): P sequences ... per chip` is the `Check:` run's slice, chip
    count and batch per chip."""
    match = HARDWARE.search(RECIPES[name].function.__doc__)
    assert match, f"{name}: no 'Hardware: TPU T (C chips): P ... of' line"
    topology, chips, per_chip = match[1], int(match[2]), int(match[3])
    check = _check_command(name)
    assert f"--topology={topology}" in check, (topology, check)
    result = built[shlex.join(check)]
    assert "error" not in result, result.get("error")
    assert math.prod(result["mesh"].values()) == chips, result["mesh"]
    assert result["batch"] == per_chip * chips, (name, result["batch"], per_chip, chips)


def test_a_batch_the_slices_do_not_divide_names_the_nearest_batches_and_the_mesh(built):
    """illada_8b's old 640 on the pages' multi-slice example: refused before anything compiles,
    in one line naming the nearest valid batches and the tensor mesh that keeps 640."""
    old = _with_old_batch(PAGE_MULTI_SLICE[0])
    if recipe_of(old) != "illada_8b":
        pytest.skip(f"the pages' multi-slice example is not illada_8b: {PAGE_MULTI_SLICE[0]}")
    error = built[old].get("error", "")
    assert f"train.batch_size={OLD_BATCH} must be a multiple of the data-parallel size 256" in error
    assert "nearest valid global batches are 512 and 768" in error
    assert OLD_BATCH_MESH in error and "\n" not in error


def test_the_mesh_the_batch_error_suggests_builds_across_slices(built):
    """The mesh that error suggests builds on the same two slices."""
    old = f"{_with_old_batch(PAGE_MULTI_SLICE[0])} {OLD_BATCH_MESH}"
    assert "error" not in built[old], built[old]


# ------------------------------------------------------------------------------ compiling


@pytest.mark.tpu_compile
def test_the_documented_multi_slice_example_compiles_and_fits(tmp_path):
    """The pages' multi-slice example, run as a user types it (plus `--no-probes`, which only
    skips the FLOPs probes, and `--json` to read the report)."""
    command = PAGE_MULTI_SLICE[0]
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", *shlex.split(command)[1:], "--no-probes",
         f"--json={report}"],
        capture_output=True, text=True, env=_env(), timeout=900,
    )  # fmt: skip
    last = (result.stdout.strip().splitlines() or [""])[-1]
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    assert RESULT.match(last), last
    out = json.loads(report.read_text())["report"]
    recipe = flags.experiment_from_flags([f"config:{recipe_of(command)}"])
    assert out["fits"] and out["global_batch"] == recipe.train.batch_size
    words = shlex.split(command)
    slices = int(_option(words, "--num-slices"))
    slice_ = parse_slice(_option(words, "--topology"), slices)
    assert out["chips"] == slice_.num_chips and f"dcn_data={slices}" in out["mesh"], out
