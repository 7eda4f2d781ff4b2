"""The released VRS-HQ checkpoint's LLaMA tokenizer, id for id as VRS-HQ evaluated it: :func:`load_vrshq_tokenizer`.

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

:class:`~vrs_node.models.llama_tokenizer.SlowLlamaTokenizer` applies rules 4-6 (cutting at no-split tokens,
pieces, ids).

Refused with an error that names the file: a missing ``tokenizer.model`` or
``tokenizer_config.json``, a file that is not a sentencepiece model, malformed JSON or values,
special tokens that are not pieces of the model, added-token ids that do not follow the vocabulary,
``sp_model_kwargs`` (sampling would make the ids random), and a ``tokenizer_class`` other than
``LlamaTokenizer``.

The byte-level tokenizer of the random-weight profiles is :mod:`vrs_node.models.byte_tokenizer`'s.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from vrs_node.models.json_object import read_json_object
from vrs_node.models.llama_tokenizer import SPECIAL_KEYS, SlowLlamaTokenizer, StripFlags, TokenizerFileError
from vrs_node.models.prompt import SEG_TOKEN, TAK_TOKEN


HF_REPO = "SitongGong/VRS-HQ"
"""The Hugging Face repository of the released VRS-HQ checkpoint (tokenizer files and weights);
here rather than in vrshq_checkpoint.py, which imports this module."""
SP_MODEL_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
TOKENIZER_FILES = (SP_MODEL_FILE, CONFIG_FILE, SPECIAL_MAP_FILE, ADDED_TOKENS_FILE)
"""The tokenizer's files in the checkpoint directory (rule 1: the first two required)."""
# LlamaTokenizer.__init__ defaults (4.31): these four are wrapped as AddedToken(lstrip=False, rstrip=False)
LLAMA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None}


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
    config_path, map_path = directory / CONFIG_FILE, directory / SPECIAL_MAP_FILE
    special, flags = {}, {}
    for key in SPECIAL_KEYS:
        if key in config or key in LLAMA_DEFAULTS:
            special[key], flags[key] = _special_value(config.get(key, LLAMA_DEFAULTS.get(key)), config_path, key,
                                                      wrap=key in LLAMA_DEFAULTS)
    if map_path.is_file():
        for key, value in read_json_object(map_path, TokenizerFileError).items():
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
    config = read_json_object(path, TokenizerFileError)
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
    added = read_json_object(path, TokenizerFileError)
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
    path = directory / CONFIG_FILE
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
    model_path = directory / SP_MODEL_FILE
    sp_model = _load_sentencepiece(model_path)
    config = _config(directory / CONFIG_FILE)
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
    if (directory / ADDED_TOKENS_FILE).is_file():
        _add_saved_tokens(tokenizer, directory / ADDED_TOKENS_FILE)
    tokenizer.add_tokens(tokenizer.all_special_tokens, special_tokens=True)  # 4.31 sanitize_special_tokens
    # evaluation_multiseg.py
    tokenizer.set_special_token("pad_token", tokenizer.unk_token)
    tokenizer.add_tokens(SEG_TOKEN, special_tokens=True)
    tokenizer.add_tokens(TAK_TOKEN, special_tokens=True)
    _check_added_tokens_decoder(tokenizer, config, directory)
    return tokenizer
