"""Tokenizer: round trips, special ids, mask unreachability, overrides, validation, identity.

Expected ids are literals from the project's tokenizer contract (pad 0, unk 1, bos 2, eos 3,
mask 4, header 5/6, eot 7), not read back from the code under test.
"""

import hashlib
import json
import pickle
import random
import shutil

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from illada_jax import cli
from illada_jax.config.schema import ModelConfig
from illada_jax.data.sources.corpus import embedded_documents
from illada_jax.data.tokenizers import tokenizer as tokenizer_lib
from illada_jax.data.tokenizers.tokenizer import Tokenizer, TokenizerError
from illada_jax.data.tokenizers.tokenizer_train import train_tokenizer

CONTRACT_IDS = {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "mask": 4, "eot": 7}
SPECIAL_RANGE = set(range(8))
ROUND_TRIP_TEXTS = [
    "",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
    "multiple    spaces between   words",
    "Ünïcödé: café, naïve, Straße, Ωμέγα, Привет, 日本語, 한국어, العربية",
    "emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷 (byte fallback)",
    "digits 1234567890 and 3.14159e-10",
    "zero\u200bwidth and combining e\u0301",
    "code: def f(x):\n    return x ** 2  # comment",
]
TRICKY_TEXTS = [
    "<mask>",
    "<|eot_id|>",
    "<[MASK]>",
    "[MASK]",
    "<|mdm_mask|>",
    "<s></s><pad><unk>",
    "<|start_header_id|>user<|end_header_id|>",
    "text<mask>text <|eot_id|> more <[MASK]>",
    "<mask><mask><mask>",
]


def _random_unicode(seed: int, count: int, length: int) -> list[str]:
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0xA0, 0x2FF), (0x370, 0x3FF), (0x4E00, 0x4FFF), (0x1F300, 0x1F64F)]
    texts = []
    for _ in range(count):
        chars = []
        for _ in range(length):
            low, high = rng.choice(ranges)
            chars.append(chr(rng.randint(low, high)))
        texts.append("".join(chars))
    return texts


@pytest.fixture(scope="module")
def default():
    return Tokenizer.default()


@pytest.fixture(scope="module")
def training_text() -> str:
    docs = embedded_documents("train")
    text = "".join(next(docs).text for _ in range(3))[:6000]
    return text + "\n" + " ".join(ROUND_TRIP_TEXTS)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, training_text):
    """A small byte-level BPE trained here (a few KB of text)."""
    out = tmp_path_factory.mktemp("bpe") / "tok"
    path = train_tokenizer([], out, 400, kind="bpe", texts=[training_text])
    assert path == out / "tokenizer.json"
    return out


def _plain_hf_tokenizer(path, special_tokens, added=()):
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["the theme of the thesis " * 50], trainer=trainer)
    if added:
        tok.add_tokens(list(added))  # ordinary (non-special) added tokens: matched in text
    tok.save(str(path))
    return path


# ---------------------------------------------------------------- the default tokenizer


def test_default_special_ids(default):
    assert default.kind == "sentencepiece"
    assert default.vocab_size == 8192
    assert default.special_ids() == CONTRACT_IDS
    assert (default.pad_id, default.unk_id, default.bos_id, default.eos_id) == (0, 1, 2, 3)
    assert default.token_id("<mask>") == 4
    assert default.token_id("<|start_header_id|>") == 5
    assert default.token_id("<|end_header_id|>") == 6
    assert default.token_id("<|eot_id|>") == 7
    assert default.token_id("<|not a piece|>") is None
    assert default.path.name == "default_sp8k.model"


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_default_round_trip(default, text):
    ids = default.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert default.decode(ids) == text


def test_default_round_trip_random_unicode(default):
    texts = _random_unicode(0, 50, 40)
    assert default.decode_batch(default.encode_batch(texts)) == texts


def test_encode_batch_equals_encode(default):
    texts = ROUND_TRIP_TEXTS + TRICKY_TEXTS
    assert default.encode_batch(texts) == [default.encode(t) for t in texts]


def test_encodings_concatenate(default):
    # sft.py encodes template pieces and contents separately; their ids must decode to the
    # concatenated text (no dummy prefix, no whitespace normalisation).
    pieces = ["user", "\n\n", "Hello there", " and", "\n", "  more"]
    ids = [i for piece in pieces for i in default.encode(piece)]
    assert default.decode(ids) == "".join(pieces)


def test_byte_fallback_for_unseen_characters(default):
    ids = default.encode("🙂")
    assert len(ids) == 4  # four UTF-8 bytes, one byte piece each
    assert [default.piece(i) for i in ids] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]


def test_text_never_encodes_to_special_ids(default):
    texts = TRICKY_TEXTS + _random_unicode(1, 100, 30) + ROUND_TRIP_TEXTS
    for ids in default.encode_batch(texts):
        assert not SPECIAL_RANGE & set(ids)


