"""iLLaDA-8B: pre-training (arXiv:2606.25331) and iLLaDA-style SFT.

Sized for TPU v5p pods with their TPU settings (Pallas splash attention, bf16 compute with fp32
parameters and optimizer state, FSDP over the slice, the least-recompute remat that fits), so `illada compile
--config=config:NAME --topology=T` reports the program `illada train --config=config:NAME` runs
on T. Throughput figures are estimates from `illada compile` at 40% MFU, not measurements.

On a pod every host reads and writes the same paths: the run directory is `gs://BUCKET/runs/NAME`
(orbax writes it directly; a multi-host run refuses a local `--workdir` unless
`--config=set:checkpoint.shared_filesystem=True` says every host mounts it), and the data and
`checkpoint.init_from` must be on the bucket too (docs/pods.md).

Scaling out keeps each recipe's global batch (the schedule counts steps of it): more slices
split the same sequences over more chips (`Scale-out:` lines). The batches are powers of two, so
any power-of-two number of slices divides them down to one sequence per chip; beyond that, each
slice gives the spare factor to a tensor axis (the batch error names that mesh and the nearest
valid batches).

Tokenizer: iLLaDA's 155,136-id vocabulary (mask id 5, BOS 0, PAD 1, EOS 2): `tokenizer.json`
from a local copy of GSAI-ML/iLLaDA-8B-Base, at `tokenizers/illada-8b/tokenizer.json` (or
`set:data.tokenizer=PATH`).
"""

import fiddle as fdl

from illada_jax.config.experiments import experiment_for_preset, pod_settings

SEQ_LEN = 8192
# 4.19M tokens per step. The paper does not give its batch; a power of two (not LLaDA's 5.24M
# tokens, 640 windows) so that one, two or four v5p-256 slices split it evenly.
GLOBAL_BATCH = 512
TOKENS_PER_STEP = GLOBAL_BATCH * SEQ_LEN
TOKENIZER = "tokenizers/illada-8b/tokenizer.json"


def _steps(tokens: float) -> int:
    return round(tokens / TOKENS_PER_STEP)


def illada_8b() -> fdl.Config:
    """iLLaDA-8B pre-training: 12T tokens of 8192-token windows, constant then cosine LR.

    Command:   illada train --config=config:illada_8b --workdir=gs://BUCKET/runs/illada-8b --config=set:data.datasets="('gs://BUCKET/data/illada-pretrain',)" --config=set:train.eval_dataset=gs://BUCKET/data/illada-pretrain-heldout --config=set:data.tokenizer=gs://BUCKET/tokenizers/illada-8b/tokenizer.json
    Check:     illada compile --config=config:illada_8b --topology=v5p-256
    Hardware:  TPU v5p-256 (128 chips): 4 sequences of 8192 tokens per chip.
    Expected:  `illada compile`: 29.1 GiB per chip of 95 (remat full; save_dots_no_batch does not
               fit: it keeps every projection of 4 x 8192 tokens, 97.8 GiB), compiled in about
               4 minutes on a busy 2-core host; at 40% MFU 10.5 s per step, ~3,130
               tokens/s/chip: 12T tokens take 346 days on one slice.
    Scale-out: N slices (`set:mesh.dcn_data=N`, for `illada train` too) split the same 512
               sequences: 2 per chip on two slices, 1 on four:
               illada compile --config=config:illada_8b --topology=v5p-256 --num-slices 2 --config=set:mesh.dcn_data=2
               illada compile --config=config:illada_8b --topology=v5p-256 --num-slices 4 --config=set:mesh.dcn_data=4
               Two slices: 16.7 GiB per chip, 5.2 s per step at 40% MFU, 173 days for 12T
               tokens; four: 11.6 GiB, 2.6 s, 87 days.
    Data:      the training and held-out sets prepared with iLLaDA's tokenizer, on the bucket:
               illada prepare --format jsonl --input gs://BUCKET/raw/ --tokenizer gs://BUCKET/tokenizers/illada-8b/tokenizer.json --output gs://BUCKET/data/illada-pretrain
               illada prepare --format jsonl --input gs://BUCKET/raw-heldout/ --tokenizer gs://BUCKET/tokenizers/illada-8b/tokenizer.json --output gs://BUCKET/data/illada-pretrain-heldout

    Recipe: grouped-query attention (8 KV heads) and tied embeddings (the model preset);
    learning rate 0 -> 2e-4 over 2000 steps (the warmup length is not published), held, then a
    cosine decay to 5e-6 (docs/algorithms.md#learning-rate-schedules). iLLaDA started the decay
    when the training loss plateaued; here it starts after 11T tokens: resume with
    `--config=set:optim.decay_start_step=N` to start it elsewhere (the schedule is a function of
    the step, so a resumed run follows the new one). 30% of the windows are split in two
    independent segments (docs/algorithms.md#random-length). Result of the paper's run:
    iLLaDA-8B-Base, average 63.9 over MMLU, BBH, ARC-C, HellaSwag, GSM8K, MATH, HumanEval, MBPP.
    """
    cfg = pod_settings(experiment_for_preset("illada_8b"), remat="full")
    cfg.diffusion.random_length_mode = "illada_split"
    cfg.diffusion.two_segment_prob = 0.3
    cfg.data.datasets = ("data/illada-pretrain",)
    cfg.data.tokenizer = TOKENIZER
    cfg.optim.learning_rate = 2e-4
    cfg.optim.warmup_steps = 2000
    cfg.optim.schedule = "illada"
    cfg.optim.decay_start_step = _steps(11e12)
    cfg.optim.final_learning_rate = 5e-6
    cfg.optim.weight_decay = 0.1
    cfg.optim.decay_exclude = "norms_and_embeddings"
    cfg.train.steps = _steps(12e12)
    cfg.train.batch_size = GLOBAL_BATCH
    cfg.train.seq_len = SEQ_LEN
    cfg.train.eval_every = 2000
    cfg.train.eval_dataset = "data/illada-pretrain-heldout"
    cfg.checkpoint.every = 1000
    cfg.checkpoint.keep_every = 20000
    return cfg


