"""The released VRS-HQ checkpoint loader on a tiny checkpoint written in exactly the release's layout.

The fixture writes what ``SitongGong/VRS-HQ`` ships (REFERENCE_VRSHQ_VIDEOLISA.md §3): a LLaMA
sentencepiece tokenizer trained here with [SEG]/[TAK] appended, config.json (ChatUniVi, LLaMA and mm
fields, the CLIP-224 tower as a local directory), generation_config.json, and two bfloat16 ``.bin``
shards with an index, keys named as the release names them (transcribed here from the reference's
table, independently of the loader's routing). SAM-2 is Hiera-T (the loader takes the spec).

Exact comparison: the in-memory models' parameters are first rounded to bfloat16 values, so the
bfloat16 files hold them exactly and a float32 load must reproduce the models bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from transformers import CLIPConfig, CLIPTextConfig

from vrs_node.core.tracker import StreamingTracker
from vrs_node.models.llama_tokenizer import TokenizerFileError
from vrs_node.models.mllm import ATTENTION, VrshqMLLM, clip_l14_224_config, tiny_config, vrshq_7b_config
from vrs_node.models.prompt import IMAGE_TOKEN_INDEX, build_prompt, clean_instruction, tokenize_prompt
from vrs_node.models.sam2_build import Sam2Spec, SamImageTransform, build_sam2_model
import vrs_node.models.vrshq_checkpoint as vrshq_checkpoint
from vrs_node.models.vrshq_checkpoint import load_vrshq_checkpoint
from vrs_node.models.vrshq_files import CheckpointError, mllm_config_from_json, resolve_vision_tower

PIECES = 300  # sentencepiece vocabulary; [SEG] = 300, [TAK] = 301
VOCAB = PIECES + 2
SAM2_SPEC = Sam2Spec("sam2.1-hiera-t", image_size=256, resize="pad", vrshq=True)
SHARDS = ("pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin")
INDEX = "pytorch_model.bin.index.json"
WORDS = ("the a black white swan duck dog car person man woman red blue green left right small big running "
         "walking segment video frame please find it respond with masks for each and entire separately what "
         "is in reference chat between curious human artificial intelligence assistant gives helpful detailed "
         "polite answers questions sure result of while").split()


def released_names(mllm: VrshqMLLM, sam2: torch.nn.Module, lm_head: torch.Tensor) -> dict[str, torch.Tensor]:
    """The models' tensors under the release's key names (the reference's key table)."""
    out = {"model." + k: v for k, v in mllm.llm.state_dict().items()}
    out["lm_head.weight"] = lm_head
    out.update({"model.mm_projector." + k: v for k, v in mllm.mm_projector.state_dict().items()})
    out.update({"model.text_hidden_fcs.0." + k: v for k, v in mllm.text_hidden_fcs.state_dict().items()})
    out.update({"model.vision_tower.vision_tower.vision_model." + k: v
                for k, v in mllm.vision_tower.state_dict().items()})
    out.update({"model.visual_model." + k: v for k, v in sam2.state_dict().items()})
    return out


def in_shard_two(key: str) -> bool:
    return key.startswith(("model.visual_model.", "model.text_hidden_fcs.", "lm_head."))


def write_tokenizer(directory: Path) -> None:
    """A LLaMA-style BPE sentencepiece model (byte fallback, <unk>/<s>/</s> = 0/1/2, no pad) and the
    transformers tokenizer files with [SEG]/[TAK] added as the release adds them."""
    rng = np.random.default_rng(0)
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS, 12)) for _ in range(300)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(directory / "sp"), vocab_size=PIECES,
                                   model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    (directory / "sp.model").rename(directory / "tokenizer.model")
    for leftover in ("sp.vocab", "corpus.txt"):
        (directory / leftover).unlink()
    added = {"[SEG]": PIECES, "[TAK]": PIECES + 1}

    def entry(content, special):
        return {"content": content, "lstrip": False, "normalized": not special, "rstrip": False,
                "single_word": False, "special": special}
    decoder = {str(i): entry(t, True) for i, t in enumerate(("<unk>", "<s>", "</s>"))}
    decoder.update({str(i): entry(t, False) for t, i in added.items()})
    write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": None, "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "model_max_length": 2048, "padding_side": "right", "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": decoder})
    write_json(directory / "special_tokens_map.json",
               {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"})
    write_json(directory / "added_tokens.json", added)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def write_shards(directory: Path, state: dict[str, torch.Tensor]) -> None:
    """Two torch.save shards (visual_model, text_hidden_fcs, lm_head in the second) and the index."""
    shards = [{k: v for k, v in state.items() if in_shard_two(k) == bool(i)} for i in range(2)]
    for name, shard in zip(SHARDS, shards):
        torch.save(shard, directory / name)
    write_json(directory / INDEX, {
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
        "weight_map": {k: SHARDS[in_shard_two(k)] for k in state}})


def config_json(mllm: VrshqMLLM, vision_tower: str) -> dict:
    """config.json as the merge writes it; num_key_value_heads is left out to exercise its default
    (LLaMA configs written before transformers 4.31 lack it)."""
    llm = mllm.config.llm
    return {
        "_name_or_path": "/authors/VRS-HQ-7B", "architectures": ["VrshqForCausalLM"], "model_type": "ChatUniVi",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu",
        "hidden_size": llm.hidden_size, "intermediate_size": llm.intermediate_size,
        "num_hidden_layers": llm.num_hidden_layers, "num_attention_heads": llm.num_attention_heads,
        "rms_norm_eps": llm.rms_norm_eps, "max_position_embeddings": llm.max_position_embeddings,
        "vocab_size": llm.vocab_size, "initializer_range": 0.02, "pretraining_tp": 1, "rope_scaling": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.31.0",
        "use_cache": False, "train_mask_decoder": True, "out_dim": mllm.config.out_dim,
        "mm_hidden_size": mllm.config.vision.hidden_size, "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "vision_tower": vision_tower, "mm_vision_tower": vision_tower,
        "config": {"use_cluster": True, "spatial_cluster_rate0": 64, "spatial_cluster_rate1": 32,
                   "spatial_cluster_rate2": 16, "temporal_cluster_rate": 0.0625}}


def perturbed_bf16_exact(model: torch.nn.Module, seed: int) -> None:
    """Add noise to every parameter (no two equal, nothing left at its init), then round every
    floating-point state tensor (persistent buffers too) to bfloat16 values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.to(torch.bfloat16))


@dataclass(frozen=True)
class Release:
    path: Path
    clip_dir: Path
    mllm: VrshqMLLM
    sam2: torch.nn.Module
    released: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("vrshq")
    path, clip_dir = root / "VRS-HQ", root / "clip-vit-tiny-patch14"
    path.mkdir()
    torch.manual_seed(0)
    mllm = VrshqMLLM(tiny_config(VOCAB)).eval()
    perturbed_bf16_exact(mllm, 1)
    mllm.config.vision.save_pretrained(clip_dir)
    sam2 = build_sam2_model(SAM2_SPEC, seed=0)
    perturbed_bf16_exact(sam2, 2)
    lm_head = torch.randn(VOCAB, mllm.config.llm.hidden_size, generator=torch.Generator().manual_seed(3))
    released = released_names(mllm, sam2, lm_head)
    write_tokenizer(path)
    write_json(path / "config.json", config_json(mllm, str(clip_dir)))
    write_json(path / "generation_config.json", {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                                                 "pad_token_id": 0, "transformers_version": "4.31.0"})
    write_shards(path, {k: v.to(torch.bfloat16) for k, v in released.items()})
    yield Release(path, clip_dir, mllm, sam2, released)
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def loaded(release):
    return load_vrshq_checkpoint(release.path, device="cpu", sam2_spec=SAM2_SPEC)


@pytest.fixture
def scratch(tmp_path):
    """tmp_path, deleted afterwards (the variants hold copies of tens of MB)."""
    yield tmp_path
    shutil.rmtree(tmp_path)


def variant(release: Release, directory: Path, files: dict) -> Path:
    """A copy of the release in ``directory``: a file named in ``files`` is written by its function
    (called with its path) or left out (None); every other file is a symlink to the release's."""
    directory.mkdir()
    for source in release.path.iterdir():
        if source.name not in files:
            (directory / source.name).symlink_to(source)
        elif files[source.name] is not None:
            files[source.name](directory / source.name)
    return directory


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(count)]


def grounding(mllm: VrshqMLLM, tokenizer, seg_id: int, tak_id: int, images: list[np.ndarray]):
    ids = tokenize_prompt(build_prompt(clean_instruction("the black swan"), len(images)), tokenizer)
    return mllm(ids, mllm.frame_tokens(images), seg_id, tak_id)


def test_every_key_is_consumed_and_the_models_equal_the_written_ones(release, loaded):
    index = json.loads((release.path / INDEX).read_text())["weight_map"]
    assert loaded.consumed_keys == len(index) == len(release.released)
    assert loaded.vision_weights == "checkpoint"
    assert loaded.special_ids == (PIECES, PIECES + 1)
    assert loaded.config_json["model_type"] == "ChatUniVi"
    assert loaded.mllm.config.llm.num_key_value_heads == release.mllm.config.llm.num_attention_heads

    want = release.mllm.state_dict()
    got = loaded.mllm.state_dict()
    assert got.keys() == want.keys()
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k], want[k]) for k in want)
    want_buffers, got_buffers = dict(release.mllm.named_buffers()), dict(loaded.mllm.named_buffers())
    assert got_buffers.keys() == want_buffers.keys()
    for name, buffer in want_buffers.items():
        assert got_buffers[name].dtype == buffer.dtype and torch.equal(got_buffers[name], buffer), name
    assert not loaded.mllm.training and not any(p.requires_grad for p in loaded.mllm.parameters())

    sam2_want, sam2_got = release.sam2.state_dict(), loaded.sam2_model.state_dict()
    assert sam2_got.keys() == sam2_want.keys()
    assert all(torch.equal(sam2_got[k], sam2_want[k]) for k in sam2_want)

    images = frames(3)
    expected = grounding(release.mllm, loaded.tokenizer, PIECES, PIECES + 1, images)
    result = grounding(loaded.mllm, loaded.tokenizer, *loaded.special_ids, images)
    assert result.seg.shape == (3, 256)
    assert torch.equal(result.seg, expected.seg) and torch.equal(result.tak, expected.tak)

    transform = SamImageTransform(SAM2_SPEC.image_size, SAM2_SPEC.resize)
    decoded = []
    for model in (release.sam2, loaded.sam2_model):
        tracker = StreamingTracker(model, transform)
        decoded.append(tracker.decode_token(tracker.encode(images[0]), result.tak))
    assert torch.equal(decoded[0].low_res_logits, decoded[1].low_res_logits)
    assert decoded[0].object_score == decoded[1].object_score


