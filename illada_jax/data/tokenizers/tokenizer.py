"""Tokenizers: one interface over SentencePiece `.model` files and HF `tokenizer.json` files.

`Tokenizer.load(path)` reads either kind (the `tokenizers` library, no transformers) and the
shipped ones by name: `shipped:sp8k` (the default, `Tokenizer.default()`: SentencePiece BPE with
8192 pieces) and `shipped:sp1k` (1024 pieces, the CPU demo's: a small vocabulary keeps the output
head cheap and each token easy to predict from its neighbours). Both were trained on the train
split of the embedded corpus (`illada_jax.data.sources.corpus`) and are rebuilt (same piece list; the
`.model` bytes are not reproducible, so the files are committed) with

    illada tokenizer train --embedded --vocab-size 8192 --output illada_jax/data/tokenizers/assets/default_sp8k
    illada tokenizer train --embedded --vocab-size 1024 --output illada_jax/data/tokenizers/assets/sp1k

Special ids (docs/models.md#special-ids: they are properties of a model, never constants).
Resolution order, per role: the explicit argument to `load`; for SentencePiece the model's
pad/unk/bos/eos ids and the first mask piece found; for HF `tokenizer_config.json` (then
`special_tokens_map.json`) next to `tokenizer.json`, then well-known token names. A missing pad or
bos falls back to eos (LLaDA's pad is its eos); eos and mask are required.

The mask token can never come out of `encode` (docs/models.md#special-ids), checked at load:
- SentencePiece: the mask piece must be a control (or unused) symbol, which the encoder never emits.
- HF: `encode_special_tokens = True`, so special-token strings inside text are split as plain text;
  encoding the mask string and strings around it must not yield the mask id.

`encode` never adds BOS/EOS; formatting (BOS, chat turns, EOS) belongs to the callers
(`illada_jax.data.chat.sft`, the data preparation). Training: `data/tokenizers/tokenizer_train.py` (`illada
tokenizer train`).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

from illada_jax import storage
from illada_jax.errors import IlladaError, MissingInputError

DEFAULT_MODEL = "default_sp8k.model"
SHIPPED_PREFIX = "shipped:"
SHIPPED = {"sp8k": DEFAULT_MODEL, "sp1k": "sp1k.model"}  # name -> file in assets/


class TokenizerError(IlladaError, ValueError):
    """A tokenizer file or its special ids are unusable; the message says what to pass or fix."""


# Ids 0..7 of every tokenizer we train: pad, unk, bos, eos, then the control symbols.
ROLES = ("pad", "unk", "bos", "eos", "mask", "eot")
# Well-known token names per role, tried in this order (HF tokenizers; SP for mask and eot).
TOKEN_NAMES: dict[str, tuple[str, ...]] = {
    "pad": ("<pad>", "<|pad|>", "[PAD]", "<|padding|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "bos": ("<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>"),
    "eos": ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"),
    "mask": ("<mask>", "<|mdm_mask|>", "<[MASK]>", "[MASK]", "<|mask|>"),
    "eot": ("<|eot_id|>", "<|im_end|>"),
}


class _SentencePieceBackend:
    kind = "sentencepiece"

    def __init__(self, path: pathlib.Path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int)

    def decode(self, ids: list[int], skip_special: bool) -> str:
        # SentencePiece renders control symbols as "": decode runs of ordinary ids and, unless
        # skipped, spell the control pieces out so a formatted sequence stays readable.
        parts, run = [], []
        for token in ids:
            if self.sp.IsControl(token):
                parts.append(self.sp.decode(run))
                parts.append("" if skip_special else self.sp.id_to_piece(token))
                run = []
            else:
                run.append(token)
        parts.append(self.sp.decode(run))
        return "".join(parts)

    def token_id(self, piece: str) -> int | None:
        token = self.sp.piece_to_id(piece)
        return token if self.sp.id_to_piece(token) == piece else None

    def piece(self, token: int) -> str:
        return self.sp.id_to_piece(token)

    def native_ids(self, path: pathlib.Path) -> dict[str, int | None]:
        def known(token: int) -> int | None:
            return token if token >= 0 else None

        ids = {
            "pad": known(self.sp.pad_id()),
            "unk": known(self.sp.unk_id()),
            "bos": known(self.sp.bos_id()),
            "eos": known(self.sp.eos_id()),
        }
        ids["mask"] = _first_known(self.token_id, TOKEN_NAMES["mask"])
        ids["eot"] = _first_known(self.token_id, TOKEN_NAMES["eot"])
        return ids

    def check_never_encoded(self, token: int, role: str) -> None:
        if not (self.sp.IsControl(token) or self.sp.IsUnused(token)):
            raise TokenizerError(
                f"the {role} id {token} (piece {self.piece(token)!r}) is an ordinary piece that "
                "text can encode to; it must be a control symbol. Fix: retrain with "
                f"control_symbols=[{self.piece(token)!r}, ...] (`illada tokenizer train` does), "
                f"or pass {role}_id= an id of a control symbol"
            )


class _HFBackend:
    kind = "hf"

    def __init__(self, path: pathlib.Path):
        from tokenizers import Tokenizer as HFTokenizer

        self.tok = HFTokenizer.from_file(str(path))
        # Special-token strings inside text are tokenised as plain text, so no text can produce
        # the mask (or any other special) id.
        self.tok.encode_special_tokens = True
        self.tok.no_padding()
        self.tok.no_truncation()
        self.vocab_size = max(self.tok.get_vocab(with_added_tokens=True).values()) + 1

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special: bool) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    def token_id(self, piece: str) -> int | None:
        return self.tok.token_to_id(piece)

    def piece(self, token: int) -> str:
        return self.tok.id_to_token(token)

    def native_ids(self, path: pathlib.Path) -> dict[str, int | None]:
        configured = _hf_configured_tokens(path)
        ids: dict[str, int | None] = {}
        for role in ROLES:
            name = configured.get(role)
            if name is not None:
                ids[role] = self.token_id(name)
                if ids[role] is None:
                    raise TokenizerError(
                        f"{path.parent}: tokenizer_config sets {role}_token={name!r}, which is "
                        f"not in {path.name}; fix the config or pass {role}_id= to load()"
                    )
            else:
                ids[role] = _first_known(self.token_id, TOKEN_NAMES[role])
        if ids["unk"] is None and getattr(self.tok.model, "unk_token", None):
            ids["unk"] = self.token_id(self.tok.model.unk_token)
        return ids

    def check_never_encoded(self, token: int, role: str) -> None:
        pass  # special added tokens are never matched in text; the probe below verifies it


def _first_known(lookup, names: Iterable[str]) -> int | None:
    for name in names:
        token = lookup(name)
        if token is not None:
            return token
    return None


def _hf_configured_tokens(path: pathlib.Path) -> dict[str, str]:
    """Token strings per role from tokenizer_config.json / special_tokens_map.json beside
    a file named tokenizer.json (the first file wins per role)."""
    if path.name != "tokenizer.json":
        return {}
    found: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config_path = path.with_name(name)
        if not config_path.is_file():
            continue
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise TokenizerError(f"{config_path} is not valid JSON ({err})") from err
        if not isinstance(config, dict):
            raise TokenizerError(f"{config_path} is not a JSON object")
        for role in ("pad", "unk", "bos", "eos", "mask"):
            value = config.get(f"{role}_token")
            if isinstance(value, dict):  # {"content": "<s>", ...} (AddedToken serialisation)
                value = value.get("content")
            if isinstance(value, str) and role not in found:
                found[role] = value
    return found


# Files a tokenizer directory may hold; a remote one is copied (these small files only) to a
# local cache, since SentencePiece and `tokenizers` read local files.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                    "special_tokens_map.json")  # fmt: skip


def _local_copy(remote) -> pathlib.Path:
    """A local copy of a remote tokenizer file, or of the tokenizer files of a remote directory."""
    key = hashlib.sha256(str(remote).encode()).hexdigest()[:16]
    local_dir = storage.default_cache_dir() / "remote-tokenizers" / key
    local_dir.mkdir(parents=True, exist_ok=True)
    if not remote.exists():
        raise MissingInputError(f"no tokenizer at {remote}")
    if not remote.is_dir():
        storage.atomic_write(local_dir / remote.name, remote.read_bytes())
        return local_dir / remote.name
    for name in _TOKENIZER_FILES:
        if (remote / name).exists():
            storage.atomic_write(local_dir / name, (remote / name).read_bytes())
    return local_dir


def _resolve_path(path: str | pathlib.Path) -> tuple[pathlib.Path, type]:
    if str(path).startswith(SHIPPED_PREFIX):
        return shipped_model_path(str(path)[len(SHIPPED_PREFIX) :]), _SentencePieceBackend
    if not storage.is_local(path):
        path = _local_copy(storage.path(path))
    path = pathlib.Path(path)
    if path.is_dir():
        for name, backend in (("tokenizer.json", _HFBackend), ("tokenizer.model", None)):
            if (path / name).is_file():
                return path / name, backend or _SentencePieceBackend
        raise MissingInputError(
            f"{path} holds neither tokenizer.json (HF) nor tokenizer.model (SentencePiece)"
        )
    if not path.is_file():
        raise MissingInputError(f"no tokenizer file at {path}")
    if path.suffix == ".model":
        return path, _SentencePieceBackend
    if path.suffix == ".json":
        return path, _HFBackend
    raise TokenizerError(
        f"{path}: unknown tokenizer file type; expected a SentencePiece .model, an HF "
        "tokenizer.json, or a directory holding one"
    )


def _mask_probes(mask_piece: str, mask_text: str) -> list[str]:
    names = " ".join(TOKEN_NAMES["mask"] + TOKEN_NAMES["eot"])
    probes = [names, "a<mask>b", "x [MASK] y <[MASK]>"]
    for piece in {mask_piece, mask_text} - {""}:
        probes += [piece, f"a{piece}b", f" {piece} ", piece * 3, f"\n{piece}\n"]
    return probes


class Tokenizer:
    """A loaded tokenizer with its special ids. See the module docstring for the rules."""

    kind: str
    path: pathlib.Path
    vocab_size: int
    pad_id: int
    unk_id: int | None
    bos_id: int
    eos_id: int
    mask_id: int
    eot_id: int | None
    identity: str

    def __init__(self, backend, path: pathlib.Path, ids: dict[str, int | None], overrides: dict):
        self._backend = backend
        self._overrides = overrides
        self.kind = backend.kind
        self.path = path
        self.vocab_size = backend.vocab_size
        self.pad_id, self.unk_id, self.bos_id = ids["pad"], ids["unk"], ids["bos"]
        self.eos_id, self.mask_id, self.eot_id = ids["eos"], ids["mask"], ids["eot"]
        self.identity = f"{self.kind}:{hashlib.sha256(path.read_bytes()).hexdigest()}"

    @classmethod
    def load(
        cls,
        path: str | pathlib.Path,
        *,
        pad_id: int | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        mask_id: int | None = None,
        eot_id: int | None = None,
    ) -> Tokenizer:
        """A `.model` file (SentencePiece), a `*.json` file or a directory with `tokenizer.json`
        (HF). Explicit ids override what the tokenizer declares. Raises ValueError on an unusable
        mask id (missing, out of range, equal to pad/bos/eos, or reachable from text)."""
        file, backend_cls = _resolve_path(path)
        try:
            backend = backend_cls(file)
        except ImportError:
            raise
        except Exception as err:  # SentencePiece / tokenizers raise RuntimeError or Exception
            kind = "SentencePiece model" if backend_cls is _SentencePieceBackend else "HF tokenizer"
            raise TokenizerError(
                f"{file} is not a readable {kind} ({type(err).__name__}: {err}); give a "
                "SentencePiece .model, an HF tokenizer.json, or a directory holding one"
            ) from err
        overrides = dict(pad=pad_id, bos=bos_id, eos=eos_id, mask=mask_id, eot=eot_id)
        overrides = {role: value for role, value in overrides.items() if value is not None}
        ids = {**backend.native_ids(file), **overrides}
        if ids["eos"] is None:
            raise TokenizerError(f"{file}: no end-of-sequence token found; pass eos_id= to load()")
        for role in ("pad", "bos"):
            if ids[role] is None:
                ids[role] = ids["eos"]
        _validate_ids(file, backend, ids)
        return cls(backend, file, ids, overrides)

    @classmethod
    def default(cls) -> Tokenizer:
        """The shipped SentencePiece BPE tokenizer: 8192 pieces, pad 0, unk 1, bos 2, eos 3,
        mask 4, <|start_header_id|> 5, <|end_header_id|> 6, <|eot_id|> 7."""
        return cls.load(default_model_path())

    @classmethod
    def for_model(cls, path: str, model_cfg: Any) -> tuple[Tokenizer | None, str]:
        """(the tokenizer at `path` (empty: the shipped one), "") when it fits `model_cfg`, else
        (None, why): for inference and samples, which can run on ids without one."""
        try:
            tokenizer = cls.load(path) if path else cls.default()
            tokenizer.check_model_config(model_cfg, allow_larger_model_vocab=True)
        except (TokenizerError, OSError) as err:
            return None, str(err)
        return tokenizer, ""

    def special_ids(self) -> dict[str, int | None]:
        return {role: getattr(self, f"{role}_id") for role in ROLES}

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no BOS/EOS added."""
        return self._backend.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._backend.encode_batch(list(texts))

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of `ids` ([length] ints or an array). Special tokens are spelled out (e.g.
        "<|eot_id|>") unless `skip_special`."""
        return self._backend.decode([int(token) for token in ids], skip_special)

    def decode_batch(self, batch: Iterable[Iterable[int]], *, skip_special: bool = False):
        """[batch, length] ids -> list of texts."""
        return [self.decode(ids, skip_special=skip_special) for ids in batch]

    def token_id(self, piece: str) -> int | None:
        """Id of a piece such as "<|eot_id|>", or None when the tokenizer has no such piece."""
        return self._backend.token_id(piece)

    def piece(self, token: int) -> str:
        return self._backend.piece(int(token))

    def check_model_config(self, model_cfg: Any, *, allow_larger_model_vocab: bool = False):
        """Raise ValueError naming every mismatch between this tokenizer and a `ModelConfig`.

        vocab_size must be equal (or, with `allow_larger_model_vocab`, the model's embedding may
        have extra rows, as LLaDA's 126,464); mask/pad/bos/eos ids must be equal; the eot id is
        compared when the model sets one (None there means the model does not use it).
        """
        problems = []
        vocab = model_cfg.vocab_size
        if vocab != self.vocab_size and not (allow_larger_model_vocab and vocab > self.vocab_size):
            problems.append(f"vocab_size: tokenizer {self.vocab_size}, model {vocab}")
        for role in ("mask", "pad", "bos", "eos", "eot"):
            model_id = getattr(model_cfg, f"{role}_token_id")
            if role == "eot" and model_id is None:
                continue
            if model_id != getattr(self, f"{role}_id"):
                problems.append(
                    f"{role}_token_id: tokenizer {getattr(self, f'{role}_id')}, model {model_id}"
                )
        if problems:
            raise TokenizerError(
                f"tokenizer {self.path} does not match model config "
                f"{getattr(model_cfg, 'name', '')!r}: " + "; ".join(problems) + ". Fix: set "
                "these model fields to the tokenizer's values (e.g. --config=set:model."
                "vocab_size=...) or use the tokenizer the model was trained with"
            )

    def __repr__(self) -> str:
        ids = ", ".join(f"{role}={token}" for role, token in self.special_ids().items())
        return f"Tokenizer({self.kind}, {self.path.name}, vocab_size={self.vocab_size}, {ids})"

    def __reduce__(self):  # picklable for data-loader worker processes: reload from the file
        return (_load_with_overrides, (str(self.path), self._overrides))


def _load_with_overrides(path: str, overrides: dict) -> Tokenizer:
    return Tokenizer.load(path, **{f"{role}_id": token for role, token in overrides.items()})


def _validate_ids(file: pathlib.Path, backend, ids: dict[str, int | None]) -> None:
    vocab = backend.vocab_size
    for role, token in ids.items():
        if token is not None and not 0 <= token < vocab:
            raise TokenizerError(
                f"{file}: {role} id {token} is outside the vocabulary [0, {vocab}); "
                f"pass {role}_id= an existing id to load()"
            )
    mask = ids["mask"]
    if mask is None:
        raise TokenizerError(
            f"{file}: no mask token found (looked for {', '.join(TOKEN_NAMES['mask'])}). "
            "Fix: pass mask_id= the id of an unused special token to load(), or train a "
            "tokenizer with one (`illada tokenizer train` adds <mask> as id 4)"
        )
    for role in ("pad", "unk", "bos", "eos", "eot"):
        if ids[role] == mask:
            other = "" if role == "unk" else f" or {role}_id="
            raise TokenizerError(
                f"{file}: the mask id {mask} equals the {role} id; masked positions are found "
                f"by `noisy == mask_id`, so pass a different mask_id={other} to load()"
            )
    backend.check_never_encoded(mask, "mask")
    probes = _mask_probes(backend.piece(mask), backend.decode([mask], False))
    for text in probes:
        if mask in backend.encode(text):
            raise TokenizerError(
                f"{file}: the text {text!r} encodes to the mask id {mask}; the mask token must "
                "be a special (HF) or control (SentencePiece) token that text cannot produce"
            )


def default_model_path() -> pathlib.Path:
    """Path of the shipped default SentencePiece model (package data)."""
    return shipped_model_path("sp8k")


def shipped_model_path(name: str) -> pathlib.Path:
    """Path of a shipped SentencePiece model (`SHIPPED`: sp8k, sp1k; package data)."""
    if name not in SHIPPED:
        raise TokenizerError(
            f"{SHIPPED_PREFIX}{name}: no such shipped tokenizer; shipped ones are "
            + ", ".join(SHIPPED_PREFIX + n for n in SHIPPED)
        )
    resource = importlib.resources.files("illada_jax.data.tokenizers").joinpath(
        "assets", SHIPPED[name]
    )
    path = pathlib.Path(str(resource))
    if not path.is_file():
        raise MissingInputError(
            f"the shipped tokenizer {path} is missing from the installation; reinstall "
            "illada-jax (the file is package data)"
        )
    return path


# ------------------------------------------------------------------------------ training


def chars_per_token(tokenizer: Tokenizer, texts: Sequence[str]) -> float:
    """Compression of `tokenizer` on `texts`: characters per token."""
    tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    return sum(len(text) for text in texts) / max(tokens, 1)


# ------------------------------------------------------------------------------ command line
