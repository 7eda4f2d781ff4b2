"""Tokenizers for the MLLM: the released VRS-HQ one, and a byte-level one for random-weight profiles.

:func:`load_vrshq_tokenizer` -- the checkpoint's LLaMA tokenizer, id for id as VRS-HQ evaluated it
--------------------------------------------------------------------------------------------------
VRS-HQ's ``evaluation_multiseg.py`` builds its tokenizer with transformers **4.31**:
``AutoTokenizer.from_pretrained(checkpoint, use_fast=False)`` (the *slow* ``LlamaTokenizer``),
``pad_token = unk_token``, then ``add_tokens("[SEG]", special_tokens=True)`` and
``add_tokens("[TAK]", special_tokens=True)``. transformers 5 no longer offers that behaviour (it has
only the ``tokenizers``-backed LLaMA tokenizer, which treats the text around added tokens and the
chunk boundaries differently), so :class:`SlowLlamaTokenizer` re-implements it on the
``sentencepiece`` library directly. Rules reproduced (checked against the golden data and against
transformers 4.31.0 itself, ``test/data/tokenizer_oracle_431.json``):

1. **Files.** ``tokenizer.model`` (sentencepiece, used as is: its own normaliser, dummy prefix and
   byte fallback apply) and ``tokenizer_config.json`` are required; ``special_tokens_map.json`` and
   ``added_tokens.json`` are optional. Config keys used: ``legacy`` (default ``True`` as in 4.31),
   ``add_bos_token`` (default ``True``), ``add_eos_token`` (default ``False``), ``bos_token``,
   ``eos_token``, ``unk_token``, ``pad_token`` and the other special-token keys.
2. **Special tokens** (``bos_token`` ``eos_token`` ``unk_token`` ``pad_token`` ``sep_token`` ``cls_token``
   ``mask_token`` ``additional_special_tokens``). From ``tokenizer_config.json`` a dict (``"__type":
   "AddedToken"``) is an ``AddedToken`` with its ``lstrip``/``rstrip`` flags; a plain string for one of
   the first four becomes ``AddedToken(lstrip=False, rstrip=False)`` (LlamaTokenizer's defaults
   ``<s> </s> <unk>`` likewise), for the others it stays a plain string. An entry of
   ``special_tokens_map.json`` then *replaces* the value: a dict is an ``AddedToken``, a plain string
   has no flags (the release's file holds plain strings). The evaluation's ``pad_token = unk_token``
   sets a plain string. ``bos``/``eos``/``unk`` must be pieces of ``tokenizer.model``.
3. **Added tokens.** ``added_tokens.json``'s tokens, sorted by id, must take the ids right after the
   sentencepiece vocabulary, consecutively (4.31 refuses anything else). Then special tokens that are
   not pieces, ``[SEG]`` and ``[TAK]`` are added unless known (next free ids; 4.31's
   ``sanitize_special_tokens`` and the evaluation's ``add_tokens``). ``len(tokenizer)`` = pieces +
   added tokens. A ``tokenizer_config.json`` ``added_tokens_decoder`` (written by later transformers,
   ignored by 4.31) must agree with those ids, else the files contradict each other and loading fails.
4. **No-split tokens** = the special tokens' strings and the added tokens. The text is cut at every
   occurrence (exact, case-sensitive, leftmost-longest; equal to 4.31's trie for the token sets this
   loader accepts: no token overlapping another or itself). Around a no-split token ``t`` the
   neighbouring text pieces lose their whitespace (``str.rstrip()`` on the left piece,
   ``str.lstrip()`` on the right one, i.e. all Unicode whitespace) -- on both sides, unless ``t`` is the
   string of a special token held as an ``AddedToken`` (the first such attribute, rule 2): then only
   on the left if ``lstrip`` and on the right if ``rstrip``. With the release's files every one of
   ``<s> </s> <unk> [SEG] [TAK]`` strips both sides. Pieces left empty are dropped.
5. **Pieces** (``legacy=False``): first every ``▁`` (U+2581) in the text becomes a space and one ``▁``
   is put in front; a piece starting with ``▁`` (only the first can) loses it and is encoded by
   sentencepiece as is. Any other piece that does not start with a space is encoded and the leading
   ``▁`` of its first token is removed (the token disappears if it was ``▁`` alone). So ``" \\nWhat"``
   after an ``<image>`` cut is ``▁ ▁ <0x0A> …`` and ``"[SEG]world"`` gives ``[SEG]`` + ``world``.
   ``legacy=True``: every piece is encoded by sentencepiece as is.
6. **Ids.** An added token's id, else ``sentencepiece.piece_to_id`` -- so a token string that is not
   a piece (``world`` from ``▁world`` in rule 5) becomes ``<unk>`` (id 0), exactly as in 4.31.
   ``tokenizer(text).input_ids`` = ``[bos]`` if ``add_bos_token`` + ids + ``[eos]`` if ``add_eos_token``.

Refused with an error that names the file: a missing ``tokenizer.model`` or
``tokenizer_config.json``, a file that is not a sentencepiece model, malformed JSON or values,
special tokens that are not pieces of the model, added-token ids that do not follow the vocabulary,
``sp_model_kwargs`` (sampling would make the ids random), and a ``tokenizer_class`` other than
``LlamaTokenizer``.

:func:`byte_tokenizer` -- random-weight profiles
------------------------------------------------
Every UTF-8 byte is a token (no merges, nothing trained), plus ``<unk> <s> </s> [SEG] [TAK]`` as
special tokens and BOS added in front, like LLaMA's. Random weights need no real vocabulary; this
one has the same special-token behaviour, so the prompt code and the instruction neutralising run
exactly as with the real tokenizer (``tokenizer(text).input_ids``, ``bos_token_id``,
``convert_tokens_to_ids``, ``unk_token_id``, ``len``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from vrs_node.models.prompt import SEG_TOKEN, TAK_TOKEN

BYTE_SPECIALS = ("<unk>", "<s>", "</s>", SEG_TOKEN, TAK_TOKEN)
SPIECE_UNDERLINE = "\u2581"
HF_REPO = "SitongGong/VRS-HQ"
"""The Hugging Face repository of the released VRS-HQ checkpoint (tokenizer files and weights);
here rather than in vrshq_checkpoint.py, which imports this module."""
# transformers' special-token attributes, in its order (which decides whose strip flags count, rule 4)
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
                "additional_special_tokens")
# LlamaTokenizer.__init__ defaults (4.31): these four are wrapped as AddedToken(lstrip=False, rstrip=False)
LLAMA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: ids 0-4 = :data:`BYTE_SPECIALS`, ids 5-260 = the 256 byte symbols."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(BYTE_SPECIALS)}
    vocab.update({sym: len(BYTE_SPECIALS) + i for i, sym in enumerate(sorted(alphabet))})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(BYTE_SPECIALS))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", additional_special_tokens=[SEG_TOKEN, TAK_TOKEN])


class TokenizerFileError(ValueError):
    """A tokenizer file is malformed, inconsistent or not what the VRS-HQ release holds."""


@dataclass(frozen=True)
class Encoding:
    """What ``tokenizer(text)`` returns: the ids (the part of a transformers BatchEncoding used here)."""

    input_ids: list[int]


@dataclass(frozen=True)
class StripFlags:
    """Which neighbouring text loses its whitespace at a no-split token (rule 4)."""

    left: bool = True
    right: bool = True


class SlowLlamaTokenizer:
    """transformers 4.31's slow ``LlamaTokenizer`` behaviour on a sentencepiece model (module docstring,
    rules 3-6). Build it with :func:`load_vrshq_tokenizer`; constructing it directly takes the resolved
    settings: ``special`` maps each special-token attribute (``bos_token`` ...) to its string (a list
    for ``additional_special_tokens``) and ``flags`` to the strip flags of each string (None: a plain
    string, not an ``AddedToken``). Only the special tokens and what :meth:`add_tokens` adds are
    no-split tokens (4.31's ``sanitize_special_tokens`` is :meth:`add_tokens` of
    :attr:`all_special_tokens`)."""

    def __init__(self, sp_model: spm.SentencePieceProcessor, special: dict[str, str | list[str] | None],
                 flags: dict[str, list[StripFlags | None]], legacy: bool = False, add_bos_token: bool = True,
                 add_eos_token: bool = False, name: str = "tokenizer"):
        self.sp_model = sp_model
        self.name = name
        self.legacy = legacy
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.special = dict(special)
        self.flags = {key: list(value) for key, value in flags.items()}
        self.added_tokens_encoder: dict[str, int] = {}
        self._no_split: list[str] = []
        self._split_re = re.compile("(?!)")  # matches nothing until a token is registered

    # --- vocabulary ------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Pieces of the sentencepiece model (without added tokens)."""
        return self.sp_model.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size + len(self.added_tokens_encoder)

    def _special_entries(self) -> list[tuple[str, StripFlags | None]]:
        """(string, flags) of every special-token attribute's value, in transformers' attribute order."""
        out = []
        for key in SPECIAL_KEYS:
            value = self.special.get(key)
            tokens = value if isinstance(value, list) else [value]
            flags = self.flags.get(key) or [None] * len(tokens)
            out += [(token, flag) for token, flag in zip(tokens, flags) if token is not None]
        return out

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys(token for token, _ in self._special_entries()))

    def strip_flags(self, token: str) -> StripFlags:
        """Rule 4: the flags of the first special-token attribute holding ``token`` as an AddedToken
        (4.31 dedups equal AddedTokens, keeping the first), else strip both sides."""
        for special, flags in self._special_entries():
            if special == token and flags is not None:
                return flags
        return StripFlags()

    def set_special_token(self, key: str, token: str | None) -> None:
        """``tokenizer.<key> = token`` with a plain string (as ``tokenizer.pad_token = tokenizer.unk_token``)."""
        if key not in SPECIAL_KEYS or key == "additional_special_tokens":
            raise ValueError(f"not a single special-token attribute: {key}")
        self.special[key] = token
        self.flags[key] = [None]

    def _special_id(self, key: str) -> int | None:
        token = self.special.get(key)
        return None if token is None else self.convert_tokens_to_ids(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._special_id("unk_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def bos_token(self) -> str | None:
        return self.special.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special.get("eos_token")

    @property
    def unk_token(self) -> str | None:
        return self.special.get("unk_token")

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Added token id, else ``piece_to_id`` (the unk id for a string that is no piece)."""
        if isinstance(tokens, str):
            if tokens in self.added_tokens_encoder:
                return self.added_tokens_encoder[tokens]
            return self.sp_model.piece_to_id(tokens)
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | list[str]:
        if isinstance(ids, int):
            for token, token_id in self.added_tokens_encoder.items():
                if token_id == ids:
                    return token
            return self.sp_model.id_to_piece(ids)
        return [self.convert_ids_to_tokens(i) for i in ids]

    def add_tokens(self, tokens: str | Iterable[str], special_tokens: bool = False) -> int:
        """4.31 ``add_tokens``: each token that is neither the unk token nor known (a piece or added)
        gets the next id; every added token becomes a no-split token (special ones even if known).
        Returns how many got new ids."""
        tokens = [tokens] if isinstance(tokens, str) else list(tokens)
        unk_id = self.unk_token_id
        new = [t for i, t in enumerate(tokens) if t != self.unk_token and t not in tokens[:i]
               and self.convert_tokens_to_ids(t) == unk_id]
        for token in new:
            self.added_tokens_encoder[token] = len(self)
        self._register_no_split(tokens if special_tokens else new)
        return len(new)

    def _register_no_split(self, tokens: Iterable[str]) -> None:
        self._no_split += [t for t in tokens if t and t not in self._no_split]
        for a in self._no_split:
            for b in self._no_split:
                if (a != b and a in b) or any(a[-k:] == b[:k] for k in range(1, min(len(a), len(b)))):
                    raise TokenizerFileError(f"tokenizer {self.name}: the no-split tokens {a!r} and {b!r} overlap; "
                                             "this tokenizer reproduces transformers 4.31 only for tokens "
                                             "that cannot overlap (as <s> </s> <unk> [SEG] [TAK])")
        longest_first = sorted(self._no_split, key=len, reverse=True)
        self._split_re = re.compile("|".join(map(re.escape, longest_first)))

    # --- tokenising ------------------------------------------------------------------------------
    def _cut(self, text: str) -> list[str]:
        """Rule 4: the text cut at the no-split tokens, neighbours stripped, empty pieces dropped."""
        parts: list[str] = []
        position = 0
        for match in self._split_re.finditer(text):
            if match.start() > position:
                parts.append(text[position:match.start()])
            parts.append(match.group())
            position = match.end()
        if position < len(text):
            parts.append(text[position:])
        no_split = set(self._no_split)
        for i, part in enumerate(parts):
            if part in no_split:
                flags = self.strip_flags(part)
                if flags.right and i + 1 < len(parts):
                    parts[i + 1] = parts[i + 1].lstrip()
                if flags.left and i > 0:
                    parts[i - 1] = parts[i - 1].rstrip()
        return [p for p in parts if p]

    def _pieces(self, text: str) -> list[str]:
        """Rule 5 for one piece of text between no-split tokens."""
        if self.legacy:
            return self.sp_model.encode(text, out_type=str)
        first = text.startswith(SPIECE_UNDERLINE)
        if first:
            text = text[1:]
        pieces = self.sp_model.encode(text, out_type=str)
        if not first and not text.startswith(" ") and pieces and pieces[0].startswith(SPIECE_UNDERLINE):
            pieces = ([pieces[0][1:]] if len(pieces[0]) > 1 else []) + pieces[1:]
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text`` (no BOS/EOS)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not self.legacy:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        no_split = set(self._no_split)
        tokens: list[str] = []
        for part in self._cut(text):
            tokens += [part] if part in no_split else self._pieces(part)
        return tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of ``text``; with ``add_special_tokens`` BOS/EOS as ``add_bos_token``/``add_eos_token`` say."""
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        if add_special_tokens:
            ids = [self.bos_token_id] * self.add_bos_token + ids + [self.eos_token_id] * self.add_eos_token
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> Encoding:
        return Encoding(self.encode(text, add_special_tokens))

    def __repr__(self) -> str:
        return (f"SlowLlamaTokenizer({self.name}, pieces={self.vocab_size}, added={self.added_tokens_encoder}, "
                f"legacy={self.legacy}, add_bos_token={self.add_bos_token}, add_eos_token={self.add_eos_token})")


# --- loading -------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenizerFileError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(data, dict):
        raise TokenizerFileError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _load_sentencepiece(path: Path) -> spm.SentencePieceProcessor:
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: expected the LLaMA sentencepiece model tokenizer.model of the "
                                f"VRS-HQ checkpoint (Hugging Face {HF_REPO})")
    data = path.read_bytes()
    try:
        if not data:
            raise ValueError("the file is empty")
        model = spm.SentencePieceProcessor(model_proto=data)
        if model.get_piece_size() == 0:
            raise ValueError("it holds no pieces")
    except (RuntimeError, OSError, ValueError) as err:
        raise TokenizerFileError(f"{path}: not a valid sentencepiece model ({str(err).strip()}); expected the "
                                 f"LLaMA tokenizer.model of {HF_REPO}") from err
    return model


def _added_token(value, path: Path, key: str) -> tuple[str, StripFlags | None]:
    """(string, flags if an AddedToken) of a special-token value from ``path``."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        flags = {side: value.get(side, False) for side in ("lstrip", "rstrip")}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise TokenizerFileError(f"{path}: {key} has non-boolean lstrip/rstrip")
        return value["content"], StripFlags(left=flags["lstrip"], right=flags["rstrip"])
    raise TokenizerFileError(f"{path}: {key} must be a string or an AddedToken object, got {value!r}")


def _special_tokens(directory: Path, config: dict) -> tuple[dict, dict]:
    """Rule 2: each special-token attribute's string(s) and strip flags (None for a plain string)."""
    config_path, map_path = directory / "tokenizer_config.json", directory / "special_tokens_map.json"
    special, flags = {}, {}
    for key in SPECIAL_KEYS:
        if key in config or key in LLAMA_DEFAULTS:
            special[key], flags[key] = _special_value(config.get(key, LLAMA_DEFAULTS.get(key)), config_path, key,
                                                      wrap=key in LLAMA_DEFAULTS)
    if map_path.is_file():
        for key, value in _read_json(map_path).items():
            if key in SPECIAL_KEYS:
                special[key], flags[key] = _special_value(value, map_path, key, wrap=False)
    return special, flags


def _special_value(value, path: Path, key: str, wrap: bool):
    if value is None:
        return None, [None]
    if key == "additional_special_tokens":
        if not isinstance(value, list):
            raise TokenizerFileError(f"{path}: additional_special_tokens must be a list")
        pairs = [_added_token(v, path, key) for v in value]
        return [t for t, _ in pairs], [f for _, f in pairs]
    token, flags = _added_token(value, path, key)
    if flags is None and wrap:  # LlamaTokenizer wraps its four string arguments as AddedToken(False, False)
        flags = StripFlags(left=False, right=False)
    return token, [flags]


def _config(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: expected the tokenizer settings (legacy, add_bos_token, special "
                                f"tokens) of the VRS-HQ checkpoint (Hugging Face {HF_REPO})")
    config = _read_json(path)
    if config.get("tokenizer_class", "LlamaTokenizer") != "LlamaTokenizer":
        raise TokenizerFileError(f"{path}: tokenizer_class {config['tokenizer_class']!r}; only the slow "
                                 "LlamaTokenizer of the VRS-HQ release is reproduced")
    for key in ("legacy", "add_bos_token", "add_eos_token"):
        if key in config and not isinstance(config[key], bool):
            raise TokenizerFileError(f"{path}: {key} must be true or false, got {config[key]!r}")
    if config.get("sp_model_kwargs"):
        raise TokenizerFileError(f"{path}: sp_model_kwargs {config['sp_model_kwargs']!r} are not supported "
                                 "(sampling would make the token ids random)")
    return config


def _add_saved_tokens(tokenizer: SlowLlamaTokenizer, path: Path) -> None:
    """Rule 3: added_tokens.json, consecutive ids after the vocabulary."""
    added = _read_json(path)
    if not all(isinstance(k, str) and k and type(v) is int for k, v in added.items()):
        raise TokenizerFileError(f"{path}: expected an object of token -> integer id, got {added!r}")
    for token, token_id in sorted(added.items(), key=lambda item: item[1]):
        if token_id != len(tokenizer):
            raise TokenizerFileError(f"{path}: {token} has id {token_id}, but added tokens must take the ids right "
                                     f"after the {tokenizer.vocab_size} pieces of tokenizer.model, in order "
                                     f"(next free id {len(tokenizer)})")
        if not tokenizer.add_tokens(token, special_tokens=token in tokenizer.all_special_tokens):
            raise TokenizerFileError(f"{path}: {token} is already piece {tokenizer.convert_tokens_to_ids(token)} "
                                     "of tokenizer.model")


def _check_added_tokens_decoder(tokenizer: SlowLlamaTokenizer, config: dict, directory: Path) -> None:
    decoder = config.get("added_tokens_decoder")
    if decoder is None:
        return
    path = directory / "tokenizer_config.json"
    if not isinstance(decoder, dict):
        raise TokenizerFileError(f"{path}: added_tokens_decoder must be an object")
    for key, entry in decoder.items():
        content = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(content, str) or not key.isdigit():
            raise TokenizerFileError(f"{path}: malformed added_tokens_decoder entry {key!r}: {entry!r}")
        token_id = tokenizer.convert_tokens_to_ids(content)
        if token_id != int(key):
            raise TokenizerFileError(f"{path}: added_tokens_decoder gives {content} id {key} but tokenizer.model "
                                     f"and added_tokens.json give it id {token_id}")


def load_vrshq_tokenizer(checkpoint_dir: str | Path) -> SlowLlamaTokenizer:
    """The released checkpoint's tokenizer as VRS-HQ's evaluation builds it with transformers 4.31
    (module docstring: the files read and rules 1-6). No network access."""
    directory = Path(checkpoint_dir)
    model_path = directory / "tokenizer.model"
    sp_model = _load_sentencepiece(model_path)
    config = _config(directory / "tokenizer_config.json")
    special, flags = _special_tokens(directory, config)
    unk_piece = sp_model.id_to_piece(sp_model.unk_id())
    for key in ("bos_token", "eos_token", "unk_token"):
        token = special.get(key)
        if token is None or (sp_model.piece_to_id(token) == sp_model.unk_id() and token != unk_piece):
            raise TokenizerFileError(f"{model_path}: has no piece {token!r}, the {key} of tokenizer_config.json / "
                                     "special_tokens_map.json")
    tokenizer = SlowLlamaTokenizer(sp_model, special, flags, legacy=config.get("legacy", True),
                                   add_bos_token=config.get("add_bos_token", True),
                                   add_eos_token=config.get("add_eos_token", False), name=str(directory))
    if (directory / "added_tokens.json").is_file():
        _add_saved_tokens(tokenizer, directory / "added_tokens.json")
    tokenizer.add_tokens(tokenizer.all_special_tokens, special_tokens=True)  # 4.31 sanitize_special_tokens
    # evaluation_multiseg.py
    tokenizer.set_special_token("pad_token", tokenizer.unk_token)
    tokenizer.add_tokens(SEG_TOKEN, special_tokens=True)
    tokenizer.add_tokens(TAK_TOKEN, special_tokens=True)
    _check_added_tokens_decoder(tokenizer, config, directory)
    return tokenizer