def test_a_part_loads_without_the_other_parts_files_or_model(release, loaded, scratch, monkeypatch):
    """``parts="tracker"``: SAM-2 alone, from a copy without the tokenizer's files whose config.json
    names a vision tower that does not exist (a robot whose reasoner runs elsewhere);
    ``parts="reasoner"``: the MLLM alone, SAM-2 never built."""
    no_tower = config_json(release.mllm, str(scratch / "no-such-tower"))
    path = variant(release, scratch / "sam2-only", {
        "config.json": lambda p: write_json(p, no_tower), "tokenizer.model": None, "tokenizer_config.json": None,
        "special_tokens_map.json": None, "added_tokens.json": None})
    tracker = load_vrshq_checkpoint(path, sam2_spec=SAM2_SPEC, parts="tracker")
    assert (tracker.mllm, tracker.tokenizer, tracker.special_ids, tracker.vision_weights) == (None, None, None, "")
    assert (tracker.consumed_keys, tracker.sam2_spec) == (loaded.consumed_keys, loaded.sam2_spec)
    got = tracker.sam2_model.state_dict()
    for name, tensor in loaded.sam2_model.state_dict().items():  # NaN: the reference's never-loaded gammas
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, equal_nan=True, msg=name)
    assert not tracker.sam2_model.training
    with pytest.raises(FileNotFoundError, match="no CLIP-224 vision tower"):
        load_vrshq_checkpoint(path, sam2_spec=SAM2_SPEC)  # every part needs the tower

    monkeypatch.setattr(vrshq_checkpoint, "build_sam2_model", lambda *args, **kwargs: pytest.fail("SAM-2 built"))
    reasoner = load_vrshq_checkpoint(release.path, sam2_spec=SAM2_SPEC, parts="reasoner")
    assert reasoner.sam2_model is None and reasoner.special_ids == loaded.special_ids
    got = reasoner.mllm.state_dict()
    assert all(torch.equal(got[k], v) for k, v in loaded.mllm.state_dict().items())
    with pytest.raises(ValueError, match="choose one of all, tracker, reasoner"):
        load_vrshq_checkpoint(release.path, parts="sam2")


