"""Starting from an autoregressive model (docs/algorithms.md#adapting-an-autoregressive-model):
the autoregressive baseline, and adaptation recipes that turn an AR model into a diffusion model
with a schedule over block sizes (LLaDA2.0's warm-up, stable, decay): from AR-like blocks of one
token, through larger blocks, to the whole sequence (masked diffusion), then down to the block
size the model samples with (block diffusion with an exact K/V cache).
"""

import fiddle as fdl

from illada_jax.config import experiments
from illada_jax.config.experiments import experiment_for_preset, pod_settings

SEQ_LEN = 4096
GLOBAL_BATCH = 256  # 1M tokens per step


def tiny_ar() -> fdl.Config:
    """The autoregressive baseline of the quickstart: the same model, data, steps and runner,
    with causal attention and the next-token loss (docs/algorithms.md#the-autoregressive-baseline).

    Command:   illada train --config=config:tiny_ar --workdir=runs/tiny-ar
    Hardware:  2 CPU cores.
    Expected:  about 2 minutes; the held-out next-token NLL (eval_ar_nll, exact) ends at 3.36
               nats/token, against 5.07 for the diffusion model's bound after as many steps and
               FLOPs (bench/adaptation.py measures both on the same held-out tokens).
    """
    cfg = experiments.tiny()
    cfg.diffusion.objective = "ar"
    return cfg


def tiny_ar_to_dlm() -> fdl.Config:
    """Adapt the autoregressive tiny model into a diffusion model: blocks of 1, 4 and 16 tokens,
    then the whole 64-token window (masked diffusion), starting from `tiny_ar`'s parameters.

    Command:   illada train --config=config:tiny_ar_to_dlm --workdir=runs/tiny-ar-to-dlm
               illada generate --checkpoint runs/tiny-ar-to-dlm --prompt 'In the beginning' --gen-length 32
    Hardware:  2 CPU cores; needs the autoregressive run in runs/tiny-ar (`tiny_ar`'s command).
    Expected:  about 1.5 minutes; the held-out bound passes the from-scratch quickstart's final
               5.07 nats/token at step 375 (15% of its 2500 steps) and ends at 4.48 after 1250
               (bench/adaptation.py).
    """
    cfg = experiments.tiny()
    cfg.diffusion.objective = "block_diffusion"
    cfg.diffusion.block_size = 64  # the whole window: what the quickstart's model trains
    cfg.diffusion.block_schedule_steps = (0, 50, 100, 150)
    cfg.diffusion.block_schedule_sizes = (1, 4, 16, 64)
    cfg.checkpoint.init_from = "runs/tiny-ar"
    cfg.train.steps = 1250
    cfg.train.eval_every = 125
    return cfg


def _adaptation(preset: str, converted: str, tokenizer: str) -> fdl.Config:
    """A v5p pod recipe adapting `preset` (converted to `converted`) with the block schedule."""
    cfg = pod_settings(experiment_for_preset(preset), remat="full")
    cfg.diffusion.objective = "block_diffusion"
    cfg.diffusion.random_length_mode = "none"  # packed documents keep their own segments
    cfg.diffusion.block_size = 32
    # Warm-up over block sizes (1 -> 4 -> 32 -> 64 -> the whole window), stable masked diffusion,
    # decay to blocks of 32 for cached inference; 20,000 steps of 1M tokens.
    cfg.diffusion.block_schedule_steps = (0, 500, 1000, 1500, 2000, 16_000)
    cfg.diffusion.block_schedule_sizes = (1, 4, 32, 64, SEQ_LEN, 32)
    cfg.checkpoint.init_from = converted
    cfg.data.tokenizer = tokenizer
    cfg.optim.learning_rate = 1e-5
    cfg.optim.warmup_steps = 500
    cfg.optim.schedule = "constant"
    cfg.optim.final_learning_rate = 0.0
    cfg.optim.weight_decay = 0.1
    cfg.optim.decay_exclude = "norms_and_embeddings"
    cfg.train.steps = 20_000
    cfg.train.batch_size = GLOBAL_BATCH
    cfg.train.seq_len = SEQ_LEN
    cfg.train.eval_every = 1000
    cfg.train.eval_batches = 4
    cfg.train.sample_length = 0
    cfg.checkpoint.every = 500
    return cfg


