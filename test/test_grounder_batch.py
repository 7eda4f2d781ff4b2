"""Batched grounding (issue 14) on tiny random models: a query for k instructions gives each the
keyframe and the SEG/TAK/TAK' (<= 1e-4) of its own query, reads every per-frame input once for
the whole batch and runs one batched prefill; prompts over the same frames share their prefix;
TKS decodes each dense frame once for the batch (one mask-decoder call with every TAK' that has it).

Choice stated here: an empty batch is not an error; it returns [] without reading the window."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from conftest import davis_sequence, make_grounder, make_tracker
from test_grounder import Counting, filled_window
from vrs_node.core.frames import CLIP_KEY, MLLM_KEY, SAM2_KEY, FrameWindow
from vrs_node.core.token_decoding import SCORE_BATCH, score_chunks
from vrs_node.models.mllm import PrefillInput
from vrs_node.models.prompt import IMAGE_TOKEN_INDEX, clean_instruction

TOL = dict(atol=1e-4, rtol=0)
TEXTS = ["the black swan", "what is swimming on the dark water of the lake?", "x",
         "the bird with the red beak that swims to the right"]


@pytest.fixture(scope="module")
def frames():
    return davis_sequence("blackswan", 14)[0]


@pytest.fixture(scope="module")
def setup(frames):
    tracker = make_tracker(128)
    return make_grounder(tracker, max_dense_frames=5, sparse_frames=3), filled_window(tracker, frames)


def instructions(texts=TEXTS):
    return [clean_instruction(t) for t in texts]


def assert_same_query(batched, alone):
    """The proof of issue 14: same frames and keyframe, SEG/TAK/TAK' within 1e-4."""
    assert (batched.anchor, batched.dense_frames, batched.sparse_frames, batched.keyframe) == \
        (alone.anchor, alone.dense_frames, alone.sparse_frames, alone.keyframe)
    assert batched.input_ids == alone.input_ids and batched.tokens.rows == alone.tokens.rows
    torch.testing.assert_close(batched.tokens.seg, alone.tokens.seg, **TOL)
    torch.testing.assert_close(batched.tokens.tak, alone.tokens.tak, **TOL)
    torch.testing.assert_close(batched.token, alone.token, **TOL)
    torch.testing.assert_close(torch.tensor(batched.tks_scores), torch.tensor(alone.tks_scores), **TOL)
    torch.testing.assert_close(torch.tensor(batched.tks_object_scores), torch.tensor(alone.tks_object_scores), **TOL)
    torch.testing.assert_close(batched.keyframe_result.low_res_logits, alone.keyframe_result.low_res_logits,
                               atol=1e-3, rtol=0)


def test_a_batch_equals_separate_queries(setup):
    grounder, window = setup
    batch = instructions()
    assert len({len(g) for g in (grounder.ground(window, i).input_ids for i in batch)}) == len(batch)  # padding matters
    results = grounder.ground_many(window, batch)
    assert [g.instruction for g in results] == batch
    for batched, instruction in zip(results, batch):
        assert_same_query(batched, grounder.ground(window, instruction))


def test_instructions_over_different_and_shared_lattices(setup):
    """Anchors 0, 1, 0, 5 in a 14-frame window with 5 dense frames: lattices {0, 3, ..}, {1, 4, ..},
    {2, 5, ..}; the first and the third prompt share their frames, the others stand alone."""
    grounder, window = setup
    batch, anchors = instructions(), [0, 1, 0, 5]
    reasoning = grounder.reason_many(window, batch, anchors)
    assert len({tuple(f.index for f in r.dense) for r in reasoning}) == 3
    for selected, instruction, anchor in zip(grounder.select_many(reasoning), batch, anchors):
        assert_same_query(selected, grounder.ground(window, instruction, anchor_frame=anchor))


def decoder_calls(tracker):
    """Record each mask-decoder call's keyword arguments; returns (calls, hook handle)."""
    calls = []
    handle = tracker.model.sam_mask_decoder.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(kwargs), with_kwargs=True)
    return calls, handle


