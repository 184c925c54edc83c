"""Config system: named experiments, fiddlers, overrides, validation errors, JSON round trip."""

from __future__ import annotations

import json

import pytest

from illada_jax.config import flags
from illada_jax.config.schema import ConfigError, DiffusionConfig, ModelConfig


def test_default_is_tiny_preset():
    experiment = flags.experiment_from_flags([])
    assert experiment.model.name == "tiny"
    # The CPU demo: the shipped 1024-piece tokenizer, whose size the model matches.
    assert (experiment.model.vocab_size, experiment.data.tokenizer) == (1024, "shipped:sp1k")


def test_set_and_fiddler_apply_in_order():
    experiment = flags.experiment_from_flags(
        [
            "config:small",
            "fiddler:antithetic_time",
            "set:model.n_layers=3",
            "set:diffusion.mask_eps=0.01",
            "fiddler:bf16",
            "set:model.attention_impl=cudnn",
            "set:model.eot_token_id=None",
        ]
    )
    assert experiment.model.name == "small"
    assert experiment.model.n_layers == 3
    assert experiment.diffusion.time_sampling == "antithetic"
    assert experiment.diffusion.mask_eps == 0.01
    assert experiment.model.attention_impl == "cudnn"
    assert experiment.model.eot_token_id is None


def test_overrides_without_leading_config_start_from_tiny():
    experiment = flags.experiment_from_flags(["set:train.steps=7"])
    assert (experiment.model.name, experiment.train.steps) == ("tiny", 7)


def test_llada_presets_use_truncation_and_illada_the_split():
    assert flags.experiment_from_flags(["config:llada_8b"]).diffusion.random_length_mode == (
        "llada_truncate"
    )
    assert flags.experiment_from_flags(["config:illada_8b"]).diffusion.random_length_mode == (
        "illada_split"
    )


def test_illada_8b_preset_matches_spec_table():
    m = flags.experiment_from_flags(["config:illada_8b"]).model
    assert (m.n_layers, m.d_model, m.n_heads, m.head_dim, m.n_kv_heads, m.mlp_dim) == (
        32,
        4096,
        32,
        128,
        8,
        14336,
    )
    assert (m.vocab_size, m.max_seq_len, m.tie_embeddings) == (155136, 8192, True)
    assert (m.mask_token_id, m.eos_token_id, m.pad_token_id, m.bos_token_id) == (5, 2, 1, 0)
    l8 = flags.experiment_from_flags(["config:llada_8b"]).model
    assert (l8.n_kv_heads, l8.mlp_dim, l8.vocab_size, l8.tie_embeddings) == (
        32,
        12288,
        126464,
        False,
    )
    assert (l8.mask_token_id, l8.eos_token_id, l8.eot_token_id) == (126336, 126081, 126348)


@pytest.mark.parametrize(
    ("directives", "expected"),
    [
        (["set:model.n_kv_heads=3"], r"model\.n_kv_heads=3 .*must divide n_heads=4.*\[1, 2, 4\]"),
        (["set:model.attention_impl=cudnn"], r"model\.attention_impl='cudnn'.*bfloat16"),
        (["set:model.attention_impl=flash"], r"model\.attention_impl='flash'.*xla, cudnn, splash"),
        (["set:model.remat_policy=some"], r"model\.remat_policy.*none, full, save_dots"),
        (["set:model.compute_dtype=float16"], r"model\.compute_dtype.*float32, bfloat16"),
        (["set:diffusion.time_sampling=sobol"], r"diffusion\.time_sampling.*uniform, antithetic"),
        (["set:diffusion.mask_eps=1.0"], r"diffusion\.mask_eps=1\.0.*\[0, 1\)"),
        (["set:diffusion.two_segment_prob=1.5"], r"diffusion\.two_segment_prob"),
        (["set:diffusion.objective=dpo"], r"diffusion\.objective.*pretrain, sft_llada"),
        (["set:model.mask_token_id=0"], r"model\.mask_token_id=0.*pad_token_id=0"),
        (["set:model.mask_token_id=9000"], r"model\.mask_token_id=9000.*vocab_size=1024"),
        (["set:train.steps=x"], r"train\.steps='x'.*must be an integer.*got the string 'x'"),
        (["set:train.seq_len=100000"], r"train\.seq_len=100000.*max_seq_len=512"),
        (["set:model.n_layerz=2"], r"no field 'n_layerz'.*n_layers"),
        (["set:modle.n_layers=2"], r"no section 'modle'.*model, diffusion"),
        (["config:no_such_preset"], r"unknown config 'no_such_preset'.*tiny"),
        (["config:tiny", "fiddler:no_such"], r"unknown fiddler 'no_such'.*antithetic_time"),
        (["frobnicate:x"], r"expected config:NAME"),
        (["set:model.n_layers"], r"expected set:path\.to\.field=VALUE"),
        (["config:small", "set:diffusion.objective=sft_llada"], r"random_length_mode.*'none'"),
    ],
)
def test_invalid_configs_name_the_field(directives, expected):
    with pytest.raises(ConfigError, match=expected):
        flags.experiment_from_flags(directives)


