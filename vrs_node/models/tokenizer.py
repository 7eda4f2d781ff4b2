"""Tokenizers for the MLLM: the released VRS-HQ one, and a byte-level one for random-weight profiles.

- :func:`load_vrshq_tokenizer`: the checkpoint's LLaMA tokenizer (``tokenizer.model`` +
  ``tokenizer_config.json`` + ``added_tokens.json``) through ``AutoTokenizer``. transformers 5
  converts the sentencepiece model to its ``tokenizers`` backend (needs ``sentencepiece`` and
  ``protobuf``); ``[SEG]``/``[TAK]`` come from ``added_tokens.json`` and are looked up by name
  (:func:`vrs_node.models.mllm.special_token_ids`), never by position.
- :func:`byte_tokenizer`: every UTF-8 byte is a token (no merges, nothing trained), plus
  ``<unk> <s> </s> [SEG] [TAK]`` as special tokens and BOS added in front, like LLaMA's. Random
  weights need no real vocabulary; this one has the same special-token behaviour, so the prompt
  code and the instruction neutralising run exactly as with the real tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerFast

from vrs_node.models.prompt import SEG_TOKEN, TAK_TOKEN

BYTE_SPECIALS = ("<unk>", "<s>", "</s>", SEG_TOKEN, TAK_TOKEN)


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


def load_vrshq_tokenizer(checkpoint_dir: str | Path):
    """The released checkpoint's tokenizer from its directory (no network access)."""
    path = Path(checkpoint_dir)
    if not (path / "tokenizer.model").is_file() and not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.model or tokenizer.json: not a VRS-HQ checkpoint "
                                "directory (expected the files of Hugging Face SitongGong/VRS-HQ)")
    # An empty config stops AutoTokenizer from reading config.json, whose model_type "ChatUniVi"
    # transformers does not know (it would only warn; the tokenizer files say what to build).
    return AutoTokenizer.from_pretrained(str(path), config=PretrainedConfig(), local_files_only=True)