def test_tks_scores_each_dense_frame_once_and_decodes_masks_only_on_keyframes(setup, monkeypatch):
    """Lattices {0, 3, ..}, {1, 4, ..}, {0, 3, ..}, {2, 5, ..}: one grouped object-score call, each
    distinct dense frame once with the TAK' of each instruction whose lattice holds it, in lattice
    order, in two-way-transformer calls of at most SCORE_BATCH tokens; then one grouped mask decode
    (the only mask-decoder call): each distinct keyframe once, with its instructions' TAK'."""
    grounder, window = setup
    reasoning = grounder.reason_many(window, instructions(), [0, 1, 0, 5])
    tracker, scored, decoded, transformer_batches = grounder.tracker, [], [], []
    real_score, real_decode = tracker.grouped_object_scores, tracker.grouped_decode_tokens
    monkeypatch.setattr(tracker, "grouped_object_scores", lambda groups: scored.append(groups) or real_score(groups))
    monkeypatch.setattr(tracker, "grouped_decode_tokens", lambda groups: decoded.append(groups) or real_decode(groups))
    calls, handle = decoder_calls(tracker)
    batches = tracker.model.sam_mask_decoder.transformer.register_forward_hook(
        lambda mod, args, out: transformer_batches.append(args[0].shape[0]))
    try:
        selected = grounder.select_many(reasoning)
    finally:
        handle.remove()
        batches.remove()
    holders = {}
    for r in reasoning:
        for frame in r.dense:
            holders.setdefault(frame.index, []).append(r.token)
    (groups,) = scored
    assert len(groups) == len(holders) < sum(len(r.dense) for r in reasoning)
    for (_, tokens), expected in zip(groups, holders.values()):
        assert torch.equal(torch.stack(tokens), torch.stack(expected))
    scoring = transformer_batches[:-1]  # then the keyframes' decode, one transformer call
    assert sum(scoring) == sum(len(t) for t in holders.values()) and max(scoring) <= SCORE_BATCH
    assert len(scoring) == len(score_chunks([len(t) for t in holders.values()])) < len(holders)
    keyframes = {}
    for s, r in zip(selected, reasoning):
        keyframes.setdefault(id(s.keyframe_features), []).append(r.token)
    (groups,) = decoded
    (kwargs,) = calls
    assert 1 < len(groups) == len(keyframes) <= len(reasoning), "several keyframes, each decoded once"
    for feats, tokens in groups:
        assert torch.equal(torch.stack(tokens), torch.stack(keyframes[id(feats)]))
    all_tokens = torch.stack([t for _, tokens in groups for t in tokens])
    assert torch.equal(kwargs["sparse_prompt_embeddings"][:, 2], all_tokens)


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
def test_token_object_scores_are_the_decodes_object_scores_bit_for_bit(setup, autocast_dtype):
    """The object scores alone (no mask decoded) equal decode_tokens' exactly, batched or not,
    in fp32 and under bf16 autocast; the mask decoder's forward is never called for them."""
    grounder, window = setup
    tracker = grounder.tracker
    feats = window.get_feature(window.snapshot()[2].index, SAM2_KEY)
    tokens = [torch.randn(256, generator=torch.Generator().manual_seed(s)) * (1 + s) for s in range(4)]
    saved, tracker.autocast_dtype = tracker.autocast_dtype, autocast_dtype
    calls, handle = decoder_calls(tracker)
    try:
        scores = tracker.token_object_scores(feats, tokens)
        single = tracker.token_object_scores(feats, tokens[1:2])
        assert not calls and tracker.token_object_scores(feats, []) == []
        assert scores == [r.object_score for r in tracker.decode_tokens(feats, tokens)]
        assert single == [tracker.decode_token(feats, tokens[1]).object_score]
    finally:
        handle.remove()
        tracker.autocast_dtype = saved
    assert len(set(scores)) >= len(tokens) - (autocast_dtype is not None), "the tokens must score differently"


