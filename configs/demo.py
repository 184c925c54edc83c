"""The CPU demo: what `illada train` runs with no arguments, and fine-tuning it in both SFT styles.

`tiny` is built into the package (`illada_jax/config/experiments.py`) so that a plain `pip
install` has it; it is listed here with the recipes it starts.
"""

import fiddle as fdl

from illada_jax.config import experiments


def tiny() -> fdl.Config:
    """The quickstart: pre-train a small model on the embedded corpus (Shakespeare and the King
    James Bible) on a laptop CPU.

    Command:   illada train                      (the same as --config=config:tiny)
    Hardware:  2 CPU cores (the host is split into one JAX device per core).
    Expected:  about 2 minutes from a fresh cache (preparing the corpus 7 s of it), ~25k
               tokens/s; the held-out bound falls from 5.96 (step 250) to 5.07 nats/token (step
               2500) against a unigram baseline of 5.93; the printed samples (blocks of 4,
               temperature 0.7) are mostly corpus words in corpus order ("In the beginning, and
               the pcks, the wor hath them, which the people"), not sense (bench/quickstart.py).
    """
    return experiments.tiny()


def tiny_sft() -> fdl.Config:
    """iLLaDA-style SFT of the quickstart model on the demo dialogues (chatterbot-corpus):
    windows of one continuous instruction stream, everything maskable.

    Command:   illada prepare --format sft --input demo --tokenizer shipped:sp1k --output data/sft
               illada train --config=config:tiny_sft --workdir=runs/tiny-sft
               illada chat --checkpoint runs/tiny-sft
    Hardware:  2 CPU cores; needs the quickstart run in runs/tiny (its parameters start this).
    Expected:  about 30 s; the loss falls from 5.74 (mean of the first 100 steps) to 3.91.
    """
    cfg = experiments.tiny()
    cfg.diffusion.objective = "sft_illada"
    cfg.diffusion.random_length_mode = "none"
    cfg.data.datasets = ("data/sft",)
    cfg.checkpoint.init_from = "runs/tiny"
    cfg.train.steps = 300
    cfg.train.eval_every = 0
    cfg.optim.schedule = "constant"
    cfg.optim.final_learning_rate = 0.0
    cfg.optim.learning_rate = 1e-3
    return cfg


def tiny_sft_llada() -> fdl.Config:
    """LLaDA-style SFT of the quickstart model on the demo dialogues: one (prompt, answer) pair
    per row, only the answer masked, EOS padding.

    Command:   illada train --config=config:tiny_sft_llada --workdir=runs/tiny-sft-llada
    Hardware:  2 CPU cores; needs the quickstart run in runs/tiny.
    Expected:  about 25 s; the loss (answer tokens only) falls from 3.36 to 1.96.
    """
    cfg = tiny_sft()
    cfg.diffusion.objective = "sft_llada"
    cfg.data.datasets = ("demo",)
    return cfg


def tiny_vrpo() -> fdl.Config:
    """Preference optimisation (VRPO) of the LLaDA-style SFT model on the demo preference pairs:
    the same answer with a courteous or a rude closing; the SFT model, pre-trained on King James
    English, prefers the rude ones (docs/algorithms.md#preference-optimisation-vrpo).

    Command:   illada prepare --format pref --input demo --tokenizer shipped:sp1k --heldout-fraction 0.2 --output data/pref
               illada train --config=config:tiny_vrpo --workdir=runs/tiny-vrpo
    Hardware:  2 CPU cores; needs the LLaDA-style SFT run in runs/tiny-sft-llada (it starts
               this run and is its frozen reference).
    Expected:  about 1.5 minutes (compile included); the held-out preference accuracy (128 pairs)
               goes 0.5 (step 0: policy = reference) -> 0.92 (25) -> 1.0 (50 to 100), and the
               model itself ranks 87% of held-out pairs right by their ELBOs, against 25% for the SFT
               model (bench/post_train.py).
    """
    cfg = tiny_sft_llada()
    cfg.diffusion.objective = "vrpo"
    cfg.data.datasets = ("data/pref",)
    cfg.checkpoint.init_from = "runs/tiny-sft-llada"
    cfg.train.eval_dataset = "data/pref-heldout"
    cfg.train.eval_every = 25
    cfg.train.eval_batches = 8
    cfg.train.steps = 100
    cfg.checkpoint.every = 25
    cfg.checkpoint.keep_every = 25  # the early policies too: bench/post_train.py reads step 25
    cfg.optim.learning_rate = 5e-4
    cfg.vrpo.beta = 0.1
    cfg.vrpo.samples = 4
    return cfg


def tiny_grpo() -> fdl.Config:
    """Online RL with a verifiable reward (diffu-GRPO) of the LLaDA-style SFT model on the demo
    task: a demo question ending "Start your reply with the letter T." (A, I or T), rewarded 1
    when the reply opens with that letter (docs/algorithms.md#reinforcement-learning-diffu-grpo).

    Command:   illada prepare --format rl --input demo --tokenizer shipped:sp1k --heldout-fraction 0.1 --output data/rl
               illada train --config=config:tiny_grpo --workdir=runs/tiny-grpo
               illada eval --checkpoint runs/tiny-grpo --rl-data data/rl-heldout --reward format_regex --gen-length 16 --block-length 4 --temperature 1.0
    Hardware:  2 CPU cores; needs the LLaDA-style SFT run in runs/tiny-sft-llada (it starts
               this run and is its frozen reference).
    Expected:  about 3.5 minutes; the held-out reward (256 completions of 32 prompts) goes 0.07
               (the SFT model: chance) -> 0.25 (step 50: it opens with the likeliest letter) ->
               0.95 (step 300: it copies the asked letter) (bench/post_train.py).
    """
    cfg = tiny_sft_llada()
    cfg.diffusion.objective = "grpo"
    cfg.data.datasets = ("data/rl",)
    cfg.checkpoint.init_from = "runs/tiny-sft-llada"
    cfg.train.eval_dataset = "data/rl-heldout"
    cfg.train.eval_every = 50
    cfg.train.eval_batches = 4
    cfg.train.batch_size = 64  # 8 prompts x 8 completions
    cfg.train.seq_len = 72  # prompts up to 56 tokens (97% of the demo task) + 16 generated
    cfg.train.steps = 300
    cfg.train.log_every = 25
    cfg.checkpoint.every = 50
    cfg.optim.learning_rate = 1e-3
    cfg.optim.warmup_steps = 5
    cfg.grpo.group_size = 8
    cfg.grpo.inner_updates = 2
    cfg.grpo.reward = "format_regex"
    cfg.grpo.gen_length = 16
    cfg.grpo.steps = 16
    cfg.grpo.block_length = 4
    cfg.grpo.temperature = 1.0
    return cfg