def test_decode_spells_or_skips_specials(default):
    ids = [2, *default.encode("hi"), 7, 3]
    assert default.decode(ids) == "<s>hi<|eot_id|></s>"
    assert default.decode(ids, skip_special=True) == "hi"


def test_compression_on_heldout_text(default):
    texts = [doc.text for doc in embedded_documents("heldout")][:20]
    ratio = tokenizer_lib.chars_per_token(default, texts)
    assert 3.0 < ratio < 6.0, ratio


def test_shipped_model_matches_the_documented_training(tmp_path, default):
    texts = (doc.text for doc in embedded_documents("train"))
    path = train_tokenizer([], tmp_path / "sp8k", 8192, texts=texts)
    fresh = spm.SentencePieceProcessor(model_file=str(path))
    shipped = spm.SentencePieceProcessor(model_file=str(default.path))
    assert [fresh.id_to_piece(i) for i in range(8192)] == [
        shipped.id_to_piece(i) for i in range(8192)
    ]


def test_the_demo_tokenizer_is_shipped_and_matches_its_documented_training(tmp_path, default):
    small = Tokenizer.load("shipped:sp1k")
    assert small.vocab_size == 1024 and small.special_ids() == default.special_ids()
    assert Tokenizer.load("shipped:sp8k").identity == default.identity
    texts = [doc.text for doc in embedded_documents("heldout")][:20]
    assert tokenizer_lib.chars_per_token(small, texts) < tokenizer_lib.chars_per_token(
        default, texts
    )
    fresh = spm.SentencePieceProcessor(
        model_file=str(train_tokenizer([], tmp_path / "sp1k", 1024,
                                       texts=(d.text for d in embedded_documents("train"))))
    )  # fmt: skip
    assert [fresh.id_to_piece(i) for i in range(1024)] == [small.piece(i) for i in range(1024)]
    with pytest.raises(TokenizerError, match="shipped ones are shipped:sp8k, shipped:sp1k"):
        Tokenizer.load("shipped:sp2k")


# ---------------------------------------------------------------- HF byte-level BPE


def test_hf_special_ids_and_round_trip(hf_dir):
    tok = Tokenizer.load(hf_dir)
    assert tok.kind == "hf"
    assert tok.path == hf_dir / "tokenizer.json"
    assert tok.vocab_size == 400
    assert tok.special_ids() == CONTRACT_IDS
    assert tok.token_id("<|start_header_id|>") == 5
    for text in ROUND_TRIP_TEXTS + _random_unicode(2, 20, 30):
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(ROUND_TRIP_TEXTS) == [tok.encode(t) for t in ROUND_TRIP_TEXTS]


def test_hf_text_never_encodes_to_special_ids(hf_dir):
    tok = Tokenizer.load(hf_dir / "tokenizer.json")
    for ids in tok.encode_batch(TRICKY_TEXTS + _random_unicode(3, 50, 30)):
        assert not SPECIAL_RANGE & set(ids)


def test_hf_tokenizer_config_names_special_tokens(tmp_path, hf_dir):
    shutil.copy(hf_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    config = {"bos_token": {"content": "<|start_header_id|>"}, "mask_token": "<|eot_id|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.load(tmp_path, eot_id=6)
    assert (tok.bos_id, tok.mask_id, tok.eot_id) == (5, 7, 6)


def test_hf_missing_mask_token_is_a_clear_error(tmp_path):
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|reserved|>"]
    path = _plain_hf_tokenizer(tmp_path / "plain.json", specials)
    with pytest.raises(ValueError, match="no mask token found.*mask_id="):
        Tokenizer.load(path)
    tok = Tokenizer.load(path, mask_id=4)  # an explicit id of a special token works
    assert tok.mask_id == 4
    with pytest.raises(ValueError, match="mask id 1 equals the unk id"):
        Tokenizer.load(path, mask_id=1)


def test_hf_mask_reachable_from_text_is_rejected(tmp_path):
    path = _plain_hf_tokenizer(tmp_path / "t.json", ["<pad>", "<unk>", "<s>", "</s>", "<r>"])
    common = Tokenizer.load(path, mask_id=4).encode("the")[0]
    with pytest.raises(ValueError, match="encodes to the mask id"):
        Tokenizer.load(path, mask_id=common)
    # "<mask>" as an ordinary added token is matched in text: not usable as the mask.
    path = _plain_hf_tokenizer(tmp_path / "a.json", ["<pad>", "<unk>", "<s>", "</s>"], ["<mask>"])
    with pytest.raises(ValueError, match="encodes to the mask id"):
        Tokenizer.load(path)


# ---------------------------------------------------------------- overrides and validation


def test_explicit_ids_override_the_tokenizer(default, hf_dir):
    tok = Tokenizer.load(default.path, mask_id=5, eot_id=6, pad_id=3, bos_id=7)
    assert tok.special_ids() == {"pad": 3, "unk": 1, "bos": 7, "eos": 3, "mask": 5, "eot": 6}
    hf = Tokenizer.load(hf_dir, mask_id=6, eos_id=2)
    assert (hf.mask_id, hf.eos_id) == (6, 2)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mask_id": 0}, "mask id 0 equals the pad id"),
        ({"mask_id": 3}, "mask id 3 equals the pad id|mask id 3 equals the eos id"),
        ({"mask_id": 7}, "mask id 7 equals the eot id"),
        ({"mask_id": 8192}, "mask id 8192 is outside the vocabulary"),
        ({"mask_id": -1}, "mask id -1 is outside the vocabulary"),
        ({"pad_id": 4}, "mask id 4 equals the pad id"),
        ({"mask_id": 500}, "ordinary piece that text can encode to"),
        ({"mask_id": 100}, "ordinary piece"),  # a byte-fallback piece
    ],
)
def test_validation_errors(default, overrides, message):
    with pytest.raises(ValueError, match=message):
        Tokenizer.load(default.path, **overrides)


