"""The TPU runtime table as data (no libtpu here; tests/compile/test_libtpu_flags.py compiles with
it) and its record in a run's `config.json`."""

from __future__ import annotations

import json

import pytest

from illada_jax.config import flags
from illada_jax.parallel import tpu_runtime


@pytest.mark.parametrize(
    "name, generation, slices",
    [("v5p-256", "v5p", 1), ("v5litepod-16", "v5e", 1), ("2xv6e-8", "v6e", 2),
     ("v5p:4x4x8", "v5p", 1), ("v4-8", "v4", 1), ("V5P-8", "v5p", 1)],
)  # fmt: skip
def test_slice_names_resolve_to_a_generation(name, generation, slices):
    assert tpu_runtime.generation_of(name) == generation
    assert tpu_runtime.slices_of(name) == slices


@pytest.mark.parametrize("name", ["a100-8", "cpu", "", "v7x-8"])
def test_unknown_slices_are_refused_by_name(name):
    with pytest.raises(ValueError, match="known generations: v4, v5e, v5p, v6e"):
        tpu_runtime.generation_of(name)


def test_the_table_per_generation():
    v5p = tpu_runtime.libtpu_flags("v5p-256")
    assert v5p["xla_tpu_overlap_compute_collective_tc"] == "true"
    assert v5p["xla_tpu_scoped_vmem_limit_kib"] == "61440"  # libtpu's v5p maximum is 65,472
    assert "xla_enable_async_all_gather" not in v5p  # continuation fusion: v5e only
    assert tpu_runtime.libtpu_flags("v5e-16")["xla_enable_async_all_gather"] == "true"
    assert "xla_tpu_scoped_vmem_limit_kib" not in tpu_runtime.libtpu_flags("v4-8")
    # Across slices, the DCN all-reduce flags join (by prefix or by argument).
    assert "xla_tpu_enable_data_parallel_all_reduce_opt" not in v5p
    for multi in (tpu_runtime.libtpu_flags("2xv5p-256"), tpu_runtime.libtpu_flags("v5p-256", 2)):
        assert multi["xla_tpu_enable_data_parallel_all_reduce_opt"] == "true"


def test_the_users_flags_win_and_are_kept():
    merged = tpu_runtime.parse_args(tpu_runtime.merged_init_args(
        "--xla_tpu_scoped_vmem_limit_kib=1024 --my_flag=3 --bare", "v5p-8"))  # fmt: skip
    assert merged["xla_tpu_scoped_vmem_limit_kib"] == "1024"
    assert merged["my_flag"] == "3" and merged["bare"] == "true"
    assert merged["xla_tpu_enable_async_collective_fusion"] == "true"
    text = tpu_runtime.libtpu_init_args("v6e-8")
    assert tpu_runtime.format_args(tpu_runtime.parse_args(text)) == text


def test_apply_to_environment_sets_libtpu_init_args(monkeypatch):
    monkeypatch.setenv("LIBTPU_INIT_ARGS", "--xla_tpu_overlap_compute_collective_tc=false")
    value = tpu_runtime.apply_to_environment("v5p-8")
    assert "--xla_tpu_overlap_compute_collective_tc=false" in value
    import os

    assert os.environ["LIBTPU_INIT_ARGS"] == value


def test_runtime_record_names_versions_and_the_flags_in_effect(monkeypatch):
    monkeypatch.setenv("LIBTPU_INIT_ARGS", "--a=1")
    monkeypatch.delenv("MEGASCALE_NUM_SLICES", raising=False)
    record = tpu_runtime.runtime_record()
    assert record["jax"] and record["jaxlib"] and record["python"].count(".") == 2
    assert record["environment"]["LIBTPU_INIT_ARGS"] == "--a=1"
    assert "MEGASCALE_NUM_SLICES" not in record["environment"]


def test_a_runs_config_json_records_the_runtime_and_still_reproduces_the_run(tmp_path):
    from illada_jax.ckpt import rundir

    experiment = flags.experiment_from_flags(["config:tiny", "set:train.steps=7"])
    path = rundir.write_config(tmp_path, experiment, runtime={"jax": "x", "environment": {}})
    assert json.loads(path.read_text())["runtime"] == {"jax": "x", "environment": {}}
    assert flags.experiment_from_flags([f"file:{path}"]) == experiment