def test_resolved_config_round_trips_through_json(tmp_path):
    experiment = flags.experiment_from_flags(
        ["config:llada_8b", "fiddler:bf16", "fiddler:remat_full", "set:train.seed=3"]
    )
    path = tmp_path / "config.json"
    path.write_text(flags.to_json(experiment))
    loaded = flags.experiment_from_flags([f"file:{path}"])
    assert loaded == experiment
    # A file can be overridden further, like any other config.
    tweaked = flags.experiment_from_flags([f"file:{path}", "set:train.seed=4"])
    assert tweaked.train.seed == 4 and tweaked.model == experiment.model


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        flags.experiment_from_flags([f"file:{tmp_path / 'missing.json'}"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        flags.experiment_from_flags([f"file:{bad}"])
    unknown = tmp_path / "unknown.json"
    data = json.loads(flags.to_json(flags.experiment_from_flags([])))
    data["model"]["colour"] = "blue"
    unknown.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"model\.: unknown field\(s\) \['colour'\]"):
        flags.experiment_from_flags([f"file:{unknown}"])


def test_user_experiment_file(tmp_path):
    module = tmp_path / "my_exp.py"
    module.write_text(
        "from illada_jax.config.experiments import experiment_for_preset\n"
        "def wide():\n"
        "    cfg = experiment_for_preset('tiny')\n"
        "    cfg.model.d_model = 320\n"
        "    return cfg\n"
        "def not_a_config():\n"
        "    return 3\n"
    )
    assert flags.experiment_from_flags([f"config:{module}:wide"]).model.d_model == 320
    with pytest.raises(ConfigError, match="must return fdl.Config"):
        flags.experiment_from_flags([f"config:{module}:not_a_config"])
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        flags.experiment_from_flags([f"config:{module}:nope"])


def test_installed_recipes_are_the_last_place_searched(tmp_path, monkeypatch):
    """A wheel install carries configs/ as `illada_jax.recipes`; it is read when no
    $ILLADA_CONFIGS and no checkout is found."""
    from illada_jax.config import registry

    installed = tmp_path / "site" / "fake_illada_site" / "recipes"
    installed.mkdir(parents=True)
    (installed / "installed_demo.py").write_text(
        "from illada_jax.config.experiments import tiny\n"
        "def shipped():\n    cfg = tiny()\n    cfg.model.n_layers = 3\n    return cfg\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(registry, "INSTALLED_PACKAGE", "fake_illada_site.recipes")
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    (repo / "pyproject.toml").write_text('[project]\nname = "illada-jax"\n')
    monkeypatch.chdir(repo)
    assert registry.installed_configs_dir() == installed
    assert registry.configs_dir() == repo / "configs"  # a checkout comes first
    monkeypatch.setattr(registry, "_is_checkout", lambda directory: False)
    assert registry.configs_dir() == installed
    assert registry.recipes()["shipped"].path == installed / "installed_demo.py"
    assert flags.experiment_from_flags(["config:shipped"]).model.n_layers == 3
    # $ILLADA_CONFIGS still wins over it.
    mine = tmp_path / "mine"
    mine.mkdir()
    monkeypatch.setenv(registry.ENV_VAR, str(mine))
    assert registry.configs_dir() == mine


def test_dataclass_validation_directly():
    with pytest.raises(ConfigError, match="head_dim=7.*even"):
        ModelConfig(head_dim=7)
    with pytest.raises(ConfigError, match="loss_chunk_size=0"):
        DiffusionConfig(loss_chunk_size=0)
    assert ModelConfig(n_heads=8, n_kv_heads=2).q_per_kv == 4


def test_training_samples_use_the_configured_sampler():
    """`train.sample_block_length` / `sample_temperature` reach the sampler of the run's samples
    (the quickstart's: blocks of 4 at 0.7); a block that does not divide the length is refused."""
    from illada_jax.config.schema import TrainConfig
    from illada_jax.train.samples import TrainingSamples

    experiment = flags.experiment_from_flags(["config:tiny"])
    samples = TrainingSamples(experiment, graphdef=None, out_dir="unused", tokenizer=None)
    assert samples.options.block_length == 4 and samples.options.temperature == 0.7
    assert samples.options.gen_length == samples.options.steps == 32
    default = flags.experiment_from_flags(["config:tiny", "set:train.sample_block_length=0",
                                           "set:train.sample_temperature=0.0"])  # fmt: skip
    options = TrainingSamples(default, graphdef=None, out_dir="unused", tokenizer=None).options
    assert options.block_length == 32 and options.temperature == 0.0  # pure diffusion, greedy
    with pytest.raises(ConfigError, match="sample_block_length=5 is invalid: must divide"):
        TrainConfig(sample_length=32, sample_block_length=5)
    with pytest.raises(ConfigError, match="sample_temperature"):
        TrainConfig(sample_temperature=-0.5)
