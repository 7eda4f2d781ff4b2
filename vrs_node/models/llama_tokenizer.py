"""transformers 4.31's slow ``LlamaTokenizer`` on the ``sentencepiece`` library: :class:`SlowLlamaTokenizer`.

Built by :func:`vrs_node.models.tokenizer.load_vrshq_tokenizer` from the checkpoint's files (rules
1-3 there: files, special tokens, added tokens); tokenising follows rules 4-6, checked against the
golden data and transformers 4.31.0 itself (``test/data/tokenizer_oracle_431.json``):

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import sentencepiece as spm

SPIECE_UNDERLINE = "\u2581"
# transformers' special-token attributes, in its order (which decides whose strip flags count, rule 4)
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
                "additional_special_tokens")


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