def test_unknown_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json"):
        Tokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "missing.model")
    (tmp_path / "vocab.txt").write_text("a\n")
    with pytest.raises(ValueError, match="unknown tokenizer file type"):
        Tokenizer.load(tmp_path / "vocab.txt")


def test_identity_is_the_hash_of_the_file(tmp_path, default, hf_dir):
    digest = hashlib.sha256(default.path.read_bytes()).hexdigest()
    assert default.identity == f"sentencepiece:{digest}"
    copy = tmp_path / "copy.model"
    shutil.copy(default.path, copy)
    assert Tokenizer.load(copy).identity == default.identity

    original = Tokenizer.load(hf_dir).identity
    data = json.loads((hf_dir / "tokenizer.json").read_text())
    data["added_tokens"].append({**data["added_tokens"][-1], "id": 400, "content": "<|x|>"})
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    changed = Tokenizer.load(tmp_path)
    assert changed.identity.startswith("hf:") and changed.identity != original
    assert changed.vocab_size == 401


def test_check_model_config(default):
    default.check_model_config(ModelConfig())  # the presets' default ids
    default.check_model_config(ModelConfig(eot_token_id=7))
    with pytest.raises(ValueError, match="vocab_size: tokenizer 8192, model 32000"):
        default.check_model_config(ModelConfig(vocab_size=32000))
    default.check_model_config(ModelConfig(vocab_size=8256), allow_larger_model_vocab=True)
    with pytest.raises(ValueError, match="mask_token_id: tokenizer 4, model 5") as error:
        default.check_model_config(ModelConfig(mask_token_id=5, eot_token_id=6))
    assert "eot_token_id: tokenizer 7, model 6" in str(error.value)
    with pytest.raises(ValueError, match="pad_token_id: tokenizer 0, model 1"):
        default.check_model_config(ModelConfig(pad_token_id=1))


def test_pickle_round_trip(default):
    tok = Tokenizer.load(default.path, eot_id=6)
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.special_ids() == tok.special_ids()
    assert clone.encode("pickled text") == tok.encode("pickled text")


# ---------------------------------------------------------------- training


def test_train_sentencepiece_small(tmp_path, training_text):
    (tmp_path / "a.txt").write_text(training_text)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "jsonl line"}) + "\n\n")
    path = train_tokenizer([tmp_path / "a.txt", tmp_path / "b.jsonl"], tmp_path / "sp.model", 400)
    assert path == tmp_path / "sp.model"
    tok = Tokenizer.load(path)
    assert tok.vocab_size == 400 and tok.special_ids() == CONTRACT_IDS
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert all(sp.IsControl(i) for i in (0, 2, 3, 4, 5, 6, 7))
    for text in ROUND_TRIP_TEXTS:
        assert tok.decode(tok.encode(text)) == text


def test_train_errors(tmp_path):
    with pytest.raises(ValueError, match="SentencePiece training failed"):
        train_tokenizer([], tmp_path / "x", 50_000, texts=["tiny text"])
    with pytest.raises(ValueError, match="exactly one mask token"):
        specials = ["<pad>", "<unk>", "<s>", "</s>", "<x>"]
        train_tokenizer([], tmp_path / "y", 300, special_tokens=specials, texts=["a"])
    with pytest.raises(ValueError, match="kind="):
        train_tokenizer([], tmp_path / "z", 300, kind="wordpiece", texts=["a"])


def test_cli_trains_bpe(tmp_path, capsys, training_text):
    (tmp_path / "in.txt").write_text(training_text)
    out = tmp_path / "cli.json"
    argv = ["--input", str(tmp_path / "in.txt"), "--vocab-size", "300", "--type", "bpe"]
    assert cli.main(["tokenizer", "train", *argv, "--output", str(out)]) == 0
    assert Tokenizer.load(out).vocab_size == 300
    assert "identity=hf:" in capsys.readouterr().out
    assert cli.main(["tokenizer", "train", "--output", str(out)]) == 2  # no input
    assert "give --input FILE" in capsys.readouterr().err