def test_decode_tokens_equals_decode_token_per_token(setup):
    """Several tokens on one frame in one call: each result is its own decode_token (<= 1e-5), the
    frame's features expanded to the batch (stride 0), not copied; no tokens: no call."""
    grounder, window = setup
    tracker = grounder.tracker
    feats = window.get_feature(window.snapshot()[3].index, SAM2_KEY)
    tokens = [torch.randn(256, generator=torch.Generator().manual_seed(s)) * (1 + s) for s in range(5)]
    calls, handle = decoder_calls(tracker)
    try:
        batched = tracker.decode_tokens(feats, tokens)
        assert tracker.decode_tokens(feats, []) == []
    finally:
        handle.remove()
    assert len(calls) == 1 and calls[0]["image_embeddings"].shape[0] == len(tokens)
    assert calls[0]["image_embeddings"].stride(0) == 0
    assert all(x.stride(0) == 0 for x in calls[0]["high_res_features"])
    alone = [tracker.decode_token(feats, t) for t in tokens]
    assert len({r.object_score for r in alone}) == len(tokens), "each token must decode differently"
    for b, a in zip(batched, alone):
        assert b.low_res_logits.shape == a.low_res_logits.shape == (1, 1, 32, 32)
        torch.testing.assert_close(b.low_res_logits, a.low_res_logits, atol=1e-5, rtol=0)
        assert abs(b.object_score - a.object_score) <= 1e-5


def test_grouped_decodes_are_each_frames_own_decode(setup):
    """Tokens on several frames decoded together (calls of at most SCORE_BATCH tokens, frames kept
    whole): each result is its frame's own decode_tokens (<= 1e-5); a group alone is bit for bit."""
    grounder, window = setup
    tracker = grounder.tracker
    frames = [window.get_feature(f.index, SAM2_KEY) for f in window.snapshot()[:4]]
    counts = [2, 3, 0, 12]  # runs [0, 1] and [3] (5 + 12 > SCORE_BATCH), a frame without tokens
    seeds = iter(range(100))
    groups = [(f, [torch.randn(256, generator=torch.Generator().manual_seed(next(seeds))) for _ in range(n)])
              for f, n in zip(frames, counts)]
    calls, handle = decoder_calls(tracker)
    try:
        grouped = tracker.grouped_decode_tokens(groups)
    finally:
        handle.remove()
    assert [len(c["image_embeddings"]) for c in calls] == [5, 12]
    assert [len(r) for r in grouped] == counts
    for (feats, tokens), results in zip(groups, grouped):
        for got, alone in zip(results, tracker.decode_tokens(feats, tokens)):
            torch.testing.assert_close(got.low_res_logits, alone.low_res_logits, atol=1e-5, rtol=0)
            assert abs(got.object_score - alone.object_score) <= 1e-5 and got.image_hw == alone.image_hw
    assert not torch.equal(grouped[0][0].low_res_logits, grouped[1][0].low_res_logits)
    (one,) = tracker.grouped_decode_tokens(groups[1:2])
    assert all(torch.equal(a.low_res_logits, b.low_res_logits) and a.object_score == b.object_score
               for a, b in zip(one, tracker.decode_tokens(*groups[1])))


def test_a_batch_of_one_is_ground_exactly(setup):
    grounder, window = setup
    instruction = clean_instruction("the black swan")
    (batched,), alone = grounder.ground_many(window, [instruction]), grounder.ground(window, instruction)
    assert batched.keyframe == alone.keyframe and batched.tks_scores == alone.tks_scores
    for a, b in ((batched.tokens.seg, alone.tokens.seg), (batched.tokens.tak, alone.tokens.tak),
                 (batched.token, alone.token), (batched.keyframe_result.low_res_logits,
                                                alone.keyframe_result.low_res_logits)):
        assert torch.equal(a, b)


