"""The on-disk format of a prepared dataset, shared by its writer (`prepare.py`) and its reader
(`packing.py`):

    shard-00000.arrayrecord        one record per document: little-endian int32 token ids, EOS last
    shard-00000.lengths.npy        int32 [documents]: tokens per record (random access by offset)
    shard-00000.stats.json         written last, atomically: marks the shard finished
    manifest.json                  tokenizer identity and hash, vocab size, special ids, per-shard
                                   document/token counts, bad-record counts and the rules applied
"""

MANIFEST = "manifest.json"
FORMAT_VERSION = 1  # bumped when the layout changes; readers refuse other versions
