"""The masked-diffusion math only: forward process, time sampling and losses (no sharding)."""
