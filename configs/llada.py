"""LLaDA-8B: pre-training (Nie et al., 2025, arXiv:2502.09992, §2.2 and App. B) and LLaDA-style SFT.

Recipes here are sized for TPU v5p pods and carry their TPU settings (Pallas splash attention,
bf16 compute with fp32 parameters and optimizer state, FSDP over the slice, the least-recompute
remat policy that fits), so `illada compile --config=config:NAME --topology=T` reports the program `illada train
--config=config:NAME` runs on T. Throughput figures are estimates from `illada compile` at 40%
MFU, not measurements.

On a pod every host reads and writes the same paths: the run directory is `gs://BUCKET/runs/NAME`
(orbax writes it directly; a multi-host run refuses a local `--workdir` unless
`--config=set:checkpoint.shared_filesystem=True` says every host mounts it), and the data and
`checkpoint.init_from` must be on the bucket too (docs/pods.md).

Scaling out keeps each recipe's global batch: it is the paper's, and the schedule counts steps of
it. More chips split the same sequences; where the data-parallel chips outnumber what the batch
divides into, each slice gives the spare factor to a tensor axis (`Scale-out:` lines; the batch
error names the nearest valid batches and that mesh).

Both need LLaDA's tokenizer (126,464 ids): `tokenizer.json` from a local copy of
GSAI-ML/LLaDA-8B-Base, at `tokenizers/llada-8b/tokenizer.json` (or `set:data.tokenizer=PATH`).
"""

import fiddle as fdl

from illada_jax.config.experiments import experiment_for_preset, pod_settings

SEQ_LEN = 4096
GLOBAL_BATCH = 1280  # 5.24M tokens per step, as in the paper
TOKENS_PER_STEP = GLOBAL_BATCH * SEQ_LEN
TOKENIZER = "tokenizers/llada-8b/tokenizer.json"


def _steps(tokens: float) -> int:
    return round(tokens / TOKENS_PER_STEP)


def llada_8b() -> fdl.Config:
    """LLaDA-8B pre-training: 2.3T tokens, Warmup-Stable-Decay, 1% random length.

    Command:   illada train --config=config:llada_8b --workdir=gs://BUCKET/runs/llada-8b --config=set:data.datasets="('gs://BUCKET/data/llada-pretrain',)" --config=set:train.eval_dataset=gs://BUCKET/data/llada-pretrain-heldout --config=set:data.tokenizer=gs://BUCKET/tokenizers/llada-8b/tokenizer.json
    Check:     illada compile --config=config:llada_8b --topology=v5p-512
    Hardware:  TPU v5p-512 (256 chips): 5 sequences of 4096 tokens per chip.
    Expected:  `illada compile`: 64.7 GiB per chip of 95 (remat save_dots_no_batch; `full` needs
               16.6 GiB and recomputes the forward pass), compiled in about 70 s on a 2-core
               host; at 40% MFU 5.7 s per step, ~3,570 tokens/s/chip, 29 days for 2.3T tokens.
    Scale-out: the batch stays 1280 = 5 x 256 sequences, which 512 chips do not divide: on two
               slices (`set:mesh.dcn_data=2`) each slice's 4x8x8 torus is 64 chips of FSDP times 4
               of tensor parallelism along its short axis (the same settings for `illada train`):
               illada compile --config=config:llada_8b --topology=v5p-512 --num-slices 2 --config=set:mesh.dcn_data=2 --config=set:mesh.fsdp=64 --config=set:mesh.tensor=4 --config=set:mesh.rules=fsdp_tp
               49.2 GiB per chip, 2.9 s per step at 40% MFU, 15 days for 2.3T tokens.
    Data:      the training and held-out sets prepared with LLaDA's tokenizer, on the bucket:
               illada prepare --format jsonl --input gs://BUCKET/raw/ --tokenizer gs://BUCKET/tokenizers/llada-8b/tokenizer.json --output gs://BUCKET/data/llada-pretrain
               illada prepare --format jsonl --input gs://BUCKET/raw-heldout/ --tokenizer gs://BUCKET/tokenizers/llada-8b/tokenizer.json --output gs://BUCKET/data/llada-pretrain-heldout

    Recipe (paper): sequences of 4096 tokens, global batch 1280; AdamW, weight decay 0.1
    (β = (0.9, 0.95) and clipping at 1.0 from SMDM: the paper does not state them); learning
    rate 0 -> 4e-4 over 2000 steps, held, dropped to 1e-4 after 1.2T tokens, held for 0.8T
    tokens, then linear to 1e-5 over the last 0.3T; 1% of steps truncate the batch to a random
    length (docs/algorithms.md#random-length). Result of the paper's run: LLaDA-8B-Base, MMLU
    65.9, GSM8K 70.3 (its Table 1).
    """
    cfg = pod_settings(experiment_for_preset("llada_8b"), remat="save_dots_no_batch")
    cfg.diffusion.random_length_mode = "llada_truncate"
    cfg.diffusion.random_length_prob = 0.01
    cfg.data.datasets = ("data/llada-pretrain",)
    cfg.data.tokenizer = TOKENIZER
    cfg.optim.learning_rate = 4e-4
    cfg.optim.warmup_steps = 2000
    cfg.optim.schedule = "wsd"
    cfg.optim.wsd_drop_step = _steps(1.2e12)
    cfg.optim.wsd_drop_factor = 0.25
    cfg.optim.decay_steps = _steps(0.3e12)
    cfg.optim.final_learning_rate = 1e-5
    cfg.optim.weight_decay = 0.1
    cfg.optim.decay_exclude = "norms_and_embeddings"
    cfg.train.steps = _steps(2.3e12)
    cfg.train.batch_size = GLOBAL_BATCH
    cfg.train.seq_len = SEQ_LEN
    cfg.train.eval_every = 2000
    cfg.train.eval_dataset = "data/llada-pretrain-heldout"
    cfg.checkpoint.every = 1000
    cfg.checkpoint.keep_every = 20000
    return cfg