def test_per_frame_inputs_are_read_and_computed_once_for_the_whole_batch(frames):
    tracker = make_tracker(128)
    grounder = make_grounder(tracker, max_dense_frames=3, sparse_frames=2)
    window = filled_window(tracker, frames[:8])
    clip = grounder.anchor_scorer.embed_image = Counting(grounder.anchor_scorer.embed_image)
    computed = []
    frame_tokens = grounder.mllm.frame_tokens
    grounder.mllm.frame_tokens = lambda images: computed.extend(id(im) for im in images) or frame_tokens(images)
    text = grounder.anchor_scorer.embed_text = Counting(grounder.anchor_scorer.embed_text)
    encoder = tracker.model.forward_image = Counting(tracker.model.forward_image)
    merge = grounder.mllm.merge = Counting(grounder.mllm.merge)
    llm_calls = []
    grounder.mllm.llm.register_forward_hook(lambda m, args, kwargs, out: llm_calls.append(kwargs), with_kwargs=True)
    reads = []
    get_feature = window.get_feature
    window.get_feature = lambda index, key, default=None: reads.append(key) or get_feature(index, key, default)
    with_feature = window.with_feature
    window.with_feature = lambda key: reads.append(("every frame", key)) or with_feature(key)

    batch = instructions()
    results = grounder.ground_many(window, batch)
    used = set().union(*(set(g.dense_frames) | set(g.sparse_frames) for g in results))
    lattices = Counter(tuple(g.dense_frames) for g in results)
    assert (clip.count, text.count, encoder.count) == (8, len(batch), 0)
    assert sorted(computed) == sorted({id(window.snapshot()[i].image) for i in used})  # each once
    assert merge.count == len(lattices) < len(batch)  # instructions over the same frames share the merge
    # The prefill: one call over each lattice's common prefix, one over the rest of the prompts
    # that share a lattice (a prompt alone on its lattice is whole in the first call).
    rows = [kw["inputs_embeds"].shape[0] for kw in llm_calls]
    assert rows == [len(lattices), sum(n for n in lattices.values() if n > 1)]
    assert (reads.count(("every frame", SAM2_KEY)), reads.count(SAM2_KEY), reads.count(CLIP_KEY),
            reads.count(MLLM_KEY)) == (1, 0, 8, len(used))
    # Again: every per-frame input and text embedding is cached; still one LLM call.
    again = grounder.ground_many(window, batch)
    assert (clip.count, text.count, encoder.count, len(llm_calls), len(computed)) == (8, len(batch), 0, 4, len(used))
    assert [g.keyframe for g in again] == [g.keyframe for g in results]


def test_timings_are_the_batch_stages_and_each_instruction_tks(setup):
    grounder, window = setup
    results = grounder.ground_many(window, instructions())
    for g in results:
        assert set(g.timings_s) == {"clip_anchor", "mllm_frame_tokens", "mllm_prefill", "tks"}
        assert all(g.timings_s[k] == results[0].timings_s[k] for k in ("clip_anchor", "mllm_frame_tokens",
                                                                        "mllm_prefill"))
    assert len({g.timings_s["tks"] for g in results}) > 1