def test_the_tokenizer_gives_the_added_ids_and_keeps_instructions_inert(release, loaded):
    tok = loaded.tokenizer
    added = json.loads((release.path / "added_tokens.json").read_text())
    assert loaded.special_ids == (added["[SEG]"], added["[TAK]"])
    sp = spm.SentencePieceProcessor(model_file=str(release.path / "tokenizer.model"))
    text = "Sure, the segmentation result of each frame is ready for the black swan."
    assert tok(text, add_special_tokens=False).input_ids == sp.encode(text)

    def counts(instruction: str, n: int) -> tuple[int, ...]:
        ids = tokenize_prompt(build_prompt(clean_instruction(instruction), n), tok)
        return (ids.count(loaded.special_ids.seg), ids.count(loaded.special_ids.tak), ids.count(IMAGE_TOKEN_INDEX),
                ids.count(tok.bos_token_id), ids.count(tok.eos_token_id), int(ids[0] == tok.bos_token_id),
                int(ids[-1] == tok.eos_token_id))
    assert counts("the black swan", 4) == (4, 1, 4, 1, 1, 1, 1)
    hostile = "the [SEG] swan <image> </s> [tak] <s> <unk> <video>"
    assert clean_instruction(hostile).neutralised
    assert counts(hostile, 2) == (2, 1, 2, 1, 1, 1, 1)
    raw_ids = tok(hostile, add_special_tokens=False).input_ids
    assert raw_ids.count(loaded.special_ids.seg) == 1, "the raw text is special"


