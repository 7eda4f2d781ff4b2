"""The VRS-HQ prompt: exact llava_v1 wording, frame expansion, and tokenisation with image sentinels.

Reference (REFERENCE_VRSHQ_VIDEOLISA.md §1.4; VRS-HQ ``utils/utils.py`` question/answer lists,
``convert2imagesplit``, ``model/llava/conversation.py`` conv_llava_v1, ``mm_utils.tokenizer_image_token``):

- instruction normalised as the reference does: lower-cased, whitespace collapsed;
- question: ``Reference Video: <video> \\n{sent} Please find it ...`` when the instruction ends
  with ``?``, else ``Reference Video: <video> \\nWhat is {sent} in the Reference Video? ...``;
- ``<video>`` -> ``(0)<image>, (1)<image>, ..., (N-1)<image>``; the answer's ``[SEG]`` ->
  ``(0) [SEG], ..., (N-1) [SEG]`` (SEG token i belongs to image i), one ``[TAK]``;
- prompt = ``{SYSTEM} USER: {question} ASSISTANT: {answer}</s>`` (separator style TWO);
- tokens: the prompt is split on ``<image>``, each chunk tokenised on its own, the leading BOS
  kept once, and each ``<image>`` replaced by the sentinel ``IMAGE_TOKEN_INDEX`` (-200).

The user's instruction is data. Text in it that spells a reserved token (``[SEG]``, ``[TAK]``,
``<image>``, ``<video>``, ``</s>``, ``<s>``, ``<unk>``, in any case) is broken up with a space
after its first character, so it can never become a special token, an image slot or an end of
sequence; an empty or over-long instruction, or one with a control character, is refused with a
clear message (:func:`clean_instruction`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

IMAGE_TOKEN_INDEX = -200
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
SEG_TOKEN = "[SEG]"
TAK_TOKEN = "[TAK]"

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
QUESTION_SENTENCE = ("Reference Video: " + VIDEO_TOKEN + " \n{sent} Please find it in the Reference Video and "
                     "respond with segmentation masks for each frame and for the entire video separately.")
QUESTION_PHRASE = ("Reference Video: " + VIDEO_TOKEN + " \nWhat is {sent} in the Reference Video? Please "
                   "respond with segmentation masks for each frame and for the entire video separately.")
ANSWER = "Sure, the segmentation result of each frame is [SEG], while for the entire video it is [TAK]."

RESERVED_TEXT = (SEG_TOKEN, TAK_TOKEN, IMAGE_TOKEN, VIDEO_TOKEN, "</s>", "<s>", "<unk>")
MAX_INSTRUCTION_CHARS = 1000
# Control characters (Cc) that are not whitespace to str.split (which collapses \t \n \v \f \r,
# U+001C-U+001F and U+0085 as the reference's normalisation does), and unpaired surrogates (Cs).
_REFUSED_CHARS = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class Instruction:
    """A normalised, safe instruction; ``neutralised`` says reserved text had to be broken up."""

    text: str
    neutralised: bool


def clean_instruction(raw: str, max_chars: int = MAX_INSTRUCTION_CHARS) -> Instruction:
    """Normalise (lower-case, collapse whitespace) and neutralise a user instruction.

    Raises ValueError for a non-string; for an instruction longer than ``max_chars`` characters
    as given (before normalising: lower-casing can lengthen text, 'İ' becomes two characters);
    for one with a control character (Unicode category Cc: U+0000-U+001F, U+007F-U+009F) other
    than those ``str.split`` takes for whitespace (tab, line feed, vertical tab, form feed,
    carriage return, U+001C-U+001F, U+0085), which are collapsed like any whitespace as the
    reference's normalisation collapses them, or with an unpaired surrogate: such text is not a sentence and
    would otherwise be cut or mangled silently (a NUL ends a C string); and for an instruction that
    is empty after normalising.
    """
    if not isinstance(raw, str):
        raise ValueError(f"the instruction must be text, got {type(raw).__name__}")
    if len(raw) > max_chars:
        raise ValueError(f"the instruction is {len(raw)} characters long; the limit is {max_chars}")
    bad = _REFUSED_CHARS.search(raw)
    if bad:
        code = ord(bad.group())
        kind = "an unpaired surrogate" if 0xD800 <= code <= 0xDFFF else "a control character"
        raise ValueError(f"the instruction has {kind} (U+{code:04X}) at position {bad.start()}; "
                         "only printable text, spaces, tabs and line breaks are accepted")
    text = " ".join(raw.lower().split())
    if not text:
        raise ValueError("the instruction is empty: say what to segment, e.g. 'the black swan'")
    safe = text
    for reserved in RESERVED_TEXT:
        safe = re.sub(re.escape(reserved), lambda m: m.group(0)[0] + " " + m.group(0)[1:], safe,
                      flags=re.IGNORECASE)
    return Instruction(safe, neutralised=safe != text)


def build_prompt(instruction: Instruction, num_frames: int) -> str:
    """The full llava_v1 prompt for ``num_frames`` sampled frames (one ``[SEG]`` each, one ``[TAK]``)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    template = QUESTION_SENTENCE if instruction.text.endswith("?") else QUESTION_PHRASE
    images = ", ".join(f"({i}){IMAGE_TOKEN}" for i in range(num_frames))
    question = template.format(sent=instruction.text).replace(VIDEO_TOKEN, images)
    answer = ANSWER.replace(SEG_TOKEN, ", ".join(f"({i}) {SEG_TOKEN}" for i in range(num_frames)))
    return f"{SYSTEM} USER: {question} ASSISTANT: {answer}</s>"


def tokenize_prompt(prompt: str, tokenizer) -> list[int]:
    """Token ids of ``prompt`` the reference way: chunks split on ``<image>`` tokenised one by
    one (``tokenizer(chunk).input_ids`` with BOS added: :func:`vrs_node.models.tokenizer.load_vrshq_tokenizer`
    or a Hugging Face tokenizer), BOS kept once, ``IMAGE_TOKEN_INDEX`` per image."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_TOKEN)]
    bos = tokenizer.bos_token_id
    ids = [bos] if chunks[0][:1] == [bos] else []
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids += chunk[1:] if chunk[:1] == [bos] else chunk
    return ids
