"""Tokenizers: the SentencePiece/HF wrapper, training one, the shipped models (assets/)."""
