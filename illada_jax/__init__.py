"""illada-jax: masked-diffusion language models (LLaDA / iLLaDA) in JAX."""