def test_both_towers_get_sdpa_attention_explicitly(release, loaded):
    """The loader sets ``attn_implementation`` (mllm.ATTENTION) on the LLaMA and CLIP configs it builds."""
    assert ATTENTION == "sdpa"
    assert loaded.mllm.llm.config._attn_implementation == ATTENTION
    assert loaded.mllm.vision_tower.config._attn_implementation == ATTENTION
    config = mllm_config_from_json(loaded.config_json, release.clip_dir)
    assert config.llm._attn_implementation == config.vision._attn_implementation == ATTENTION


def test_bfloat16_load_equals_a_normally_built_bfloat16_model(release):
    """dtype=bfloat16: parameters bf16, rotary inv_freq float32 -- as transformers builds a bf16 model."""
    ckpt = load_vrshq_checkpoint(release.path, dtype=torch.bfloat16, sam2_spec=SAM2_SPEC)
    assert {p.dtype for p in ckpt.mllm.parameters()} == {torch.bfloat16}
    assert ckpt.mllm.llm.rotary_emb.inv_freq.dtype == torch.float32
    assert {p.dtype for p in ckpt.sam2_model.parameters()} == {torch.float32}
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        reference = VrshqMLLM(release.mllm.config).eval()
    finally:
        torch.set_default_dtype(default)
    reference.load_state_dict(release.mllm.state_dict())
    images = frames(2, seed=1)
    want = grounding(reference, ckpt.tokenizer, *ckpt.special_ids, images)
    got = grounding(ckpt.mllm, ckpt.tokenizer, *ckpt.special_ids, images)
    assert torch.equal(got.seg, want.seg) and torch.equal(got.tak, want.tak)


