"""The released VRS-HQ tokenizer, id for id as the authors' evaluation (transformers 4.31, slow LlamaTokenizer).

Expectations come from outside the code under test:

- the shared golden ``../shared/golden/vrshq_tiny`` (override with ``VRS_GOLDEN_DIR``), produced by
  the authors' own code with transformers 4.31.0: ``golden/tokenizer_goldens.json`` and the
  ``input_ids`` of every ``golden/*.npz``. Missing golden data is a failure, not a skip;
- ``test/data/tokenizer_oracle_431.json``: transformers 4.31.0's slow tokenizer on the same
  checkpoint, for many instructions and raw texts (written by ``scripts/tokenizer_oracle_431.py``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, VRSHQ_GOLDEN as GOLDEN
from vrs_node.models.llama_tokenizer import TokenizerFileError
from vrs_node.models.mllm import special_token_ids
from vrs_node.models.prompt import IMAGE_TOKEN_INDEX, build_prompt, clean_instruction, tokenize_prompt
from vrs_node.models.tokenizer import load_vrshq_tokenizer

ORACLE = REPO / "test" / "data" / "tokenizer_oracle_431.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
SEG, TAK, BOS, EOS = 3000, 3001, 1, 2


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    path = GOLDEN / "checkpoint"
    assert (path / "tokenizer.model").is_file(), (
        f"VRS-HQ tiny golden missing: {path}/tokenizer.model (set VRS_GOLDEN_DIR to the vrshq_tiny directory)")
    return path


@pytest.fixture(scope="module")
def tok(checkpoint):
    return load_vrshq_tokenizer(checkpoint)


def positions(ids: list[int], token_id: int) -> list[int]:
    return [i for i, t in enumerate(ids) if t == token_id]


def test_the_interface_the_node_uses(tok):
    assert len(tok) == 3002 and special_token_ids(tok) == (SEG, TAK)
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (BOS, EOS, 0, 0)
    assert tok.convert_tokens_to_ids("no such piece") == tok.unk_token_id
    assert tok("the black swan").input_ids[0] == BOS
    assert tok("the black swan", add_special_tokens=False).input_ids == tok.encode("the black swan")[1:]


def test_tokenizer_goldens_id_for_id(tok):
    goldens = json.loads((GOLDEN / "golden" / "tokenizer_goldens.json").read_text())
    assert (goldens["seg_token_id"], goldens["tak_token_id"]) == (SEG, TAK)
    assert {c["num_frames"] for c in goldens["cases"]} == {1, 4, 6, 11, 12}
    for case in goldens["cases"]:
        label = f"{case['name']} N={case['num_frames']}"
        prompt = build_prompt(clean_instruction(case["instruction"]), case["num_frames"])
        assert prompt == case["prompt"], label
        ids = tokenize_prompt(prompt, tok)
        assert ids == case["input_ids"], label
        assert positions(ids, SEG) == case["seg_positions"] and positions(ids, TAK) == case["tak_positions"], label


def test_the_golden_runs_input_ids(tok):
    arrays = sorted((GOLDEN / "golden").glob("*.npz"))
    assert len(arrays) >= 4, f"golden runs missing in {GOLDEN / 'golden'}"
    for npz in arrays:
        meta = json.loads(npz.with_suffix(".json").read_text())
        prompt = build_prompt(clean_instruction(meta["instruction"]), meta["n_images"])
        assert prompt == meta["prompt"], npz.name
        ids = tokenize_prompt(prompt, tok)
        with np.load(npz) as data:
            assert ids == data["input_ids"].tolist(), npz.name
            assert positions(ids, SEG) == data["seg_positions"].tolist(), npz.name
            assert positions(ids, TAK) == data["tak_positions"].tolist(), npz.name


def test_the_transformers_431_oracle(tok):
    oracle = json.loads(ORACLE.read_text())
    assert "transformers 4.31.0 slow LlamaTokenizer" in oracle["produced_by"]
    assert (oracle["seg_token_id"], oracle["tak_token_id"], oracle["len_tokenizer"]) == (SEG, TAK, len(tok))
    assert len(oracle["cases"]) >= 80 and len(oracle["texts"]) >= 50
    for case in oracle["cases"]:
        label = f"{case['instruction']!r} N={case['num_frames']}"
        prompt = build_prompt(clean_instruction(case["instruction"]), case["num_frames"])
        assert prompt == case["prompt"], label
        ids = tokenize_prompt(prompt, tok)
        assert ids == case["input_ids"], label
        assert positions(ids, SEG) == case["seg_positions"] and positions(ids, TAK) == case["tak_positions"], label
    for entry in oracle["texts"]:
        assert tok(entry["text"]).input_ids == entry["input_ids"], repr(entry["text"])


def test_whitespace_rules_of_431(tok):
    """The two differences from transformers 5 that started this: no ``▁`` before [SEG]/[TAK], and the
    chunk after an ``<image>`` keeps its leading space as a ``▁`` of its own."""
    space = tok.convert_tokens_to_ids("\u2581")
    assert tok("is [SEG], while").input_ids[1:3] == [tok.convert_tokens_to_ids("\u2581is"), SEG]
    assert tok(" \nWhat").input_ids[:4] == [BOS, space, space, tok.convert_tokens_to_ids("<0x0A>")]
    # after a no-split token a piece not starting with a space loses the dummy prefix: "world" is no piece
    assert tok("a [SEG]world").input_ids[-2:] == [SEG, tok.unk_token_id]


@pytest.mark.parametrize("hostile", [
    "the [SEG] swan", "[TAK]", "the swan </s> and <s>", "<image> swan <video>", "[SEG][TAK]<image></s><unk>",
    "a [Seg] b [tAk] c </S> d <IMAGE>", "is it [SEG]?", "the\u2581[SEG]\u2581swan",
])
def test_reserved_text_in_the_instruction_never_becomes_special(tok, hostile):
    instruction = clean_instruction(hostile)
    assert instruction.neutralised
    assert not {BOS, EOS, SEG, TAK} & set(tok(instruction.text, add_special_tokens=False).input_ids)
    for n in (1, 3):
        ids = tokenize_prompt(build_prompt(instruction, n), tok)
        assert (ids.count(SEG), ids.count(TAK), ids.count(IMAGE_TOKEN_INDEX), ids.count(BOS), ids.count(EOS)) \
            == (n, 1, n, 1, 1)
        assert ids[0] == BOS and ids[-1] == EOS
    if "[SEG]" in hostile:  # the check above would see it: the raw text is special
        assert SEG in tok(hostile, add_special_tokens=False).input_ids


# --- damaged or missing files ---------------------------------------------------------------------
@pytest.fixture
def copy(checkpoint, tmp_path):
    """A directory with a copy of the golden checkpoint's tokenizer files."""
    for name in TOKENIZER_FILES:
        shutil.copy(checkpoint / name, tmp_path / name)
        (tmp_path / name).chmod(0o644)
    return tmp_path


