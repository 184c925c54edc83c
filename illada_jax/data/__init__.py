"""Data: tokenizers, corpora, preparation and the input pipeline."""
