"""Checkpoints: orbax run checkpoints and HF weight interop."""
