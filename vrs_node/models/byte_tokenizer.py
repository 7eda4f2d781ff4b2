"""The byte-level tokenizer of the random-weight profiles: :func:`byte_tokenizer`.

Every UTF-8 byte is a token (no merges, nothing trained), plus ``<unk> <s> </s> [SEG] [TAK]`` as
special tokens and BOS added in front, like LLaMA's. Random weights need no real vocabulary; this
one has the same special-token behaviour, so the prompt code and the instruction neutralising run
exactly as with the real tokenizer (``tokenizer(text).input_ids``, ``bos_token_id``,
``convert_tokens_to_ids``, ``unk_token_id``, ``len``).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

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
