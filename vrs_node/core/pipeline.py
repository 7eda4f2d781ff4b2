"""build_pipeline: loaded models + a :class:`PipelineConfig` -> a ready :class:`StreamingEngine`.

The one place the tracker, the grounder and the engine are put together, for the node, replay,
the soak, the benchmarks and the tests.
"""

from __future__ import annotations

from collections.abc import Callable

from vrs_node.core.config import PipelineConfig
from vrs_node.core.engine import StreamingEngine
from vrs_node.core.grounder import Grounder, GrounderConfig
from vrs_node.core.queries import QueryReport
from vrs_node.core.remote_reasoner import RemoteGrounder
from vrs_node.core.results import FrameResult
from vrs_node.core.tracker import StreamingTracker
from vrs_node.models.profiles import LoadedModels


def build_pipeline(models: LoadedModels, config: PipelineConfig = PipelineConfig(),
                   on_result: Callable[[FrameResult], None] | None = None,
                   on_query: Callable[[QueryReport], None] | None = None,
                   remote_grounder: Callable[[StreamingTracker], RemoteGrounder] | None = None) -> StreamingEngine:
    """A :class:`StreamingEngine` over ``models``: a :class:`StreamingTracker` keeping
    ``config.max_cond_frames`` conditioning frames (in the models' precision), a grounder, and the
    engine with ``config``, ``on_result`` and ``on_query``. The grounder is
    ``remote_grounder(tracker)`` when that is given (a reasoner elsewhere:
    :mod:`vrs_node.core.remote_reasoner`), else a :class:`Grounder` with ``config.sparse_frames``
    when the models have language models, else None. The engine's ``tracker`` and ``grounder``
    are the ones built here."""
    tracker = StreamingTracker(models.sam2, models.transform, max_cond_frames=config.max_cond_frames,
                               **models.tracker_options)
    grounder = None
    if remote_grounder is not None:
        grounder = remote_grounder(tracker)
    elif models.grounding is not None:
        g = models.grounding
        grounder = Grounder(g.mllm, g.tokenizer, g.anchor_scorer, tracker,
                            GrounderConfig(sparse_frames=config.sparse_frames), g.special_ids)
    return StreamingEngine(tracker, config, on_result=on_result, grounder=grounder, on_query=on_query)