def qwen2_5_7b_to_dlm() -> fdl.Config:
    """Qwen2.5-7B -> a block-diffusion model (as Dream-7B and Fast-dLLM v2 start from it), with
    LLaDA2.0's warm-up / stable / decay over block sizes (docs/algorithms.md#adapting-an-
    autoregressive-model).

    Data:      illada convert --from hf --to native --src gs://BUCKET/hf/Qwen2.5-7B --dst gs://BUCKET/runs/qwen2_5_7b-native
               illada prepare --format jsonl --input gs://BUCKET/raw/ --tokenizer gs://BUCKET/runs/qwen2_5_7b-native/tokenizer/tokenizer.json --output gs://BUCKET/data/qwen2_5-pretrain
               illada prepare --format jsonl --input gs://BUCKET/raw-heldout/ --tokenizer gs://BUCKET/runs/qwen2_5_7b-native/tokenizer/tokenizer.json --output gs://BUCKET/data/qwen2_5-pretrain-heldout
    Command:   illada train --config=config:qwen2_5_7b_to_dlm --workdir=gs://BUCKET/runs/qwen2_5_7b-dlm --config=set:checkpoint.init_from=gs://BUCKET/runs/qwen2_5_7b-native --config=set:data.datasets="('gs://BUCKET/data/qwen2_5-pretrain',)" --config=set:train.eval_dataset=gs://BUCKET/data/qwen2_5-pretrain-heldout --config=set:data.tokenizer=gs://BUCKET/runs/qwen2_5_7b-native/tokenizer/tokenizer.json
    Check:     illada compile --config=config:qwen2_5_7b_to_dlm --topology=v5p-128
    Hardware:  TPU v5p-128 (64 chips): 4 rows of 4096 tokens per chip (each row runs as the
               8192-position noisy + clean canvas of block diffusion).
    Expected:  `illada compile` (the last phase, blocks of 32): 28.0 GiB per chip of 95 (remat
               full), compiled in 2 minutes on a 2-core host; at 40% MFU (model FLOPs count
               both halves of the canvas) 9.0 s per step, 50 hours for the 20,000 steps. The
               convert line takes the first embedding row Qwen2.5's tokenizer never produces
               (151665) as the mask token.
    Scale-out: the batch stays 256 rows; on two slices (`set:mesh.dcn_data=2`) 2 per chip:
               illada compile --config=config:qwen2_5_7b_to_dlm --topology=v5p-128 --num-slices 2 --config=set:mesh.dcn_data=2

    Recipe: our choices (Dream and LLaDA2.0 do not publish theirs in full): 21B tokens (20,000
    steps of 256 x 4096), learning rate 1e-5 after 500 warm-up steps, blocks of 1, 4, 32, 64
    tokens for 500 steps each, masked diffusion over the whole window until step 16,000, then
    blocks of 32 (the sampler's) to the end.
    """
    return _adaptation("qwen2_5_7b", "runs/qwen2_5_7b-native",
                       "runs/qwen2_5_7b-native/tokenizer/tokenizer.json")  # fmt: skip


def llama3_8b_to_dlm() -> fdl.Config:
    """Llama-3.1-8B -> a block-diffusion model, with the block-size schedule of
    `qwen2_5_7b_to_dlm` (docs/algorithms.md#adapting-an-autoregressive-model).

    Data:      illada convert --from hf --to native --src gs://BUCKET/hf/Llama-3.1-8B --dst gs://BUCKET/runs/llama3_8b-native --mask-token-id 128002
               illada prepare --format jsonl --input gs://BUCKET/raw/ --tokenizer gs://BUCKET/runs/llama3_8b-native/tokenizer/tokenizer.json --output gs://BUCKET/data/llama3-pretrain
               illada prepare --format jsonl --input gs://BUCKET/raw-heldout/ --tokenizer gs://BUCKET/runs/llama3_8b-native/tokenizer/tokenizer.json --output gs://BUCKET/data/llama3-pretrain-heldout
    Command:   illada train --config=config:llama3_8b_to_dlm --workdir=gs://BUCKET/runs/llama3_8b-dlm --config=set:checkpoint.init_from=gs://BUCKET/runs/llama3_8b-native --config=set:data.datasets="('gs://BUCKET/data/llama3-pretrain',)" --config=set:train.eval_dataset=gs://BUCKET/data/llama3-pretrain-heldout --config=set:data.tokenizer=gs://BUCKET/runs/llama3_8b-native/tokenizer/tokenizer.json
    Check:     illada compile --config=config:llama3_8b_to_dlm --topology=v5p-128
    Hardware:  TPU v5p-128 (64 chips): 4 rows of 4096 tokens per chip (8192-position canvases).
    Expected:  `illada compile` (the last phase, blocks of 32): 29.9 GiB per chip of 95 (remat
               full), compiled in 3 minutes on a busy 2-core host; at 40% MFU 10.1 s per step,
               56 hours for the 20,000 steps. The mask token is Llama 3.1's first reserved
               special token (128002), which its tokenizer never produces for text; RoPE keeps
               Llama 3.1's llama3 scaling.
    Scale-out: the batch stays 256 rows; on two slices (`set:mesh.dcn_data=2`) 2 per chip:
               illada compile --config=config:llama3_8b_to_dlm --topology=v5p-128 --num-slices 2 --config=set:mesh.dcn_data=2

    Recipe: as `qwen2_5_7b_to_dlm`.
    """
    return _adaptation("llama3_8b", "runs/llama3_8b-native",
                       "runs/llama3_8b-native/tokenizer/tokenizer.json")  # fmt: skip