def illada_8b_sft() -> fdl.Config:
    """iLLaDA-8B-Instruct-style SFT from the converted base model: the pre-training objective on
    8192-token windows of one continuous instruction stream.

    Command:   illada convert --from hf --to native --src iLLaDA-8B-Base --dst gs://BUCKET/runs/illada-8b-base
               illada prepare --format sft --input gs://BUCKET/raw/dialogues.jsonl --tokenizer gs://BUCKET/tokenizers/illada-8b/tokenizer.json --output gs://BUCKET/data/illada-sft
               illada train --config=config:illada_8b_sft --workdir=gs://BUCKET/runs/illada-8b-sft --config=set:checkpoint.init_from=gs://BUCKET/runs/illada-8b-base --config=set:data.datasets="('gs://BUCKET/data/illada-sft',)" --config=set:data.tokenizer=gs://BUCKET/tokenizers/illada-8b/tokenizer.json
    Check:     illada compile --config=config:illada_8b_sft --topology=v5p-256
    Hardware:  TPU v5p-256 (128 chips): 2 windows of 8192 tokens per chip.
    Expected:  `illada compile`: 52.1 GiB per chip of 95 (remat save_dots_no_batch); at 40% MFU
               5.2 s per step, ~3,130 tokens/s/chip, 8.7 days for the 143,051 steps.
    Scale-out: the batch stays 256 windows: 1 per chip on two slices (`set:mesh.dcn_data=2`, for
               `illada train` too; 29.2 GiB per chip, 2.6 s per step at 40% MFU):
               illada compile --config=config:illada_8b_sft --topology=v5p-256 --num-slices 2 --config=set:mesh.dcn_data=2

    Recipe: every formatted dialogue (prompt, answer, one EOS) is concatenated into one stream;
    prompt, answer and EOS tokens are all maskable (docs/algorithms.md#sft-illada-style); 25B
    tokens for 12 epochs (300B tokens) at 256 windows per step; learning rate 0 -> 5e-6, held,
    then linear to 5e-7 over the last 10% of steps. The paper does not say whether the two-segment
    split is used in SFT; it is off here.
    """
    cfg = pod_settings(experiment_for_preset("illada_8b"), remat="save_dots_no_batch")
    cfg.diffusion.objective = "sft_illada"
    cfg.diffusion.random_length_mode = "none"
    cfg.data.datasets = ("data/illada-sft",)
    cfg.data.tokenizer = TOKENIZER
    cfg.checkpoint.init_from = "runs/illada-8b-base"
    batch = 256
    steps = round(300e9 / (batch * SEQ_LEN))
    cfg.optim.learning_rate = 5e-6
    cfg.optim.warmup_steps = 50
    cfg.optim.schedule = "wsd"
    cfg.optim.decay_steps = steps // 10
    cfg.optim.final_learning_rate = 5e-7
    cfg.optim.weight_decay = 0.1
    cfg.train.steps = steps
    cfg.train.batch_size = batch
    cfg.train.seq_len = SEQ_LEN
    cfg.train.sample_length = 0
    cfg.checkpoint.every = 1000
    return cfg


