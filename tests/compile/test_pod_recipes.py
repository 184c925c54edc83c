"""Every pod recipe compiles for the TPU slice its docstring names and fits, and `illada compile`
lowers exactly the program the runner builds (the way MaxText guards its AOT tool: the same train
step, the same HLO). A file of its own so the test workers split these compiles (minutes each)
from the other recipe checks (`test_recipes.py`, whose helpers this uses).

By default the pre-training recipes of the LLaDA family compile (llada_8b, ablation_100m: 1–4
minutes each on 2 CPU cores with the TPU runtime flags); illada_8b compiles across two slices, the
scale-out its docstring documents (tests/compile/test_recipe_topologies.py), and its single-slice
run is built there; the SFT recipes and ablation_1b use the same model code, mesh rules and
slices, so CI leaves them out for time. `ILLADA_TEST_ALL_RECIPES=1` compiles every pod recipe.
"""

from __future__ import annotations

import os

import pytest
from test_recipes import POD_RECIPES, RESULT, _check_command, _compile, runner_program

from illada_jax.config import flags

pytestmark = pytest.mark.core

FAMILY_RECIPES = ("illada_8b", "llada_8b", "ablation_100m")
DEFAULT_COMPILES = ("llada_8b", "ablation_100m")  # illada_8b: across slices, see the docstring
COMPILED_POD_RECIPES = (
    POD_RECIPES
    if os.environ.get("ILLADA_TEST_ALL_RECIPES", "").strip() not in ("", "0")
    else [name for name in POD_RECIPES if name in DEFAULT_COMPILES]
)


def test_the_family_recipes_are_pod_recipes():
    assert set(FAMILY_RECIPES) <= set(POD_RECIPES), set(FAMILY_RECIPES) - set(POD_RECIPES)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """`compiled(name)`: the recipe's `Check:` compile, run once per module."""
    done: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in done:
            done[name] = _compile(_check_command(name), tmp_path_factory.mktemp(name))
        return done[name]

    return get


@pytest.mark.tpu_compile
@pytest.mark.parametrize("name", COMPILED_POD_RECIPES)
def test_every_pod_recipe_compiles_for_its_slice_and_fits(name, compiled):
    out = compiled(name)
    assert RESULT.match(out["last"]), out["last"]
    assert out["rc"] == 0, f"{name} does not fit: {out['report']['error'][:300]}"
    report = out["report"]
    assert report["fits"] and report["attention"] == "splash"
    assert (
        report["global_batch"] == flags.experiment_from_flags([f"config:{name}"]).train.batch_size
    )


@pytest.mark.tpu_compile
def test_compile_reports_the_executable_the_runner_compiles_for_a_pod_recipe(compiled):
    """ablation_100m (splash attention, bf16, FSDP) on the slice its docstring names: the program
    `illada compile` reports is the executable `illada train` compiles there
    (`train.loop.compile_steps`), fingerprint for fingerprint (tiny on v5p-8:
    tests/compile/test_aot.py)."""
    command = _check_command("ablation_100m")
    topology = next(w.split("=", 1)[1] for w in command if w.startswith("--topology="))
    runner = runner_program("ablation_100m", topology)
    report = compiled("ablation_100m")
    assert report["hlo"].startswith("module @jit_train_step")
    assert report["report"]["program"] == runner["train_step_program"]
    assert report["hlo"] == runner["hlo"]
    assert "tpu_custom_call" in runner["hlo"]  # splash attention, inside its shard_map