def test_single_file_without_clip_weights_takes_them_from_the_vision_tower_dir(release, scratch):
    """One pytorch_model.bin without vision-tower keys but with the buffers older transformers saved;
    config.json names the authors' path and the ``vision_tower`` argument overrides it (a directory
    with the CLIP weights; one with only a config is refused)."""
    clip_weights = scratch / "clip"
    release.mllm.vision_tower.save_pretrained(clip_weights)
    state = {k: v.to(torch.bfloat16) for k, v in release.released.items() if ".vision_tower." not in k}
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = release.mllm.llm.rotary_emb.inv_freq
    state["model.vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(257)[None]

    authors = config_json(release.mllm, "/mnt/authors/openai/clip-vit-large-patch14")
    path = variant(release, scratch / "single", {INDEX: None, SHARDS[0]: None, SHARDS[1]: None,
                                                  "config.json": lambda p: write_json(p, authors)})
    torch.save(state, path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"config.json's mm_vision_tower = '/mnt/authors/openai/clip-vit-"
                                                r"large-patch14': no CLIP-224 vision tower .* at /mnt/authors/"):
        load_vrshq_checkpoint(path, sam2_spec=SAM2_SPEC)  # the authors' own path
    with pytest.raises(FileNotFoundError, match="no vision-tower weights and none were found locally"):
        load_vrshq_checkpoint(path, sam2_spec=SAM2_SPEC, vision_tower=release.clip_dir)  # config only
    ckpt = load_vrshq_checkpoint(path, sam2_spec=SAM2_SPEC, vision_tower=clip_weights)
    assert ckpt.vision_weights == str(clip_weights)
    assert ckpt.consumed_keys == len(state)
    want = release.mllm.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in ckpt.mllm.state_dict().items())
    assert torch.equal(ckpt.mllm.vision_tower.embeddings.position_ids, torch.arange(257)[None])


def test_config_json_of_the_7b_release_gives_the_7b_sizes(tmp_path):
    seven_b = vrshq_7b_config()
    llm = seven_b.llm
    config = {"model_type": "ChatUniVi", "architectures": ["VrshqForCausalLM"], "hidden_size": 4096,
              "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
              "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "vocab_size": 32002, "mm_hidden_size": 1024,
              "mm_vision_select_layer": -2, "out_dim": 256, "vision_tower": "openai/clip-vit-large-patch14"}
    clip_l = tmp_path / "clip-l"
    clip_l14_224_config().save_pretrained(clip_l)
    got = mllm_config_from_json(config, clip_l)
    assert got.vision.to_dict() == clip_l14_224_config().to_dict()
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "vocab_size",
                  "hidden_act", "rope_parameters"):
        assert getattr(got.llm, field) == getattr(llm, field), field
    assert (got.out_dim, got.vision_select_layer) == (seven_b.out_dim, seven_b.vision_select_layer)
    assert mllm_config_from_json(config | {"rope_theta": 5e5}, clip_l).llm.rope_parameters["rope_theta"] == 5e5
    assert mllm_config_from_json(config | {"num_key_value_heads": 8}, clip_l).llm.num_key_value_heads == 8

    full_clip = tmp_path / "clip-full"  # a full CLIPModel directory, as openai/clip-vit-large-patch14 is
    vision = tiny_config(10).vision
    CLIPConfig(text_config=CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2).to_dict(),
               vision_config=vision.to_dict()).save_pretrained(full_clip)
    got = mllm_config_from_json(config | {"mm_hidden_size": 32}, full_clip).vision
    assert (got.hidden_size, got.num_hidden_layers, got.image_size, got.patch_size) == (32, 2, 224, 14)
    with pytest.raises(CheckpointError, match="mm_hidden_size 1024 != the vision tower's hidden size 32"):
        mllm_config_from_json(config, full_clip)

    with pytest.raises(CheckpointError, match="model_type"):
        mllm_config_from_json(config | {"model_type": "llava_phi"}, clip_l)
    with pytest.raises(CheckpointError, match="intermediate_size"):
        mllm_config_from_json({k: v for k, v in config.items() if k != "intermediate_size"}, clip_l)
    with pytest.raises(CheckpointError, match="rope_scaling"):
        mllm_config_from_json(config | {"rope_scaling": {"type": "linear", "factor": 2.0}}, clip_l)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"hidden_size": ')
    with pytest.raises(CheckpointError, match=rf"{broken / 'config.json'} is not valid JSON"):
        mllm_config_from_json(config, broken)


