"""One train step on an 8-device CPU mesh equals the single-device step (rule tables `fsdp` and
`fsdp_tp`, gradient accumulation; the pre-training, autoregressive (ar), block-diffusion,
preference (vrpo) and online RL (grpo) objectives; for grpo also the rollout: the sampled completions, rewards and log-probabilities), and
parameters are really sharded as the rule tables say.

Every step goes through the runner's own path: `build_run`, `Run.init_state`, `Run.global_batch`
and `Run.train_step` (the compiled executable) called outside any mesh context, as
`train/loop.py` calls it; so the collectives measured are those of the program `illada train`
runs.

JAX fixes its device count when it starts, so the 8-device work runs in one subprocess with
`--xla_force_host_platform_device_count=8`; it prints JSON that the tests assert on. Mesh
configuration errors need no devices and are checked in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from jax.sharding import AbstractMesh

from illada_jax.config.schema import ConfigError, MeshConfig
from illada_jax.parallel import mesh as mesh_lib

pytestmark = pytest.mark.core

SCRIPT = textwrap.dedent(
    """
    import dataclasses
    import json
    import re

    import jax
    import numpy as np
    from jax.sharding import NamedSharding

    from illada_jax.config.schema import (
        CheckpointConfig, DataConfig, DiffusionConfig, Experiment, MeshConfig, ModelConfig,
        OptimConfig, TrainConfig,
    )
    from illada_jax.train.builder import build_run

    assert jax.device_count() == 8, jax.devices()
    MODEL = ModelConfig(
        vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
        mlp_dim=64, max_seq_len=32,
    )
    SEQ = 32
    # No warmup: the first update is a real one. A larger Adam eps keeps the first update
    # proportional to tiny gradients instead of amplifying their rounding to +-lr.
    OPTIM = OptimConfig(learning_rate=1e-3, warmup_steps=0, eps=1e-4)


    def rows(batch_size):
        # A pipeline batch (tokens, segment_ids, positions) of one document per row. Token ids
        # 8..63: never the mask, pad, bos, eos or eot id.
        rng = np.random.default_rng(0)
        tokens = rng.integers(8, MODEL.vocab_size, (batch_size, SEQ)).astype(np.int32)
        positions = np.broadcast_to(np.arange(SEQ, dtype=np.int32), tokens.shape).copy()
        return {"tokens": tokens, "segment_ids": np.ones_like(tokens), "positions": positions}


    def preference_rows(batch_size):
        # A preference batch: a prompt of 3..8 tokens, answers of 1..12 (one of 1 token), EOS
        # padding; token ids 8..63.
        rng = np.random.default_rng(1)
        batch = {side: np.full((batch_size, SEQ), 3, np.int32) for side in ("chosen", "rejected")}
        prompts = rng.integers(3, 9, batch_size).astype(np.int32)
        batch["prompt_lengths"] = prompts
        for side in ("chosen", "rejected"):
            lengths = rng.integers(1, 13, batch_size).astype(np.int32)
            lengths[0] = 1
            batch[f"{side}_lengths"] = lengths
            for row in range(batch_size):
                end = prompts[row] + lengths[row]
                batch[side][row, :end] = rng.integers(8, MODEL.vocab_size, end)
            batch[side][:, :prompts.max()] = batch["chosen"][:, :prompts.max()]  # shared prompt
        return batch


    def layout(array):
        spec = tuple(array.sharding.spec) if isinstance(array.sharding, NamedSharding) else None
        return {"spec": spec, "shard": list(array.addressable_shards[0].data.shape)}


    def flat(tree):
        return {
            jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf)).tolist()
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        }


    def collectives(hlo):
        # [op, result elements] of every collective instruction of a compiled module (each
        # counted once, also inside the scanned layer loop).
        found = []
        pattern = r"= (.+?) (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)\\("
        for line in hlo.splitlines():
            match = re.search(pattern, line)
            if match and "-start(" not in line:
                elements = 0
                for dims in re.findall(r"[a-z0-9]+\\[([0-9,]*)\\]", match.group(1)):
                    elements += int(np.prod([int(d) for d in dims.split(",") if d]))
                found.append([match.group(2), elements])
        return found


    def run(mesh_cfg, rules, devices, diffusion, batch_size, grad_accum=1):
        # The runner's own path (train/loop.py): build_run, init_state, global_batch, then the
        # compiled step called outside any mesh context, exactly as `advance` calls it. vrpo:
        # the state's frozen reference is its initial parameters (init_from is not read here).
        vrpo = diffusion.objective == "vrpo"
        experiment = Experiment(
            model=MODEL, diffusion=diffusion, optim=OPTIM,
            mesh=dataclasses.replace(mesh_cfg, rules=rules),
            train=TrainConfig(steps=10, batch_size=batch_size, seq_len=SEQ, grad_accum=grad_accum),
            checkpoint=CheckpointConfig(init_from="runs/sft" if vrpo else ""),
            data=DataConfig(datasets=("data/pref",)) if vrpo else DataConfig(),
        )
        run = build_run(experiment, devices)
        state = run.init_state()
        params = state["params"]
        out = {
            "mesh": dict(run.mesh.shape),
            "init": flat(params),  # fetched now: the step donates the state
            "layout": {
                "embed": layout(params["embed"]),
                "q_proj": layout(params["blocks"]["attn"]["q_proj"]),
                "k_proj": layout(params["blocks"]["attn"]["k_proj"]),
                "mlp_down": layout(params["blocks"]["mlp"]["down"]),
                # Optimiser moments follow their parameter.
                "embed_moments": [
                    layout(leaf) for leaf in jax.tree.leaves(state["opt_state"])
                    if leaf.shape == params["embed"].shape
                ],
            },
        }
        batch = run.global_batch((preference_rows if vrpo else rows)(batch_size))
        out["layout"]["batch"] = layout(batch["chosen" if vrpo else "tokens"])
        out["collectives"] = collectives(run.train_step.as_text())
        out["param_elements"] = sum(leaf.size for leaf in jax.tree.leaves(params))
        controls = run.controls(lr_scale=1.0, loss_ceiling=np.inf, data_step=0)
        new_state, metrics = run.train_step(state, batch, run.step_key(0), controls)
        out["layout"]["embed_after"] = layout(new_state["params"]["embed"])
        out["metrics"] = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        out["step"] = int(new_state["step"])
        out["params"] = flat(new_state["params"])
        if vrpo:  # the reference is passed through unchanged, sharded like the parameters
            out["ref_unchanged"] = flat(new_state["ref_params"]) == out["init"]
            out["layout"]["ref_embed"] = layout(new_state["ref_params"]["embed"])
        return out


    class IdsText:
        # Completions as text for the reward: the token ids, space-separated.
        def decode(self, ids, skip_special=True):
            return " ".join(map(str, ids))


    def grpo_run(mesh_cfg, rules, devices):
        # objective=grpo through the runner's path: a rollout (the sampler under the mesh, the
        # reward on the host, the old and reference log-probabilities), then the train step on it.
        from illada_jax.config.post_training import GrpoConfig
        from illada_jax.train.rollout import Rollouts

        experiment = Experiment(
            model=MODEL, diffusion=DiffusionConfig(objective="grpo", random_length_mode="none"),
            optim=OPTIM, mesh=dataclasses.replace(mesh_cfg, rules=rules),
            train=TrainConfig(steps=10, batch_size=8, seq_len=SEQ),
            checkpoint=CheckpointConfig(init_from="runs/sft"), data=DataConfig(datasets=("data/rl",)),
            # Reward 1 when a completion opens with an even token id: the groups get mixed rewards.
            grpo=GrpoConfig(group_size=4, inner_updates=2, gen_length=8, steps=8, block_length=8,
                            reward="regex:^[0-9]*[02468]( |$)", p_mask_prompt=0.5),
        )
        run = build_run(experiment, devices)
        state = run.init_state()
        out = {"init": flat(state["params"])}
        rng = np.random.default_rng(2)
        prompts = {"prompt": rng.integers(8, MODEL.vocab_size, (2, SEQ - 8)).astype(np.int32),
                   "prompt_mask": np.ones((2, SEQ - 8), np.int32), "example": np.arange(2)}
        prompts["prompt_mask"][0, :5] = 0  # a shorter, left-padded prompt
        state, _ = Rollouts(run, IdsText())(state, prompts, [{"answer": "a"}, {"answer": "b"}], 0)
        out["rollout"] = flat(state["rollout"])
        out["layout"] = {"rollout_tokens": layout(state["rollout"]["tokens"]),
                         "rollout_old": layout(state["rollout"]["old_log_probs"])}
        controls = run.controls(lr_scale=1.0, loss_ceiling=np.inf, data_step=0)
        new_state, metrics = run.train_step(state, {}, run.step_key(0), controls)
        out["metrics"] = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        out["step"] = int(new_state["step"])
        out["params"] = flat(new_state["params"])
        out["ref_unchanged"] = flat(new_state["ref_params"]) == out["init"]
        out["rollout_unchanged"] = flat(new_state["rollout"]) == out["rollout"]
        return out


    one = jax.devices()[:1]
    split = DiffusionConfig()  # the default: iLLaDA two-segment split, random per row
    # Each micro-batch draws its own times and masks (key folded with the micro-batch index), so
    # accumulation only matches the full batch when the objective does not depend on the key:
    # mask_eps ~ 1 masks every token, and no random lengths.
    full_mask = DiffusionConfig(random_length_mode="none", mask_eps=0.999999)
    results = {
        "single": run(MeshConfig(fsdp=1), "fsdp", one, split, 8),
        "fsdp": run(MeshConfig(fsdp=8), "fsdp", None, split, 8),
        "fsdp_tp": run(MeshConfig(fsdp=4, tensor=2), "fsdp_tp", None, split, 8),
        "accum1": run(MeshConfig(fsdp=1), "fsdp", one, full_mask, 16, 1),
        "accum2": run(MeshConfig(fsdp=8), "fsdp", None, full_mask, 16, 2),
    }
    vrpo = DiffusionConfig(objective="vrpo", random_length_mode="none")
    results["vrpo_single"] = run(MeshConfig(fsdp=1), "fsdp", one, vrpo, 8)
    results["vrpo_fsdp"] = run(MeshConfig(fsdp=8), "fsdp", None, vrpo, 8)
    results["vrpo_fsdp_tp"] = run(MeshConfig(fsdp=4, tensor=2), "fsdp_tp", None, vrpo, 8)
    # The autoregressive baseline and block diffusion (blocks of 8: the noisy+clean canvas).
    for name, diffusion in (("ar", DiffusionConfig(objective="ar")),
                            ("bd", DiffusionConfig(objective="block_diffusion", block_size=8))):
        results[f"{name}_single"] = run(MeshConfig(fsdp=1), "fsdp", one, diffusion, 8)
        results[f"{name}_fsdp"] = run(MeshConfig(fsdp=8), "fsdp", None, diffusion, 8)
        results[f"{name}_fsdp_tp"] = run(MeshConfig(fsdp=4, tensor=2), "fsdp_tp", None, diffusion, 8)
    results["grpo_single"] = grpo_run(MeshConfig(fsdp=1), "fsdp", one)
    results["grpo_fsdp"] = grpo_run(MeshConfig(fsdp=8), "fsdp", None)
    results["grpo_fsdp_tp"] = grpo_run(MeshConfig(fsdp=4, tensor=2), "fsdp_tp", None)
    print("RESULT " + json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def results():
    env = {
        **os.environ,
        # 8 virtual CPU devices; -O0 codegen: the same programs, compiled twice as fast.
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _assert_same_update(reference: dict, other: dict) -> None:
    ref_m, m = reference["metrics"], other["metrics"]
    assert m["applied"] == ref_m["applied"] == 1
    assert m["loss"] == pytest.approx(ref_m["loss"], rel=1e-5)
    assert m["grad_norm"] == pytest.approx(ref_m["grad_norm"], rel=1e-5)
    assert m["num_masked"] == ref_m["num_masked"]
    assert other["step"] == reference["step"] == 1
    assert reference["params"].keys() == other["params"].keys()
    for name in reference["params"]:
        np.testing.assert_allclose(
            np.asarray(other["params"][name]),
            np.asarray(reference["params"][name]),
            rtol=1e-4,
            atol=1e-6,
            err_msg=name,
        )


def test_reference_step_really_updates(results):
    # Otherwise the equalities below would hold for a step that does nothing.
    single = results["single"]
    assert single["mesh"] == {"dcn_data": 1, "data": 1, "fsdp": 1, "tensor": 1}
    assert np.isfinite(single["metrics"]["loss"]) and single["metrics"]["grad_norm"] > 0
    for name in single["params"]:
        moved = np.abs(np.asarray(single["params"][name]) - np.asarray(single["init"][name]))
        assert moved.max() > 1e-4, name


@pytest.mark.parametrize("run", ["fsdp", "fsdp_tp"])
def test_sharded_step_equals_single_device_step(results, run):
    # Same initial parameters whatever the mesh ...
    for name, value in results["single"]["init"].items():
        np.testing.assert_allclose(results[run]["init"][name], value, rtol=0, atol=0)
    # ... and the same update.
    _assert_same_update(results["single"], results[run])


@pytest.mark.parametrize("run", ["ar_fsdp", "ar_fsdp_tp", "bd_fsdp", "bd_fsdp_tp"])
def test_sharded_ar_and_block_diffusion_steps_equal_single_device_steps(results, run):
    single = results[run.split("_")[0] + "_single"]
    assert np.isfinite(single["metrics"]["loss"]) and single["metrics"]["grad_norm"] > 0
    assert single["metrics"]["num_masked"] > 0
    for name, value in single["init"].items():
        np.testing.assert_allclose(results[run]["init"][name], value, rtol=0, atol=0)
    _assert_same_update(single, results[run])


@pytest.mark.parametrize("run", ["vrpo_fsdp", "vrpo_fsdp_tp"])
def test_sharded_preference_step_equals_single_device_step(results, run):
    single = results["vrpo_single"]
    # The step moves the policy (the reference starts equal, so the margin is 0 and the loss
    # log 2, but its gradient is not 0) and leaves the reference as it was.
    assert single["metrics"]["loss"] == pytest.approx(np.log(2.0), rel=1e-5)
    moved = max(np.abs(np.asarray(single["params"][n]) - np.asarray(single["init"][n])).max()
                for n in single["params"])  # fmt: skip
    assert moved > 1e-4
    assert single["ref_unchanged"] and results[run]["ref_unchanged"]
    assert results[run]["layout"]["ref_embed"] == results[run]["layout"]["embed"]
    for name, value in single["init"].items():
        np.testing.assert_allclose(results[run]["init"][name], value, rtol=0, atol=0)
    _assert_same_update(single, results[run])


def test_fsdp_shards_parameters_over_eight_devices(results):
    run = results["fsdp"]
    assert run["mesh"] == {"dcn_data": 1, "data": 1, "fsdp": 8, "tensor": 1}
    lay = run["layout"]
    # embed [vocab=64, embed=32]: the embed axis over fsdp, each device holds 1/8.
    assert lay["embed"] == {"spec": [None, "fsdp"], "shard": [64, 4]}
    assert lay["q_proj"] == {"spec": [None, "fsdp", None, None], "shard": [2, 4, 4, 8]}
    assert lay["mlp_down"] == {"spec": [None, None, "fsdp"], "shard": [2, 64, 4]}
    assert lay["embed_moments"] and all(m == lay["embed"] for m in lay["embed_moments"])
    # The state keeps its shardings through the step; rows of the batch over every data axis.
    assert lay["embed_after"] == lay["embed"]
    assert lay["batch"] == {"spec": [["dcn_data", "data", "fsdp"], None], "shard": [1, 32]}


def test_fsdp_moves_parameters_not_activations(results):
    # FSDP gathers each weight (forward, and again in the rematerialised backward) and reduces
    # each gradient: about 3x the parameters, plus scalars. Without the model's activation
    # sharding constraints GSPMD split activations along d_model instead and all-reduced every
    # projection's output (40x the parameters at the `tiny` preset).
    run = results["fsdp"]
    moved = sum(elements for _, elements in run["collectives"])
    assert run["collectives"], "no collectives: the step is not sharded"
    assert moved <= 4 * run["param_elements"], (moved, run["param_elements"], run["collectives"])


def test_fsdp_tp_shards_heads_mlp_and_vocab_over_tensor(results):
    run = results["fsdp_tp"]
    assert run["mesh"] == {"dcn_data": 1, "data": 1, "fsdp": 4, "tensor": 2}
    lay = run["layout"]
    # q_proj [layers, embed, heads, head_dim]
    assert lay["q_proj"] == {"spec": [None, "fsdp", "tensor", None], "shard": [2, 8, 2, 8]}
    # k_proj: 2 kv heads divide over tensor=2.
    assert lay["k_proj"] == {"spec": [None, "fsdp", "tensor", None], "shard": [2, 8, 1, 8]}
    assert lay["embed"] == {"spec": ["tensor", "fsdp"], "shard": [32, 8]}
    assert lay["mlp_down"] == {"spec": [None, "tensor", "fsdp"], "shard": [2, 32, 8]}
    assert lay["embed_moments"] and all(m == lay["embed"] for m in lay["embed_moments"])
    assert lay["embed_after"] == lay["embed"]
    # tensor is not a data axis: 8 rows over 4 data shards.
    assert lay["batch"]["shard"] == [2, 32]


def test_grad_accum_two_on_eight_devices_equals_one_big_batch(results):
    reference, accum = results["accum1"], results["accum2"]
    assert accum["mesh"]["fsdp"] == 8
    # The premise: every token masked in both, so the objective does not depend on the keys.
    assert reference["metrics"]["num_masked"] == accum["metrics"]["num_masked"] == 16 * 32
    _assert_same_update(reference, accum)


def test_mesh_that_does_not_fit_the_devices_names_the_device_count():
    with pytest.raises(ConfigError, match="8 devices"):
        mesh_lib.resolve_shape(MeshConfig(data=3), 8)
    with pytest.raises(ConfigError, match="8 are available"):
        mesh_lib.resolve_shape(MeshConfig(data=3, fsdp=1), 8)
    assert mesh_lib.resolve_shape(MeshConfig(data=2, tensor=2), 8) == {
        "dcn_data": 1,
        "data": 2,
        "fsdp": 2,
        "tensor": 2,
    }


def test_batch_that_does_not_divide_over_the_data_axes_names_the_field():
    mesh = AbstractMesh((1, 8, 1, 1), mesh_lib.AXES)
    with pytest.raises(ConfigError, match=r"train\.batch_size=6") as err:
        mesh_lib.check_batch(mesh, 6)
    assert "the smallest valid global batch is 8" in str(err.value)
    with pytest.raises(ConfigError, match="the nearest valid global batches are 8 and 16"):
        mesh_lib.check_batch(mesh, 12)
    with pytest.raises(ConfigError, match=r"train\.grad_accum=2"):
        mesh_lib.check_batch(mesh, 8, 2)
    mesh_lib.check_batch(mesh, 16, 2)  # fits: no error
    # tensor is not a data axis.
    mesh_lib.check_batch(AbstractMesh((1, 4, 1, 2), mesh_lib.AXES), 4)
    # 640 rows cannot cover 256 FSDP chips: the error names the nearest batches and how to keep
    # 640 by giving the rest to a tensor axis.
    with pytest.raises(ConfigError, match=r"batches are 512 and 768 .*mesh\.fsdp=128 .*mesh\.tensor=2 .*rules=fsdp_tp"):  # fmt: skip
        mesh_lib.check_batch(AbstractMesh((1, 1, 256, 1), mesh_lib.AXES), 640)
    # 40 rows on 128 chips would need a tensor axis of 16, wider than the 8B models' 8 kv heads:
    # only the batches are suggested.
    with pytest.raises(ConfigError, match="the smallest valid global batch is 128") as err:
        mesh_lib.check_batch(AbstractMesh((1, 1, 128, 1), mesh_lib.AXES), 40)
    assert "mesh.tensor" not in str(err.value)


def test_two_free_mesh_axes_are_invalid():
    with pytest.raises(ConfigError, match="at most one mesh axis may be -1"):
        MeshConfig(fsdp=-1, data=-1)
    with pytest.raises(ConfigError, match="tensor"):
        MeshConfig(tensor=0)


def test_devices_spanning_slices_need_a_dcn_axis():
    """Two slices without `mesh.dcn_data`: FSDP would shard parameters across the data-center
    network; the mesh refuses and names the fix (checked before any device is used)."""
    devices = [types.SimpleNamespace(id=i, slice_index=i // 4) for i in range(8)]
    with pytest.raises(ConfigError, match=r"span 2 slices.*set:mesh\.dcn_data=2"):
        mesh_lib.make_mesh(MeshConfig(), devices=devices)


def _constraint_specs(fn, *shapes, explicit=False):
    """The PartitionSpecs of the sharding constraints in fn's jaxpr, traced under an abstract
    (dcn_data=1, data=2, fsdp=2, tensor=2) mesh of Auto axes (as `make_mesh` builds), or of
    Explicit ones."""
    import jax

    axis_type = jax.sharding.AxisType.Explicit if explicit else jax.sharding.AxisType.Auto
    mesh = AbstractMesh((1, 2, 2, 2), mesh_lib.AXES, axis_types=(axis_type,) * 4)
    args = [jax.ShapeDtypeStruct(shape, np.float32) for shape in shapes]
    with jax.sharding.use_abstract_mesh(mesh):
        jaxpr = jax.make_jaxpr(fn)(*args)
    return [
        tuple(eqn.params["sharding"].spec)
        for eqn in jaxpr.eqns
        if eqn.primitive.name == "sharding_constraint"
    ]


def test_activation_layout_rows_over_data_axes_heads_over_tensor():
    from illada_jax.parallel.rules import constrain

    specs = _constraint_specs(
        lambda x, q, k: (
            constrain(x, ("batch", "length", "embed")),
            constrain(q, ("batch", "length", "heads", "head_dim")),
            constrain(k, ("batch", "length", "kv_heads", "head_dim")),
        ),
        (8, 16, 32),
        (8, 16, 4, 8),
        (6, 16, 1, 8),
    )
    data = ("dcn_data", "data", "fsdp")
    assert specs[0] == (data, None, None)  # d_model never split, whatever the weights' rule
    assert specs[1] == (data, None, "tensor", None)
    # 6 rows: the 4 data shards do not divide them, 2 do (dcn_data is 1); one kv head stays whole.
    assert specs[2] == (("dcn_data", "data"), None, None, None)
    # On Explicit axes a constraint would be an assertion: none is added.
    assert (
        _constraint_specs(lambda x: constrain(x, ("batch", "length")), (8, 16), explicit=True) == []
    )
    # Outside a mesh nothing is constrained.
    import jax

    jaxpr = jax.make_jaxpr(lambda x: constrain(x, ("batch", "length")))(
        np.zeros((4, 4), np.float32)
    )
    assert not any(e.primitive.name == "sharding_constraint" for e in jaxpr.eqns)


@pytest.mark.parametrize("run", ["grpo_fsdp", "grpo_fsdp_tp"])
def test_sharded_rl_rollout_and_step_equal_the_single_device_ones(results, run):
    single, sharded = results["grpo_single"], results[run]
    for name, value in single["init"].items():
        np.testing.assert_allclose(sharded["init"][name], value, rtol=0, atol=0)
    rollout, other = single["rollout"], sharded["rollout"]
    # The same completions (the sampler under the mesh), hence the same rewards and advantages.
    for name in ("['tokens']", "['completion']", "['hidden_prompt']", "['rewards']"):
        np.testing.assert_array_equal(other[name], rollout[name], err_msg=name)
    rewards = np.asarray(rollout["['rewards']"]).reshape(2, 4)
    assert (rewards.min(axis=1) < rewards.max(axis=1)).any(), rewards  # some group is mixed
    for name in ("['advantages']", "['old_log_probs']", "['ref_log_probs']"):
        np.testing.assert_allclose(other[name], rollout[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # Rows over the data axes, like a batch.
    assert sharded["layout"]["rollout_tokens"]["shard"][0] < 8
    assert sharded["layout"]["rollout_old"]["shard"][1:] == [2, 32]
    # The step right after the rollout: the policy is the one that sampled (ratio 1, KL 0) and
    # the advantages are centred per group, so the loss is 0 but its gradient is not.
    assert single["metrics"]["loss"] == pytest.approx(0.0, abs=1e-6)
    assert single["metrics"]["ratio"] == pytest.approx(1.0, abs=1e-5)
    assert single["metrics"]["grad_norm"] > 1e-4
    assert single["ref_unchanged"] and sharded["ref_unchanged"]
    assert single["rollout_unchanged"] and sharded["rollout_unchanged"]
    ref_m, m = single["metrics"], sharded["metrics"]
    assert m["grad_norm"] == pytest.approx(ref_m["grad_norm"], rel=1e-4)
    assert m["reward_mean"] == ref_m["reward_mean"]
    assert sharded["step"] == single["step"] == 1
    for name in single["params"]:
        np.testing.assert_allclose(sharded["params"][name], single["params"][name], rtol=1e-4,
                                   atol=1e-6, err_msg=name)  # fmt: skip