def llada_8b_sft() -> fdl.Config:
    """LLaDA-8B-Instruct-style SFT from the converted base model (LLaDA §2.3, App. B.1).

    Command:   illada convert --from hf --to native --src LLaDA-8B-Base --dst gs://BUCKET/runs/llada-8b-base
               illada train --config=config:llada_8b_sft --workdir=gs://BUCKET/runs/llada-8b-sft --config=set:checkpoint.init_from=gs://BUCKET/runs/llada-8b-base --config=set:data.datasets="('gs://BUCKET/data/sft.jsonl',)" --config=set:data.tokenizer=gs://BUCKET/tokenizers/llada-8b/tokenizer.json
    Check:     illada compile --config=config:llada_8b_sft --topology=v5p-128
    Hardware:  TPU v5p-128 (64 chips): 4 dialogues of up to 4096 tokens per chip.
    Expected:  `illada compile`: 54.1 GiB per chip of 95 (remat save_dots_no_batch); at 40% MFU
               4.6 s per step, ~3,570 tokens/s/chip, 2.8 days for the 52,734 steps.
    Scale-out: the batch stays the paper's 256 dialogues: 2 per chip on two slices
               (`set:mesh.dcn_data=2`, for `illada train` too; 29.0 GiB per chip, 2.3 s per step
               at 40% MFU):
               illada compile --config=config:llada_8b_sft --topology=v5p-128 --num-slices 2 --config=set:mesh.dcn_data=2
    Data:      `gs://BUCKET/data/sft.jsonl`, one dialogue per line ({"messages": [...]} or
               {"prompt": ..., "response": ...}); every turn becomes a (prompt, answer) pair.

    Recipe (paper): 4.5M pairs, 3 epochs, global batch 256; only answer tokens are masked, the
    answer is padded with EOS to the batch length and the loss is normalised per answer
    (docs/algorithms.md#sft-llada-style); learning rate 0 -> 2.5e-5 over 50 steps, held, then
    linear to 2.5e-6 over the last 10% of steps; weight decay 0.1.
    """
    cfg = pod_settings(experiment_for_preset("llada_8b"), remat="save_dots_no_batch")
    cfg.diffusion.objective = "sft_llada"
    cfg.diffusion.random_length_mode = "none"
    cfg.data.datasets = ("data/sft.jsonl",)
    cfg.data.tokenizer = TOKENIZER
    cfg.checkpoint.init_from = "runs/llada-8b-base"
    steps = round(4.5e6 * 3 / 256)
    cfg.optim.learning_rate = 2.5e-5
    cfg.optim.warmup_steps = 50
    cfg.optim.schedule = "wsd"
    cfg.optim.decay_steps = steps // 10
    cfg.optim.final_learning_rate = 2.5e-6
    cfg.optim.weight_decay = 0.1
    cfg.train.steps = steps
    cfg.train.batch_size = 256
    cfg.train.seq_len = SEQ_LEN
    cfg.train.sample_length = 0
    cfg.checkpoint.every = 1000
    return cfg