def illada_8b_vrpo() -> fdl.Config:
    """Preference optimisation (LLaDA 1.5's VRPO) of the iLLaDA-8B SFT model: DPO with ELBO
    estimates of each answer's log-likelihood (docs/algorithms.md#preference-optimisation-vrpo).

    Data:      illada prepare --format pref --input gs://BUCKET/raw/preferences.jsonl --tokenizer gs://BUCKET/tokenizers/illada-8b/tokenizer.json --heldout-fraction 0.01 --output gs://BUCKET/data/illada-pref
    Command:   illada train --config=config:illada_8b_vrpo --workdir=gs://BUCKET/runs/illada-8b-vrpo --config=set:checkpoint.init_from=gs://BUCKET/runs/illada-8b-sft --config=set:data.datasets="('gs://BUCKET/data/illada-pref',)" --config=set:train.eval_dataset=gs://BUCKET/data/illada-pref-heldout --config=set:data.tokenizer=gs://BUCKET/tokenizers/illada-8b/tokenizer.json
    Check:     illada compile --config=config:illada_8b_vrpo --topology=v5p-128
    Hardware:  TPU v5p-128 (64 chips): 1 pair of 2048-token rows per chip, each answer scored
               with 8 masked copies by the policy (forward and backward) and by the frozen
               reference (forward), which is resident beside the policy, sharded like it.
    Expected:  `illada compile`: 24.4 GiB per chip of 95 (remat full; saving every matmul
               output, as the SFT recipes do, needs 136.5 GiB); at 40% MFU 11.6 s per step (the
               policy's forward and backward and the reference's forward over 2 x 8 masked
               copies of every pair), 17.6 hours for the 5,469 steps.
    Scale-out: the batch stays 64 pairs: on two slices (`set:mesh.dcn_data=2`) each pair's rows
               are split over a tensor axis of 2 (for `illada train` too):
               illada compile --config=config:illada_8b_vrpo --topology=v5p-128 --num-slices 2 --config=set:mesh.dcn_data=2 --config=set:mesh.tensor=2 --config=set:mesh.rules=fsdp_tp

    Recipe: our choices, not the paper's (LLaDA 1.5 trains on about 350K pairs; the rest of its
    hyperparameters are not used here): one epoch of 350K pairs at 64 per step, learning rate
    5e-7 after 50 warm-up steps, β 0.1, 8 draws per answer with stratified counts and antithetic
    draws; prompt plus answer up to 2048 tokens (longer pairs are dropped and counted).
    """
    # 16 rows of 2048 per chip through the policy: saving every matmul output (save_dots_no_batch,
    # the SFT recipes' remat) needs 136.5 GiB per chip; full remat keeps each layer's input only.
    cfg = pod_settings(experiment_for_preset("illada_8b"), remat="full")
    cfg.diffusion.objective = "vrpo"
    cfg.diffusion.random_length_mode = "none"
    cfg.data.datasets = ("data/illada-pref",)
    cfg.data.tokenizer = TOKENIZER
    cfg.checkpoint.init_from = "runs/illada-8b-sft"
    batch = 64
    cfg.optim.learning_rate = 5e-7
    cfg.optim.warmup_steps = 50
    cfg.optim.schedule = "constant"
    cfg.optim.final_learning_rate = 0.0
    cfg.optim.weight_decay = 0.0
    cfg.train.steps = round(350_000 / batch)
    cfg.train.batch_size = batch
    cfg.train.seq_len = 2048
    cfg.train.sample_length = 0
    cfg.train.eval_dataset = "data/illada-pref-heldout"
    cfg.train.eval_every = 500
    cfg.train.eval_batches = 4
    cfg.checkpoint.every = 500
    cfg.vrpo.beta = 0.1
    cfg.vrpo.samples = 8
    return cfg


