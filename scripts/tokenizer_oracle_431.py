#!/usr/bin/env python3
"""Record transformers 4.31's slow LlamaTokenizer output as test data (the tokenizer oracle).

transformers 5 no longer has 4.31's slow ``LlamaTokenizer`` behaviour, which is what VRS-HQ's
evaluation used; ``vrs_node.models.tokenizer`` re-implements it on ``sentencepiece`` directly and
``test/test_vrshq_tokenizer.py`` checks it against the file this script writes.

Run it with a Python that has ``transformers==4.31.0`` and ``sentencepiece`` (not the project
venv, which has transformers 5), e.g.::

    python3 -m venv /tmp/tf431
    /tmp/tf431/bin/pip install transformers==4.31.0 sentencepiece protobuf
    /tmp/tf431/bin/python scripts/tokenizer_oracle_431.py \
        --checkpoint ../shared/golden/vrshq_tiny/checkpoint --out test/data/tokenizer_oracle_431.json

The tokenizer is built the way VRS-HQ's ``evaluation_multiseg.py`` builds it: ``AutoTokenizer``
with ``use_fast=False`` from the checkpoint directory, ``pad_token = unk_token``, then
``add_tokens("[SEG]", special_tokens=True)`` and ``add_tokens("[TAK]", special_tokens=True)``.
Prompts come from this repository's ``vrs_node.models.prompt`` (``build_prompt(clean_instruction(
text), n)``, stdlib only) and are tokenised the way the reference's ``tokenizer_image_token`` does:
each ``<image>``-separated chunk through ``tokenizer(chunk).input_ids``, the first chunk's leading BOS
kept once, the first id of every chunk dropped when that BOS is there, -200 between chunks.

Written: ``cases`` (instruction, num_frames, prompt, input_ids, SEG/TAK positions) for every
instruction in :data:`INSTRUCTIONS` at a few frame counts, and ``texts``: raw strings (special
tokens, whitespace next to them, unicode) with ``tokenizer(text).input_ids`` -- the tokenizer's rules
on their own, outside the prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vrs_node.models.prompt import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, build_prompt, clean_instruction  # noqa: E402

FRAME_COUNTS = (1, 2, 4, 6, 11, 12)

INSTRUCTIONS = (
    "the black swan",
    "The black swan swimming on the pond.  ",
    "the café's naïve 🦢 swan",
    "Which animal is swimming in the pond?",
    "What is the object that the person standing on the left side of the frame is holding in his right "
    "hand while he walks slowly towards the camera and the dog follows him?",
    "the 2 dogs running at 10:30, number 42",
    "the   dog\n\nrunning\tfast",
    "一只黑色的天鹅",
    "白鳥が池で泳いでいる",
    "검은 백조",
    "the man in the [SEG] shirt",
    "[TAK] the car",
    "the bird </s> <s> <unk>",
    "<image> the cat <video>",
    "[seg][tak]",
    "ÉLAN Über die Straße",
    "the \u2581underscore piece",
    "the 'quoted' \"double\" thing",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧",
    "ο μαύρος κύκνος",
    "русский лебедь",
    "البجعة السوداء",
    "the object with id #123-456_789",
    "a?",
    "?",
    "what is moving?",
    "the swan (left), not the duck [right]",
    "tab\tand\u00a0nbsp\u3000ideographic space",
    "zero width\u200bspace",
    "combining e\u0301 accent",
    "\ufb01 ligature and \uff46\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48",
    "the swan...",
    "3.14159 and 1,000,000 and 007",
    "hello</s>world",
    "[ SEG ] spaced",
    "the swan\r\nin the pond",
    "Is the swan black? Yes.",
    "mixed ＡＢＣ ½ ² ³ ⅷ",
    "the swan 🦢?",
    "line\u2028separator and\u0085next",
    "x",
    "the person who is riding the brown horse on the far right side of the field, behind the white fence "
    "and next to the small red barn, wearing a blue jacket and a black helmet",
)

TEXTS = (
    "", " ", "  ", "\t", "\n", "hello", " hello", "  hello", "\nhello", "hello ", "hello\n",
    "hello [SEG] world", "hello [SEG]world", "hello[SEG] world", "hello[SEG]world", "[SEG]", " [SEG] ",
    "[SEG][TAK]", "[SEG] [TAK]", "(0) [SEG], (1) [SEG]", "it is [TAK].</s>", "it is [TAK]. </s>",
    "a </s> b", "a</s>b", "a </s>", "</s>", " </s>", "<s>x", " <s> x", "<s> <s>", "<unk>", "x <unk> y",
    "text with \u2581 underscore", "\u2581start", "\u2581\u2581", "\n[SEG]\n", "x [SEG]\t\ny",
    "[SEG] \u3000 y", "[SEG]\u00a0y", "é [SEG] é", "[SEG]é", "[SEG]🦢", "[SEG]123", "[SEG]\u2581x",
    "1234567", "[seg]", "<0x0A>", "the café", " \nWhat is", "\u3000x", "🦢", "👨\u200d👩\u200d👧",
    "ﬁ ｆｕｌｌ", "e\u0301", "[SEG]a[TAK]b</s>c<s>d<unk>e", "<s", "[SEG", "[[SEG]]", "<</s>>",
)


def load_tokenizer(checkpoint: Path):
    """The reference evaluation's tokenizer (evaluation_multiseg.py), transformers 4.31."""
    import transformers

    if transformers.__version__ != "4.31.0":
        raise SystemExit(f"needs transformers 4.31.0, this Python has {transformers.__version__}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint), model_max_length=2048,
                                                           padding_side="right", use_fast=False)
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.add_tokens("[SEG]", special_tokens=True)
    tokenizer.add_tokens("[TAK]", special_tokens=True)
    return tokenizer


