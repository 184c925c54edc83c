"""Ablation scales: a 1B LLaDA-shaped model and a 100M model, for comparing objectives, time
sampling, random-length schemes and schedules before spending a pod on the 8B.

Both carry their TPU settings, so `illada compile` reports the program `illada train` runs.
Throughput figures are estimates from `illada compile` at 40% MFU, not measurements. The run
directory is `gs://BUCKET/runs/NAME`, which every host of a pod writes (a multi-host run refuses
a local `--workdir`), and the data must be where every host reads it (docs/pods.md). A larger
slice splits the same global batch (the schedule counts steps of it) over more chips
(`Scale-out:` lines).
"""

import fiddle as fdl

from illada_jax.config.experiments import experiment_for_preset, pod_settings


def ablation_1b() -> fdl.Config:
    """The LLaDA-1B MDM shape (22 layers, d 2048, 32 heads / 4 KV heads; LLaDA Table 5) for
    42B tokens of 4096-token windows: LLaDA's recipe at 1/5 of its batch.

    Command:   illada train --config=config:ablation_1b --workdir=gs://BUCKET/runs/ablation-1b --config=set:data.datasets="('gs://BUCKET/data/llada-pretrain',)" --config=set:train.eval_dataset=gs://BUCKET/data/llada-pretrain-heldout --config=set:data.tokenizer=gs://BUCKET/tokenizers/llada-8b/tokenizer.json
    Check:     illada compile --config=config:ablation_1b --topology=v5p-64
    Hardware:  TPU v5p-64 (32 chips): 8 sequences of 4096 tokens per chip.
    Expected:  `illada compile`: 33.4 GiB per chip of 95, compiled in about 45 s on a 2-core
               host; at 40% MFU 1.7 s per step, ~19,000 tokens/s/chip, 19 hours for 40,000 steps.
    Scale-out: the batch stays 256 sequences: 4 per chip on a v5p-128 (17.6 GiB per chip, 0.86 s
               per step at 40% MFU):
               illada compile --config=config:ablation_1b --topology=v5p-128
    Data:      LLaDA's pre-training sets on the bucket (their `illada prepare` lines: configs/llada.py).

    Recipe: global batch 256 x 4096 (1.05M tokens per step), 40,000 steps; learning rate
    0 -> 4e-4 over 2000 steps, held, linear to 4e-5 over the last 20%; AdamW (0.9, 0.95), weight
    decay 0.1; 1% random-length steps. Sweep a field with `illada sweep` (configs/sweeps.py).
    """
    cfg = pod_settings(experiment_for_preset("llada_1b"), remat="save_dots_no_batch")
    cfg.diffusion.random_length_mode = "llada_truncate"
    cfg.data.datasets = ("data/llada-pretrain",)
    cfg.data.tokenizer = "tokenizers/llada-8b/tokenizer.json"
    cfg.optim.learning_rate = 4e-4
    cfg.optim.warmup_steps = 2000
    cfg.optim.schedule = "wsd"
    cfg.optim.decay_steps = 8000
    cfg.optim.final_learning_rate = 4e-5
    cfg.optim.weight_decay = 0.1
    cfg.optim.decay_exclude = "norms_and_embeddings"
    cfg.train.steps = 40_000
    cfg.train.batch_size = 256
    cfg.train.seq_len = 4096
    cfg.train.eval_every = 1000
    cfg.train.eval_dataset = "data/llada-pretrain-heldout"
    cfg.checkpoint.every = 1000
    return cfg


def ablation_100m() -> fdl.Config:
    """The 100m preset (12 layers, d 768, GQA 12 / 4 heads, the project's 8k tokenizer) for 5.2B
    tokens of 2048-token windows.

    Command:   illada train --config=config:ablation_100m --workdir=gs://BUCKET/runs/ablation-100m --config=set:data.datasets="('gs://BUCKET/data/ablation',)" --config=set:train.eval_dataset=gs://BUCKET/data/ablation-heldout
    Check:     illada compile --config=config:ablation_100m --topology=v5p-8
    Hardware:  TPU v5p-8 (4 chips): 32 sequences of 2048 tokens per chip.
    Expected:  `illada compile`: 18.0 GiB per chip of 95, compiled in about 35 s on a 2-core
               host; at 40% MFU 0.29 s per step, ~220,000 tokens/s/chip, 1.6 hours for 20,000
               steps.
    Scale-out: the batch stays 128 sequences: 8 per chip on a v5p-32 (4.6 GiB per chip, 0.07 s
               per step at 40% MFU):
               illada compile --config=config:ablation_100m --topology=v5p-32
    Data:      the training and held-out sets prepared with the default tokenizer, on the bucket:
               illada prepare --format jsonl --input gs://BUCKET/raw/ --output gs://BUCKET/data/ablation
               illada prepare --format jsonl --input gs://BUCKET/raw-heldout/ --output gs://BUCKET/data/ablation-heldout

    Recipe: global batch 128 x 2048 (262k tokens per step), 20,000 steps; learning rate
    0 -> 1e-3 over 1000 steps, cosine to 1e-4; antithetic diffusion times; iLLaDA's two-segment
    split.
    """
    cfg = pod_settings(experiment_for_preset("100m"), remat="save_dots_no_batch")
    cfg.diffusion.time_sampling = "antithetic"
    cfg.data.datasets = ("data/ablation",)
    cfg.optim.learning_rate = 1e-3
    cfg.optim.warmup_steps = 1000
    cfg.optim.schedule = "cosine"
    cfg.optim.final_learning_rate = 1e-4
    cfg.train.steps = 20_000
    cfg.train.batch_size = 128
    cfg.train.seq_len = 2048
    cfg.train.eval_every = 500
    cfg.train.eval_dataset = "data/ablation-heldout"
    cfg.checkpoint.every = 1000
    return cfg