def illada_8b_grpo() -> fdl.Config:
    """Online RL with verifiable rewards (d1's diffu-GRPO) of the iLLaDA-8B SFT model on
    GSM8K-style math word problems, rewarded by the final number
    (docs/algorithms.md#reinforcement-learning-diffu-grpo).

    Data:      illada prepare --format rl --input gs://BUCKET/raw/gsm8k-train.jsonl --tokenizer gs://BUCKET/tokenizers/illada-8b/tokenizer.json --heldout-fraction 0.02 --output gs://BUCKET/data/gsm8k-rl
    Command:   illada train --config=config:illada_8b_grpo --workdir=gs://BUCKET/runs/illada-8b-grpo --config=set:checkpoint.init_from=gs://BUCKET/runs/illada-8b-sft --config=set:data.datasets="('gs://BUCKET/data/gsm8k-rl',)" --config=set:train.eval_dataset=gs://BUCKET/data/gsm8k-rl-heldout --config=set:data.tokenizer=gs://BUCKET/tokenizers/illada-8b/tokenizer.json
    Check:     illada compile --config=config:illada_8b_grpo --topology=v5p-128
    Hardware:  TPU v5p-128 (64 chips): 8 rows of 768 tokens per chip (64 prompts per rollout,
               8 completions each); the frozen reference is resident beside the policy, sharded
               like it, and the rollout (completions, masks, old and reference log-probabilities)
               is part of the train state.
    Expected:  `illada compile` (the train step): 25.5 GiB per chip of 95 (saving every
               matmul output; full remat: 9.2 GiB). Each rollout also runs the sampler (256
               tokens in 128 steps, blocks of 32: 128 forwards of the 512 x 768 canvas) and 2 x 4
               forwards for the old and reference log-probabilities, so per update the FLOPs are
               the policy's forward and backward plus 34 forwards (86% of them sampling): at 40%
               MFU 19.4 s per update, 2.5 hours for the 468 updates (117 rollouts).
    Scale-out: the batch stays 512 rows (the rollout's prompts x completions): on two slices
               (`set:mesh.dcn_data=2`) each chip holds 4 rows:
               illada compile --config=config:illada_8b_grpo --topology=v5p-128 --num-slices 2 --config=set:mesh.dcn_data=2

    Recipe: d1's settings where it gives them (G, p_mask_prompt 0.15, β 0.04, 256 generated
    tokens in 128 steps with blocks of 32, temperature 0.9), our choices elsewhere: μ = 4 inner
    updates per rollout (d1: 12), 64 prompts per rollout, learning rate 1e-6 (full fine-tuning;
    d1 trains LoRA adapters), clip 0.2, one epoch of GSM8K's 7,473 training problems; prompts up
    to 512 tokens (longer ones are left out and counted).
    """
    # 8 rows of 768 per chip: saving every matmul output fits (25.5 GiB per chip).
    cfg = pod_settings(experiment_for_preset("illada_8b"), remat="save_dots_no_batch")
    cfg.diffusion.objective = "grpo"
    cfg.diffusion.random_length_mode = "none"
    cfg.data.datasets = ("data/gsm8k-rl",)
    cfg.data.tokenizer = TOKENIZER
    cfg.checkpoint.init_from = "runs/illada-8b-sft"
    prompts, group, inner = 64, 8, 4
    cfg.grpo.group_size = group
    cfg.grpo.inner_updates = inner
    cfg.grpo.p_mask_prompt = 0.15
    cfg.grpo.beta = 0.04
    cfg.grpo.clip_eps = 0.2
    cfg.grpo.reward = "final_number"
    cfg.grpo.gen_length = 256
    cfg.grpo.steps = 128
    cfg.grpo.block_length = 32
    cfg.grpo.temperature = 0.9
    cfg.optim.learning_rate = 1e-6
    cfg.optim.warmup_steps = 20
    cfg.optim.schedule = "constant"
    cfg.optim.final_learning_rate = 0.0
    cfg.optim.weight_decay = 0.0
    cfg.train.steps = round(7_473 / prompts) * inner
    cfg.train.batch_size = prompts * group
    cfg.train.seq_len = 512 + 256
    cfg.train.sample_length = 0
    cfg.train.eval_dataset = "data/gsm8k-rl-heldout"
    cfg.train.eval_every = 100
    cfg.train.eval_batches = 1
    cfg.checkpoint.every = 100
    return cfg
