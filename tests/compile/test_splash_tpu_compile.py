"""Splash attention lowers and compiles for a TPU topology on this CPU host (libtpu, `[tpu]` extra).

Forward and backward of the pre-training objective with `attention_impl="splash"`, GQA, bf16
compute and iLLaDA's two-segment split (segment ids), on an abstract 2x2 v5p slice with a
(data, tensor) mesh so the kernel runs inside `shard_map`. Runs in a subprocess with libtpu's host
probing silenced (`parallel.topology.quiet_libtpu_on_cpu_host`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.core

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental.topologies import get_topology_desc
    from flax import nnx
    from illada_jax.config.schema import DiffusionConfig, ModelConfig
    from illada_jax.model.transformer import abstract_model
    from illada_jax.train.objective import diffusion_loss

    topo = get_topology_desc(platform="tpu", topology_name="v5:2x2x1",
                             chip_config_name="megacore", chips_per_host_bounds=(2, 2, 1),
                             num_slices=1, wrap=(False, False, False))
    mesh = jax.sharding.Mesh(np.array(topo.devices).reshape(2, 2), ("data", "tensor"),
                             axis_types=(jax.sharding.AxisType.Auto,) * 2)
    cfg = ModelConfig(vocab_size=1024, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=128, mlp_dim=512, max_seq_len=1024, attention_impl="splash",
                      compute_dtype="bfloat16")
    graphdef, params = nnx.split(abstract_model(cfg))
    P, NS = jax.sharding.PartitionSpec, jax.sharding.NamedSharding
    replicated = NS(mesh, P())
    batch_sharding = NS(mesh, P("data", None))
    diffusion = DiffusionConfig(random_length_mode="illada_split", two_segment_prob=0.3)

    def loss(p, tokens, key):
        return diffusion_loss(nnx.merge(graphdef, p), {"tokens": tokens}, key, diffusion)[0]

    tokens = jax.ShapeDtypeStruct((4, 1024), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    with jax.set_mesh(mesh):
        lowered = jax.jit(
            jax.value_and_grad(loss),
            in_shardings=(jax.tree.map(lambda _: replicated, params), batch_sharding, replicated),
        ).lower(params, tokens, key)
        assert "tpu_custom_call" in lowered.as_text(), "splash kernel missing from the program"
        compiled = lowered.compile()
    print("COMPILED", compiled.memory_analysis().temp_size_in_bytes)
    """
)


@pytest.mark.tpu_compile
def test_splash_attention_compiles_for_tpu_v5p():
    try:
        import libtpu  # noqa: F401
    except ImportError as err:
        raise AssertionError(
            "libtpu is missing: install the test extras, pip install -e '.[dev,tpu]'"
        ) from err
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        TPU_SKIP_MDS_QUERY="1",
        TPU_ACCELERATOR_TYPE="v5p-8",
        TPU_WORKER_HOSTNAMES="localhost",
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "COMPILED" in result.stdout
