"""The ``--mode`` predictor of ``vrs-replay`` over the configured models, and the summary's model
fields: what the command (:mod:`vrs_node.eval.replay`) and each Ray worker
(:mod:`vrs_node.eval.parallel`) load, once per process.

Contract: :func:`model_predictor` checks the settings before any model loads and raises
:class:`~vrs_node.eval.sequences.ReplayError` for a bad setting or models that cannot be loaded;
:func:`custom_meta` describes a predictor given instead of the models. Importing this module imports
no torch (the predictors are imported when models load).
"""

from __future__ import annotations

import argparse

from vrs_node.core.config import PipelineConfig
from vrs_node.eval.sequences import Predictor, ReplayError
from vrs_node.models.config import ModelConfig, from_arguments


def configs(args: argparse.Namespace) -> tuple[ModelConfig, PipelineConfig]:
    """The model and engine settings of ``args`` (the engine's mode: ``sync``, which each predictor
    sets to its own); ReplayError for a value the settings refuse."""
    try:
        return from_arguments(ModelConfig, args), from_arguments(PipelineConfig, args, mode="sync")
    except ValueError as error:
        raise ReplayError(str(error)) from None


def model_predictor(args: argparse.Namespace, progress: bool | None = None) -> tuple[Predictor, dict]:
    """The ``args.mode`` predictor over the models of ``args``' settings (with
    ``args.all_expressions``: the group predictor, :data:`~vrs_node.eval.groups.GroupPredictor`), and
    the summary's model fields (profile, random_weights, device, image_size, precision).
    ``progress``: per-sequence progress bars (default: unless ``args.quiet``)."""
    model_config, config = configs(args)
    from vrs_node.eval.predictors import PREDICTORS, GroupStreamPredictor  # torch: only once models load
    from vrs_node.models.profiles import load_configured_models

    try:
        profile, device, models = load_configured_models(model_config)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        raise ReplayError(f"model profile {model_config.model_profile!r} could not be loaded: {error}") from None
    shown = not args.quiet if progress is None else progress
    kind = GroupStreamPredictor if args.all_expressions else PREDICTORS[args.mode]
    predictor = kind(models, args.prompt, config, speed=args.speed, progress=shown)
    return predictor, {"profile": profile.name, "random_weights": profile.random_weights, "device": str(device),
                       "image_size": models.transform.image_size, "precision": models.precision}


def predictor_and_meta(args: argparse.Namespace, predictor: Predictor | None,
                       progress: bool | None = None) -> tuple[Predictor, dict]:
    """``predictor`` with its summary fields (:func:`custom_meta`), or, when it is None, the
    models' predictor and fields (:func:`model_predictor`, loaded here)."""
    if predictor is None:
        return model_predictor(args, progress)
    return predictor, custom_meta(predictor, args)


def predictor_name(predictor: Predictor) -> str:
    """A custom predictor's name: its ``name`` attribute, else its function or class name."""
    return getattr(predictor, "name", getattr(predictor, "__name__", type(predictor).__name__))


def custom_meta(predictor: Predictor, args: argparse.Namespace) -> dict:
    """The summary's model fields for a predictor given instead of the models."""
    return {"profile": predictor_name(predictor), "random_weights": None, "device": args.device,
            "image_size": args.image_size or None}