def test_the_vision_tower_is_found_relative_absolute_or_in_the_hub_cache(tmp_path, monkeypatch):
    """config.json's mm_vision_tower (else vision_tower): relative to the checkpoint, absolute, or a
    hub id in the local Hugging Face cache; the argument overrides it; a miss names the field and
    every place searched."""
    import huggingface_hub.constants

    checkpoint = tmp_path / "VRS-HQ"
    (checkpoint / "clip-rel").mkdir(parents=True)
    (checkpoint / "clip-rel" / "config.json").write_text("{}")
    absolute = tmp_path / "clip-abs"
    absolute.mkdir()
    (absolute / "config.json").write_text("{}")
    cache = tmp_path / "hub"
    snapshot = cache / "models--openai--clip-vit-large-patch14" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--openai--clip-vit-large-patch14" / "refs").mkdir()
    (cache / "models--openai--clip-vit-large-patch14" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    assert resolve_vision_tower({"vision_tower": "clip-rel"}, checkpoint) == checkpoint / "clip-rel"
    assert resolve_vision_tower({"mm_vision_tower": str(absolute), "vision_tower": "clip-rel"}, checkpoint) == absolute
    assert resolve_vision_tower({"vision_tower": "openai/clip-vit-large-patch14"}, checkpoint) == snapshot
    assert resolve_vision_tower({"vision_tower": "/nowhere"}, checkpoint, vision_tower=absolute) == absolute
    with pytest.raises(FileNotFoundError, match=rf"config.json's vision_tower = 'openai/clip-vit-base-patch16': .* at "
                                                rf"{checkpoint}/openai/clip-vit-base-patch16 or the Hugging Face "
                                                rf"cache {cache} for openai/clip-vit-base-patch16"):
        resolve_vision_tower({"vision_tower": "openai/clip-vit-base-patch16"}, checkpoint)
    with pytest.raises(FileNotFoundError, match=r"the vision_tower argument = '/nowhere/clip'"):
        resolve_vision_tower({"vision_tower": "clip-rel"}, checkpoint, vision_tower="/nowhere/clip")
    with pytest.raises(CheckpointError, match="names no vision tower"):
        resolve_vision_tower({"vision_tower": None}, checkpoint)


def test_the_clip_weights_are_reloaded_from_the_tower_directory_as_the_reference_does(release, scratch):
    """A tower directory with weights wins over the checkpoint's copy (VRS-HQ's
    ``initialize_vision_modules`` reloads CLIP from it)."""
    other = VrshqMLLM(release.mllm.config).eval()
    perturbed_bf16_exact(other, 7)
    tower = scratch / "clip-with-weights"
    other.vision_tower.save_pretrained(tower)
    ckpt = load_vrshq_checkpoint(release.path, sam2_spec=SAM2_SPEC, vision_tower=tower)
    assert ckpt.vision_weights == str(tower)
    got = ckpt.mllm.vision_tower.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in other.vision_tower.state_dict().items())
    assert not torch.equal(got["embeddings.patch_embedding.weight"],
                           release.mllm.vision_tower.state_dict()["embeddings.patch_embedding.weight"])


