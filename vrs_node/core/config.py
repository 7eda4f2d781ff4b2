"""PipelineConfig: every setting of the engine, the tracker and the grounder, in one place; and
ReasonerConfig, the reasoner service's.

:func:`vrs_node.core.pipeline.build_pipeline` builds the three from a PipelineConfig; the node's
parameters, the flags of ``vrs-replay`` and ``config/vrs_node.yaml`` are derived from its fields
(:mod:`vrs_node.models.config` says how), the ``vrs-reasoner`` node's parameters from
ReasonerConfig's. Imports no torch (a node's ``--help`` lists them without loading it).
"""

from __future__ import annotations

from dataclasses import dataclass

from vrs_node.core.target_specs import DEFAULT_MAX_TARGETS, MAX_TARGET_ID
from vrs_node.models.config import check_settings, setting

ENGINE_MODES = ("sync", "live")
"""``sync``: every pushed frame is processed before ``push`` returns; ``live``: the newest frame wins
on a tracking thread (:mod:`vrs_node.core.engine`)."""


@dataclass(frozen=True)
class PipelineConfig:
    """The engine's settings (``mode`` .. ``lost_after_frames``), the tracker's (``max_cond_frames``)
    and the grounder's (``sparse_frames``); ``max_targets`` bounds the targets followed at once,
    ``target_batch`` those of one batched tracking call (``MultiTargetTracker``'s ``max_batch``).
    ``score_threshold`` is on the object-score logit (SAM-2 uses 0); ``period_s`` (stamp time) and
    ``lost_after_frames`` schedule re-grounding (0 turns either off); the three may change while the
    engine runs. ``grounding_nice``: the niceness
    above the process's of the thread that runs periodic re-queries of tracked targets
    (:func:`~vrs_node.core.queries.lower_thread_priority`, :meth:`~vrs_node.core.queries.QueryScheduler.start`)."""

    mode: str = setting("sync", "live: newest frame wins on a tracking thread; sync: every received frame is processed",
                        choices=ENGINE_MODES)
    window_frames: int = setting(16, "frames (and their features) kept for catch-up and grounding", range=(1, 1000))
    max_cond_frames: int = setting(4, "conditioning frames (keyframes) kept in SAM-2 memory", range=(1, 64))
    max_catchup_frames: int = setting(16, "most buffered frames tracked when catching up (strided beyond)",
                                      range=(1, 1000))
    score_threshold: float = setting(0.0, "object-score logit at or below which the target counts as absent",
                                     range=(-50.0, 50.0), runtime=True)
    period_s: float = setting(10.0, "re-ground the instruction every period_s seconds of camera time (0 = never)",
                              range=(0.0, 3600.0), runtime=True)
    lost_after_frames: int = setting(15, "re-ground after this many processed frames without the target (0 = never)",
                                     range=(0, 10000), runtime=True)
    max_targets: int = setting(DEFAULT_MAX_TARGETS, "most targets (instructions and prompts) followed at once",
                               range=(1, MAX_TARGET_ID))
    target_batch: int = setting(4, "most targets tracked in one batched call; more are tracked in batches of this "
                                   "size (0 = all in one)", range=(0, MAX_TARGET_ID))
    grounding_nice: int = setting(10, "niceness added to the periodic re-queries' thread (live mode, Linux): they "
                                      "yield the CPU to tracking (0 = same priority; a target's first "
                                      "query always runs at tracking's)", range=(0, 19))
    sparse_frames: int = setting(0, "pooled context frames over the window given to the MLLM besides the dense "
                                    "lattice (0 = VRS-HQ)", range=(0, 64))

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class ReasonerConfig:
    """The reasoner's own settings (the ``vrs-reasoner`` node's parameters besides the models')."""

    window_frames: int = setting(16, "camera frames (and their reasoner inputs) held for requests", range=(1, 1000))
    max_batch: int = setting(4, "most instructions answered by one batched prefill, and in one request",
                             range=(1, 16))
    batch_wait_s: float = setting(0.0, "how long after its first request arrived a batch that is not full waits for "
                                       "more requests (0: the requests waiting when the worker is free)",
                                  range=(0.0, 1.0))
    sparse_frames: int = setting(0, "pooled context frames over the requested frames given to the MLLM besides "
                                    "the dense lattice (0 = VRS-HQ)", range=(0, 64))

    def __post_init__(self) -> None:
        check_settings(self)