def prompt_ids(prompt: str, tokenizer) -> list[int]:
    """The reference's image-sentinel tokenisation (mm_utils.tokenizer_image_token, return_tensors=None)."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_TOKEN)]
    skip = 1 if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = chunks[0][:skip]
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[skip:])
    return ids


def dump_json(data: dict) -> str:
    """JSON with one line per top-level field and per list item (diff-friendly, compact id lists)."""
    def value(v):
        if isinstance(v, list):
            return "[\n" + ",\n".join("  " + json.dumps(x, ensure_ascii=False) for x in v) + "\n ]"
        return json.dumps(v, ensure_ascii=False)
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in data.items()) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO.parent / "shared/golden/vrshq_tiny/checkpoint")
    parser.add_argument("--out", type=Path, default=REPO / "test/data/tokenizer_oracle_431.json")
    args = parser.parse_args()

    import sentencepiece
    import tokenizers
    import transformers

    tokenizer = load_tokenizer(args.checkpoint)
    seg, tak = tokenizer.convert_tokens_to_ids("[SEG]"), tokenizer.convert_tokens_to_ids("[TAK]")
    cases = []
    for k, text in enumerate(INSTRUCTIONS):
        for n in (FRAME_COUNTS[k % len(FRAME_COUNTS)], FRAME_COUNTS[(k + 3) % len(FRAME_COUNTS)]):
            prompt = build_prompt(clean_instruction(text), n)
            ids = prompt_ids(prompt, tokenizer)
            cases.append({"instruction": text, "num_frames": n, "prompt": prompt, "input_ids": ids,
                          "seg_positions": [i for i, t in enumerate(ids) if t == seg],
                          "tak_positions": [i for i, t in enumerate(ids) if t == tak]})
    texts = [{"text": text, "input_ids": tokenizer(text).input_ids} for text in TEXTS]
    header = {
        "produced_by": "scripts/tokenizer_oracle_431.py: transformers 4.31.0 slow LlamaTokenizer "
                       "(AutoTokenizer use_fast=False) on the golden checkpoint "
                       "shared/golden/vrshq_tiny/checkpoint, pad_token = unk_token, "
                       "add_tokens('[SEG]', special_tokens=True), add_tokens('[TAK]', special_tokens=True) "
                       "as VRS-HQ evaluation_multiseg.py; prompts = build_prompt(clean_instruction(text), n) "
                       "tokenised as mm_utils.tokenizer_image_token",
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "sentencepiece": sentencepiece.__version__, "python": sys.version.split()[0]},
        "seg_token_id": seg, "tak_token_id": tak, "len_tokenizer": len(tokenizer),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump_json({**header, "cases": cases, "texts": texts}))
    print(f"wrote {len(cases)} prompt cases and {len(texts)} texts to {args.out}")


if __name__ == "__main__":
    main()
