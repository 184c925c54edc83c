"""Data: from raw documents to the token batches of a training step, by role.

- `sources/`: where documents come from and how each format is read (`formats.py`: text, jsonl,
  parquet, tfds, seqio, the embedded corpus; `records.py`: the bad-record rules);
- `preparation/`: `illada prepare` (local processes or Beam) into ArrayRecord shards with a
  manifest, and their verification;
- `pipeline/`: the training pipeline (prepared shards, on-the-fly tokenisation, mixtures, packed
  windows, remote shards) and the unigram baseline;
- `tokenizers/`: the tokenizer wrapper, training one, and the shipped SentencePiece models;
- `chat/`: chat-formatted data (SFT dialogues and the chat template).
"""
