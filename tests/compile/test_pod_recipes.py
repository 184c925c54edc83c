"""Every pod recipe compiles for the TPU slice its docstring names and fits, and `illada compile`
lowers exactly the program the runner builds (the way MaxText guards its AOT tool: the same train
step, the same HLO). A file of its own so the test workers split these compiles (minutes each)
from the other recipe checks (`test_recipes.py`, whose helpers this uses).

By default the three pre-training recipes of the three model families compile (illada_8b,
llada_8b, ablation_100m: 1–2 minutes each on 2 CPU cores); their SFT recipes and ablation_1b use
the same model code, mesh rules and slices, so CI leaves them out for time.
`ILLADA_TEST_ALL_RECIPES=1` compiles every pod recipe.
"""

from __future__ import annotations

import os

import pytest
from test_recipes import POD_RECIPES, RESULT, _check_command, _compile, runner_hlo

from illada_jax.config import flags

pytestmark = pytest.mark.core

FAMILY_RECIPES = ("illada_8b", "llada_8b", "ablation_100m")
COMPILED_POD_RECIPES = (
    POD_RECIPES
    if os.environ.get("ILLADA_TEST_ALL_RECIPES", "").strip() not in ("", "0")
    else [name for name in POD_RECIPES if name in FAMILY_RECIPES]
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
def test_compile_lowers_the_program_the_runner_builds_for_a_pod_recipe(compiled, tmp_path):
    """illada_8b on the slice its docstring names (tiny on v5p-8: tests/compile/test_aot.py)."""
    command = _check_command("illada_8b")
    topology = next(w.split("=", 1)[1] for w in command if w.startswith("--topology="))
    runner = runner_hlo("illada_8b", topology, tmp_path / "runner.hlo")
    assert compiled("illada_8b")["hlo"].startswith("module @jit_train_step")
    assert compiled("illada_8b")["hlo"] == runner
