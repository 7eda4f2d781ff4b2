"""``compile_sam2``: the compiled tiny SAM-2 tracks like the eager one through StreamingTracker.

Every call the tracker makes is exercised -- encode, a box prompt, tracking while the number of
memories grows (so the dynamically shaped memory attention sees several lengths), a mask
re-prompt (a second conditioning frame), more tracking and a token decode -- on an eager and a
compiled tracker with identical weights.

Backend: ``backend="aot_eager"``: Dynamo traces every part with ``fullgraph=True`` (a graph break
fails it) and AOTAutograd builds the same graphs inductor would get, but runs them eagerly (~25 s
here; tolerance 1e-5, measured 0: the same kernels). Inductor itself (``mode="default"``) also
works on a 2-core CPU (measured <= 1.3e-6 on logits of size ~0.3), but compiling the session's
graphs takes ~2 minutes with a cold inductor cache, beyond this suite's budget; inductor with
sam2's ``max-autotune`` and CUDA graphs is checked on CUDA by ``bench/device_check.py`` (its
``cuda_checks`` part runs :func:`session` compiled and eager there).
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import box_of, make_tracker
from vrs_node.core.prompts import MaskPrompt, PointsPrompt
from vrs_node.models.sam2_compile import COMPILED_PARTS, compile_sam2, compiled_parts

def session(tracker, frames, masks) -> list[tuple[torch.Tensor, float]]:
    """(low-res logits, object score) of each step of a session that uses every tracker call."""
    token = torch.linspace(-1, 1, 256)
    steps = []
    for i, image in enumerate(frames):
        feats = tracker.encode(image)
        if i == 0:
            result = tracker.condition(feats, PointsPrompt(box=box_of(masks[0])))
        elif i == 5:
            result = tracker.condition(feats, MaskPrompt(masks[i]))
        else:
            result = tracker.track(feats)
        steps.append(result)
    steps.append(tracker.decode_token(feats, token))
    return [(r.low_res_logits.float().cpu().clone(), r.object_score) for r in steps]


def assert_same_session(compiled, eager, atol):
    worst_logit = max(float((c - e).abs().max()) for (c, _), (e, _) in zip(compiled, eager))
    worst_score = max(abs(c - e) for (_, c), (_, e) in zip(compiled, eager))
    assert len(compiled) == len(eager)
    assert worst_logit <= atol and worst_score <= atol, (worst_logit, worst_score)
    assert any(bool((logits > 0).any()) for logits, _ in eager), "empty masks would compare nothing"


@pytest.fixture(scope="module")
def frames_and_masks(blackswan):
    frames, masks, _ = blackswan
    return frames[:8], masks[:8]


@pytest.fixture(scope="module")
def eager_session(frames_and_masks):
    return session(make_tracker(128), *frames_and_masks)


def compiled_tracker(device="cpu", **options):
    tracker = make_tracker(128)
    tracker.model.to(device)
    compile_sam2(tracker.model, **options)
    assert compiled_parts(tracker.model) == list(COMPILED_PARTS)
    return tracker


def test_aot_eager_traces_every_part_in_full_and_tracks_identically(frames_and_masks, eager_session):
    tracker = compiled_tracker(mode=None, backend="aot_eager")
    graphs = counters["stats"]["unique_graphs"]
    assert_same_session(session(tracker, *frames_and_masks), eager_session, atol=1e-5)
    # every part ran as a captured graph (at least one per part; several shapes compile again)
    assert counters["stats"]["unique_graphs"] - graphs >= len(COMPILED_PARTS)
    # a second session on the same compiled model: the compiled code is reused, results unchanged
    tracker.reset()
    assert_same_session(session(tracker, *frames_and_masks), eager_session, atol=1e-5)


def test_compiled_parts_return_fresh_tensors(frames_and_masks):
    """Every compiled forward hands back copies (what keeps CUDA-graph outputs from being
    overwritten under the memory bank): two calls on the same input share no storage."""
    model = compiled_tracker(mode=None, backend="aot_eager").model
    x = torch.zeros(1, 3, 128, 128)
    with torch.inference_mode():
        first, second = model.image_encoder(x), model.image_encoder(x)
    outputs = [out["backbone_fpn"] + out["vision_pos_enc"] for out in (first, second)]
    for a, b in zip(*outputs):
        assert torch.equal(a, b) and a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()


def test_compiling_twice_or_mode_for_another_backend_is_refused():
    model = make_tracker(128).model
    with pytest.raises(ValueError, match="mode 'default' is inductor's"):
        compile_sam2(model, mode="default", backend="aot_eager")
    assert compiled_parts(model) == []
    compile_sam2(model, mode=None, backend="aot_eager")
    with pytest.raises(ValueError, match="already compiled: image_encoder, memory_encoder"):
        compile_sam2(model)


def test_many_prompt_shapes_stay_within_the_recompile_limit():
    """Each click count is a new prompt-encoder shape (static shapes, as sam2's VOS compiles it);
    dynamo's default limit of 8 per function would fail the 9th under fullgraph."""
    model = compile_sam2(make_tracker(128).model, mode=None, backend="aot_eager")
    with torch.inference_mode():
        for n in range(1, 13):
            points = (torch.rand(1, n, 2) * 128, torch.ones(1, n, dtype=torch.int32))
            sparse, _ = model.sam_prompt_encoder(points=points, boxes=None, masks=None)
            assert sparse.shape[1] == n + 1  # the clicks + one padding point


def test_load_models_compiles_only_when_asked():
    from vrs_node.models.profiles import get_profile, load_models

    assert compiled_parts(load_models(get_profile("hiera-t-512-random"), "cpu").sam2) == []
    loaded = load_models(get_profile("hiera-t-512-random"), "cpu", compile=True)
    assert loaded.compiled and compiled_parts(loaded.sam2) == list(COMPILED_PARTS)