@pytest.mark.parametrize("shard", [0, 1])
def test_gamma_keys_load_only_from_the_reloaded_shard_as_transformers_4_31_does(release, scratch, shard):
    """4.31 renames ``*gamma`` keys, so only shard 2 (reloaded with strict=False) sets them; elsewhere
    they stay uninitialised (NaN here), unless reference_quirks=False."""
    gammas = [k for k in release.released if k.startswith("model.visual_model.") and "gamma" in k]
    assert gammas, "the SAM-2 fixture has CXBlock layer scales"
    weight_map = {k: SHARDS[in_shard_two(k)] for k in release.released} | dict.fromkeys(gammas, SHARDS[shard])
    state = {k: v.to(torch.bfloat16) for k, v in release.released.items()}

    def write(index: int):
        return lambda path: torch.save({k: state[k] for k, name in weight_map.items() if name == SHARDS[index]}, path)
    files = {SHARDS[0]: write(0), SHARDS[1]: write(1),
             INDEX: lambda path: write_json(path, {"metadata": {}, "weight_map": weight_map})}
    path = variant(release, scratch / "ckpt", files)
    ckpt = load_vrshq_checkpoint(path, sam2_spec=SAM2_SPEC)
    loaded = load_vrshq_checkpoint(path, sam2_spec=SAM2_SPEC, reference_quirks=False).sam2_model.state_dict()
    for key in gammas:
        name = key[len("model.visual_model."):]
        got = ckpt.sam2_model.state_dict()[name]
        assert torch.equal(got, release.released[key]) if shard == 1 else got.isnan().all(), key
        assert torch.equal(loaded[name], release.released[key]), key


def test_the_sam2_variant_is_recognised_from_the_weights(release):
    ckpt = load_vrshq_checkpoint(release.path)
    assert ckpt.sam2_variant == "sam2.1-hiera-t-1024"
    assert (ckpt.sam2_spec.arch, ckpt.sam2_spec.image_size, ckpt.sam2_spec.resize) == ("sam2.1-hiera-t", 1024, "pad")
    assert load_vrshq_checkpoint(release.path, sam2_image_size=256).sam2_model.image_size == 256


def test_a_malformed_config_json_is_named(release, scratch):
    path = variant(release, scratch / "ckpt", {"config.json": lambda p: p.write_text("{not json")})
    with pytest.raises(CheckpointError, match=rf"{path / 'config.json'} is not valid JSON"):
        load_vrshq_checkpoint(path, sam2_spec=SAM2_SPEC)


def rewritten(release: Release, shard: int, edit) -> dict:
    """Writers of shard ``shard`` (0 or 1) holding ``edit(its released state)`` and of an index that
    agrees with it."""
    state = edit({k: v.to(torch.bfloat16) for k, v in release.released.items() if in_shard_two(k) == bool(shard)})

    def index(path):
        weight_map = {k: SHARDS[1 - shard] for k in release.released if in_shard_two(k) != bool(shard)}
        weight_map.update({k: SHARDS[shard] for k in state})
        write_json(path, {"metadata": {"total_size": 0}, "weight_map": weight_map})
    return {SHARDS[shard]: lambda path: torch.save(state, path), INDEX: index}


def test_an_unknown_key_is_an_error(release, scratch):
    files = rewritten(release, 0, lambda s: s | {"model.ctm0.weight": torch.ones(2),
                                                 "model.layers.0.lora_A": torch.ones(2)})
    with pytest.raises(CheckpointError, match=r"2 checkpoint keys have no place in VRS-HQ: model\.ctm0\.weight, "
                                              r"model\.layers\.0\.lora_A"):
        load_vrshq_checkpoint(variant(release, scratch / "ckpt", files), sam2_spec=SAM2_SPEC)


@pytest.mark.parametrize("shard, key, match", [
    (0, "model.layers.1.mlp.down_proj.weight", r"lacks 1 mllm parameters: llm\.layers\.1\.mlp\.down_proj\.weight"),
    (0, "model.mm_projector.bias", r"lacks 1 mllm parameters: mm_projector\.bias"),
    (1, "model.text_hidden_fcs.0.2.bias", r"lacks 1 mllm parameters: text_hidden_fcs\.2\.bias"),
    (1, "model.visual_model.sam_mask_decoder.iou_token.weight",
     r"lacks 1 sam2 parameters: sam_mask_decoder\.iou_token\.weight"),
])
def test_a_missing_parameter_is_an_error(release, scratch, shard, key, match):
    assert key in release.released
    files = rewritten(release, shard, lambda s: {k: v for k, v in s.items() if k != key})
    with pytest.raises(CheckpointError, match=match):
        load_vrshq_checkpoint(variant(release, scratch / "ckpt", files), sam2_spec=SAM2_SPEC)


