"""``load_models(..., parts=...)``: a tracker loads SAM-2 only and tracks as with every model; a
reasoner loads the grounding models only and answers exactly as with every model; each part holds
less parameter memory than all of them; bad parts, and parts a profile or setting cannot have,
are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import box_of, davis_sequence

import test_vrshq_checkpoint

import vrs_node.models.profiles as profiles
from vrs_node.core.frames import FrameWindow
from vrs_node.core.pipeline import build_pipeline
from vrs_node.core.prompts import PointsPrompt
from vrs_node.core.reasoner_protocol import Request
from vrs_node.core.reasoner_service import ReasonerService, build_reasoner_grounder
from vrs_node.core.results import STATUS_TRACKING
from vrs_node.models.clip_anchor import ClipAnchorScorer
from vrs_node.models.profiles import MODEL_PARTS, get_profile, load_models
from vrs_node.models.prompt import clean_instruction

STAMP0 = 1_700_000_000_000_000_000
STEP = 33_333_333
TEXTS = ["the black swan", "the water", "the bank"]
release = test_vrshq_checkpoint.release
"""The tiny checkpoint in the released VRS-HQ layout (a fixture)."""


def load(parts: str, **options):
    return load_models(get_profile("tiny-random"), image_size=128, parts=parts, **options)


@pytest.fixture(scope="module")
def models():
    return {parts: load(parts) for parts in MODEL_PARTS}


@pytest.fixture(scope="module")
def sequence():
    frames, masks, _ = davis_sequence("blackswan", 6)
    return [f[::4, ::4].copy() for f in frames], [m[::4, ::4].copy() for m in masks]


def modules(loaded) -> list[torch.nn.Module]:
    g = loaded.grounding
    return [m for m in (loaded.sam2, *((g.mllm, g.anchor_scorer.model) if g else ())) if m is not None]


def parameter_bytes(loaded) -> int:
    return sum(p.numel() * p.element_size() for m in modules(loaded) for p in m.parameters())


def test_the_tracker_part_has_no_grounding_models_and_tracks_as_all_models_do(models, sequence):
    frames, masks = sequence
    tracker = models["tracker"]
    assert tracker.grounding is None and tracker.sam2 is not None
    assert tracker.tracker_options == models["all"].tracker_options
    runs = {}
    for parts in ("tracker", "all"):
        engine = build_pipeline(models[parts])
        assert (engine.grounder is None) == (parts == "tracker")
        engine.set_prompt(PointsPrompt(box=box_of(masks[0])))
        runs[parts] = [engine.push(image, STAMP0 + i * STEP, "cam") for i, image in enumerate(frames)]
    engine = build_pipeline(tracker)
    with pytest.raises(RuntimeError, match="no grounder"):
        engine.set_instruction("the black swan")
    assert all(r.status == STATUS_TRACKING and r.mask.any() for r in runs["tracker"])
    for got, want in zip(runs["tracker"], runs["all"]):
        assert np.array_equal(got.mask, want.mask) and got.object_score == want.object_score


def service(loaded, frames):
    s = ReasonerService(build_reasoner_grounder(loaded), 8, 4, lambda text: None, log=lambda text: None)
    for i, image in enumerate(frames):
        s.add_frame(image, STAMP0 + i * STEP, "cam")
    return s


def test_the_reasoner_part_has_no_sam2_and_answers_exactly_as_all_models_do(models, sequence):
    frames, _ = sequence
    reasoner = models["reasoner"]
    assert reasoner.sam2 is None and reasoner.transform is None and reasoner.tracker_options == {}
    assert reasoner.grounding is not None
    stamps = [STAMP0 + i * STEP for i in range(len(frames))]
    requests = [Request("c", 1, TEXTS[:2], stamps), Request("c", 2, TEXTS[2:], stamps[1:4])]
    answers = {parts: service(models[parts], frames).answer(requests) for parts in ("reasoner", "all")}
    for got, want in zip(answers["reasoner"], answers["all"]):
        assert len(got.results) == len(want.results) > 0
        for a, b in zip(got.results, want.results):
            assert (a.anchor_ns, a.dense_ns, a.sparse_ns) == (b.anchor_ns, b.dense_ns, b.sparse_ns)
            for name in ("seg", "tak", "tak_prime", "tda_weights"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_a_reasoning_only_grounder_refuses_what_needs_a_tracker(models, sequence):
    grounder = build_reasoner_grounder(models["reasoner"])
    assert grounder.tracker is None and grounder.device == torch.device("cpu")
    window = FrameWindow(4)
    for i, image in enumerate(sequence[0][:3]):
        window.append(image, STAMP0 + i * STEP, "cam")
    instruction = clean_instruction("the black swan")
    (reasoning,) = grounder.reason_many(window, [instruction], with_candidates=False)
    for call in (lambda: grounder.reason_many(window, [instruction]), lambda: grounder.ground(window, instruction),
                 lambda: grounder.ground_many(window, [instruction]), lambda: grounder.select(reasoning),
                 lambda: grounder.select_many([reasoning])):
        with pytest.raises(ValueError, match="has no tracker"):
            call()
    g = models["reasoner"].grounding
    with pytest.raises(ValueError, match="needs its device"):
        type(grounder)(g.mllm, g.tokenizer, g.anchor_scorer, None)


def test_each_part_holds_less_parameter_memory_than_all(models):
    every = parameter_bytes(models["all"])
    tracker, reasoner = parameter_bytes(models["tracker"]), parameter_bytes(models["reasoner"])
    assert 0 < tracker < every and 0 < reasoner < every
    assert tracker + reasoner == every


def test_models_move_with_parts_missing():
    for parts in ("tracker", "reasoner"):
        loaded = load(parts)
        loaded.to("meta")
        assert modules(loaded) and all(p.is_meta for m in modules(loaded) for p in m.parameters())


def test_bad_parts_and_parts_a_profile_or_setting_cannot_have_are_refused():
    with pytest.raises(ValueError, match="choose one of all, tracker, reasoner"):
        load("sam2")
    with pytest.raises(ValueError, match="has no reasoner.*parts='reasoner'.*tiny-random"):
        load_models(get_profile("hiera-t-512-random"), parts="reasoner")
    with pytest.raises(ValueError, match="parts='tracker' loads no reasoner"):
        load("tracker", reasoner_quantization="int8")
    compiled = load("reasoner", compile=True)  # SAM-2's settings are ignored without SAM-2
    assert compiled.sam2 is None and not compiled.compiled


def test_a_checkpoint_profile_loads_only_the_part_asked_for(release, monkeypatch):
    monkeypatch.setattr(profiles.ClipAnchorScorer, "from_pretrained",
                        lambda *args, device="cpu", precision="fp32", **kwargs: ClipAnchorScorer.tiny(
                            device=device, precision=precision))
    loaded = {parts: load_models(get_profile("vrshq-7b"), vrshq_checkpoint=str(release.path), image_size=256,
                                 parts=parts) for parts in MODEL_PARTS}
    assert loaded["tracker"].grounding is None and loaded["reasoner"].sam2 is None
    assert loaded["reasoner"].tracker_options == {}
    assert loaded["tracker"].tracker_options == loaded["all"].tracker_options
    assert loaded["tracker"].transform == loaded["all"].transform
    for parts, model, part in (("tracker", "sam2", None), ("reasoner", "grounding", "mllm")):
        got, want = getattr(loaded[parts], model), getattr(loaded["all"], model)
        got, want = (getattr(got, part), getattr(want, part)) if part else (got, want)
        want_state = want.state_dict()
        for name, tensor in got.state_dict().items():
            torch.testing.assert_close(tensor, want_state[name], rtol=0, atol=0, equal_nan=True, msg=name)