def test_grouped_object_scores_are_each_frames_own_within_rounding(setup):
    """Frames scored together (more tokens than one call takes, a frame without tokens) give each
    frame's own token_object_scores within a larger batch's rounding; one group is bit for bit."""
    grounder, window = setup
    tracker = grounder.tracker
    feats = [window.get_feature(f.index, SAM2_KEY) for f in window.snapshot()[:8]]
    tokens = [torch.randn(256, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    groups = [(f, tokens if i != 5 else []) for i, f in enumerate(feats)]
    assert sum(len(t) for _, t in groups) > SCORE_BATCH
    together = tracker.grouped_object_scores(groups)
    alone = [tracker.token_object_scores(f, t) for f, t in groups]
    assert [len(s) for s in together] == [len(t) for _, t in groups] and together[5] == []
    flat = lambda scores: torch.tensor([x for s in scores for x in s])  # noqa: E731
    torch.testing.assert_close(flat(together), flat(alone), rtol=0, atol=1e-5)
    assert tracker.grouped_object_scores(groups[:1]) == alone[:1]
    assert len({round(x, 4) for s in together for x in s}) > len(tokens), "frames and tokens must score differently"


def test_score_chunks_keep_groups_whole_and_runs_within_the_limit():
    assert score_chunks([3, 0, 16, 5, 5, 7], limit=16) == [[0], [2], [3, 4], [5]]
    assert score_chunks([20, 1], limit=16) == [[0], [1]]  # a larger group is a run of its own
    assert score_chunks([1] * 5, limit=2) == [[0, 1], [2, 3], [4]] and score_chunks([0, 0]) == []


def test_reasoning_runs_no_sam2_and_selection_does(setup, monkeypatch):
    grounder, window = setup
    tracker = grounder.tracker
    score, decode = tracker.grouped_object_scores, tracker.grouped_decode_tokens
    for name in ("grouped_object_scores", "grouped_decode_tokens"):
        monkeypatch.setattr(tracker, name, lambda *a: pytest.fail("SAM-2 while reasoning"))
    reasoning = grounder.reason_many(window, instructions())
    calls = []
    monkeypatch.setattr(tracker, "grouped_object_scores", lambda groups: calls.append(groups) or score(groups))
    monkeypatch.setattr(tracker, "grouped_decode_tokens", decode)
    selected = grounder.select_many(reasoning)
    (groups,) = calls
    assert len(groups) == len({f.index for r in reasoning for f in r.dense})
    assert sum(len(tokens) for _, tokens in groups) == sum(len(r.dense) for r in reasoning)
    assert [g.keyframe for g in selected] == [g.keyframe for g in grounder.ground_many(window, instructions())]


def test_an_empty_batch_gives_nothing_and_bad_anchors_are_refused(setup):
    grounder, window = setup
    assert grounder.ground_many(FrameWindow(2), []) == [] and grounder.reason_many(window, []) == []
    assert grounder.mllm.prefill([], grounder.seg_id, grounder.tak_id) == []
    with pytest.raises(ValueError, match="2 anchor frames for 4 instructions"):
        grounder.reason_many(window, instructions(), [0, 1])
    with pytest.raises(ValueError, match="anchor frame 99"):
        grounder.reason_many(window, instructions()[:2], [0, 99])


def test_prompts_over_the_same_frames_run_their_common_prefix_once(setup):
    """Two instructions twice over the same frames: one LLM call over their common prefix (the
    system text and the frames' tokens), one over the four rests; each result equals its prompt's
    own prefill."""
    grounder, window = setup
    mllm = grounder.mllm
    reasoning = grounder.reason_many(window, instructions(TEXTS[:2] * 2), [0, 0, 0, 0])
    tokens = [[window.get_feature(i, MLLM_KEY) for i in frames] for frames in
              ([f.index for f in reasoning[0].dense], reasoning[0].sparse_frames)]
    prompts = [PrefillInput(r.input_ids, *tokens) for r in reasoning]
    shapes = []
    hook = mllm.llm.register_forward_hook(lambda m, a, kw, out: shapes.append(tuple(kw["inputs_embeds"].shape[:2])),
                                          with_kwargs=True)
    try:
        alone = [mllm(p.input_ids, p.dense, grounder.seg_id, grounder.tak_id, sparse=p.sparse) for p in prompts]
        batched = mllm.prefill(prompts, grounder.seg_id, grounder.tak_id)
    finally:
        hook.remove()
    ids = [p.input_ids for p in prompts[:2]]
    common = next(i for i, (a, b) in enumerate(zip(*ids)) if a != b)
    assert IMAGE_TOKEN_INDEX not in ids[0][common:]
    prefix = shapes[0][1] - (len(ids[0]) - common)  # the rest is text: as long expanded as not
    assert shapes[4:] == [(1, prefix), (4, max(n for _, n in shapes[:4]) - prefix)]
    for a, b in zip(batched, alone):
        assert a.rows == b.rows
        torch.testing.assert_close(a.hidden, b.hidden, **TOL)
        torch.testing.assert_close(a.seg, b.seg, **TOL)
        torch.testing.assert_close(a.tak, b.tak, **TOL)