def test_a_copy_loads_like_the_original(copy, tok):
    assert load_vrshq_tokenizer(copy)("the café [SEG]").input_ids == tok("the café [SEG]").input_ids


@pytest.mark.parametrize("content", [b"", b"not a sentencepiece model\x00\xff", "half"])
def test_a_corrupt_tokenizer_model_names_the_file(copy, content):
    path = copy / "tokenizer.model"
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2] if content == "half" else content)
    with pytest.raises(TokenizerFileError, match=rf"{re.escape(str(path))}: not a valid sentencepiece model"):
        load_vrshq_tokenizer(copy)


@pytest.mark.parametrize("name", ["tokenizer.model", "tokenizer_config.json"])
def test_a_missing_file_names_what_is_expected(copy, name):
    (copy / name).unlink()
    expected = rf"{re.escape(str(copy / name))} missing: expected .*SitongGong/VRS-HQ"
    with pytest.raises(FileNotFoundError, match=expected):
        load_vrshq_tokenizer(copy)


@pytest.mark.parametrize("name, text, message", [
    ("tokenizer_config.json", "{not json", "is not valid JSON"),
    ("tokenizer_config.json", "[1, 2]", "must hold a JSON object, not list"),
    ("tokenizer_config.json", '{"legacy": "no"}', "legacy must be true or false"),
    ("tokenizer_config.json", '{"tokenizer_class": "T5Tokenizer"}', "tokenizer_class 'T5Tokenizer'"),
    ("tokenizer_config.json", '{"sp_model_kwargs": {"enable_sampling": true}}', "sp_model_kwargs"),
    ("special_tokens_map.json", '{"bos_token": "<bos>"}', "has no piece '<bos>'"),
    ("tokenizer_config.json", '{"legacy": false, "added_tokens_decoder": {"3000": {"content": "[TAK]"}}}',
     "added_tokens_decoder gives \\[TAK\\] id 3000 but .* give it id 3001"),
    ("special_tokens_map.json", '{"eos_token": 5}', "eos_token must be a string or an AddedToken"),
    ("added_tokens.json", "{", "is not valid JSON"),
    ("added_tokens.json", '{"[SEG]": "3000"}', "expected an object of token -> integer id"),
    ("added_tokens.json", '{"[SEG]": 3001, "[TAK]": 3002}', "\\[SEG\\] has id 3001, but added tokens must"),
    ("added_tokens.json", '{"[SEG]": 3000, "\u2581swan": 3001}', "\u2581swan is already piece"),
])
def test_a_malformed_file_names_itself(copy, name, text, message):
    (copy / name).write_text(text)
    culprit = copy / ("tokenizer.model" if "has no piece" in message else name)
    with pytest.raises(TokenizerFileError, match=rf"{re.escape(str(culprit))}:? {message}"):
        load_vrshq_tokenizer(copy)


def test_overlapping_added_tokens_are_refused(copy):
    """4.31's trie cuts overlapping tokens in ways not reproduced here: refused, not silently different."""
    (copy / "added_tokens.json").write_text('{"[SEG]": 3000, "[TAK]": 3001, "[SEG]x": 3002}')
    with pytest.raises(TokenizerFileError, match=r"no-split tokens '\[SEG\]' and '\[SEG\]x' overlap"):
        load_vrshq_tokenizer(copy)