def test_a_shard_must_hold_what_the_index_lists(release, scratch):
    without_norm = rewritten(release, 0, lambda s: {k: v for k, v in s.items() if k != "model.norm.weight"})
    files = {SHARDS[0]: without_norm[SHARDS[0]]}  # the index still lists model.norm.weight
    with pytest.raises(CheckpointError, match=rf"{SHARDS[0]} does not hold the keys its index lists: "
                                              r"extra none; absent model\.norm\.weight"):
        load_vrshq_checkpoint(variant(release, scratch / "ckpt", files), sam2_spec=SAM2_SPEC)


def test_a_truncated_or_missing_shard_is_named(release, scratch):
    def truncated(path):
        data = (release.path / SHARDS[1]).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"cannot read .*{SHARDS[1]}: truncated"):
        load_vrshq_checkpoint(variant(release, scratch / "truncated", {SHARDS[1]: truncated}), sam2_spec=SAM2_SPEC)
    with pytest.raises(FileNotFoundError, match=rf"weights file missing: .*{SHARDS[1]}"):
        load_vrshq_checkpoint(variant(release, scratch / "missing", {SHARDS[1]: None}), sam2_spec=SAM2_SPEC)


class Payload:
    """A pickled object whose unpickling would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Plain:
    """An arbitrary class instance."""


@pytest.mark.parametrize("payload", ["reduce", "instance"])
def test_a_pickle_with_objects_is_refused_without_running_it(release, scratch, payload):
    marker = scratch / "ran"
    obj = Payload(marker) if payload == "reduce" else Plain()
    files = {SHARDS[0]: lambda path: torch.save({"model.norm.weight": obj}, path)}
    with pytest.raises(CheckpointError, match=rf"refused to load .*{SHARDS[0]}: not a weights-only pickle"):
        load_vrshq_checkpoint(variant(release, scratch / "ckpt", files), sam2_spec=SAM2_SPEC)
    assert not marker.exists()


def test_token_ids_must_agree_with_added_tokens_json(release, scratch):
    """added_tokens.json gives the ids (as transformers 4.31 read it); tokenizer_config.json's
    added_tokens_decoder must not contradict it, and [SEG]/[TAK] must be in it."""
    files = {"added_tokens.json": lambda p: write_json(p, {"[SEG]": PIECES + 1, "[TAK]": PIECES})}
    with pytest.raises(TokenizerFileError, match=r"tokenizer_config.json: added_tokens_decoder gives \[SEG\] id 300 "
                                                 r"but tokenizer.model and added_tokens.json give it id 301"):
        load_vrshq_checkpoint(variant(release, scratch / "swapped", files), sam2_spec=SAM2_SPEC)
    files = {"added_tokens.json": lambda p: write_json(p, {"[SEG]": PIECES})}
    with pytest.raises(CheckpointError, match=r"\[TAK\] id 301 but added_tokens.json says None"):
        load_vrshq_checkpoint(variant(release, scratch / "no_tak", files), sam2_spec=SAM2_SPEC)


def test_no_directory_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected a directory with config.json.*tokenizer.model.*"
                                                r"added_tokens.json \(download Hugging Face SitongGong/VRS-HQ\)"):
        load_vrshq_checkpoint(tmp_path / "VRS-HQ")


def test_the_vrshq_7b_profile_needs_the_checkpoint_directory(tmp_path):
    from vrs_node.models.profiles import get_profile, load_models

    with pytest.raises(ValueError, match="needs vrshq_checkpoint"):
        load_models(get_profile("vrshq-7b"))
    with pytest.raises(FileNotFoundError, match="SitongGong/VRS-HQ"):
        load_models(get_profile("vrshq-7b"), vrshq_checkpoint=str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="does not load a VRS-HQ checkpoint"):
        load_models(get_profile("tiny-random"), vrshq_checkpoint=str(tmp_path))
