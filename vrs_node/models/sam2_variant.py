"""Which SAM-2 architecture a VRS-HQ checkpoint's ``model.visual_model.*`` weights belong to.

VRS-HQ's ``config.json`` does not name its SAM-2 (the authors' code hard-codes Hiera-L at 1024 px),
so the architecture is read from the weights. A checkpoint's *signature* is what its tensor shapes
and key names fix:

- Hiera ``embed_dim`` (``trunk.patch_embed.proj.weight`` rows) and ``stages`` (blocks per stage: a
  block with its own ``proj`` opens a new stage);
- the window positional embeddings' sizes (``trunk.pos_embed`` = background, ``trunk.pos_embed_window``
  = ``window_spec[0]``);
- the FPN neck's ``backbone_channel_list`` (input channels of ``neck.convs.*``, top level first);
- the memory-attention layer count;
- SAM 2 or SAM 2.1 (2.1 adds ``no_obj_embed_spatial``).

The same signature is computed from each known variant's hydra config (composed, not built), and
the one variant that matches is returned. Shapes cannot tell head counts, global-attention blocks,
the later ``window_spec`` entries or the input size; those come from the matched variant, and
``load_state_dict(strict=True)`` afterwards checks every shape.

Known variants (:data:`VRSHQ_SAM2_VARIANTS`): every sam2 1.1.0 config at VRS-HQ's input (1024 px,
padded, VRS-HQ's decoder settings), and the tiny Hiera at 256 px of the shared golden checkpoint
(``shared/golden/vrshq_tiny``: sam2_hiera_t with the overrides below).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import torch

from vrs_node.models.sam2_build import SAM2_CONFIGS, Sam2Spec

VRSHQ_INPUT_SIZE = 1024
"""VRS-HQ's SAM-2 input: the longest side resized to 1024, zero-padded to a square."""

VRSHQ_HIERA_L = Sam2Spec("sam2-hiera-l", image_size=VRSHQ_INPUT_SIZE, resize="pad", vrshq=True)
"""The released VRS-HQ-7B's SAM-2 (Hiera-L, SAM 2.0 weights layout)."""

VRSHQ_TINY_SAM2 = Sam2Spec("sam2-hiera-t", image_size=256, resize="pad", vrshq=True, extra_overrides=(
    "++model.image_encoder.trunk.embed_dim=32",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_spec=[8,4,16,8]",
    "++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]",
    "++model.memory_attention.num_layers=1",
))
"""The tiny SAM-2 of the shared golden checkpoint (8.6 M parameters, 256 px)."""

VRSHQ_SAM2_VARIANTS = {
    "vrshq-tiny-256": VRSHQ_TINY_SAM2,
    **{f"{arch}-{VRSHQ_INPUT_SIZE}": Sam2Spec(arch, image_size=VRSHQ_INPUT_SIZE, resize="pad", vrshq=True)
       for arch in SAM2_CONFIGS},
}
"""Name -> spec of every SAM-2 a VRS-HQ checkpoint is recognised as."""

TRUNK = "image_encoder.trunk."


@dataclass(frozen=True)
class Sam2Signature:
    """What the weights' shapes and names fix about a SAM-2 architecture (module docstring)."""

    embed_dim: int
    stages: tuple[int, ...]
    pos_embed_size: tuple[int, int]
    window0: int
    backbone_channels: tuple[int, ...]
    memory_attention_layers: int
    sam21: bool


def weights_signature(state: dict[str, torch.Tensor]) -> Sam2Signature:
    """The signature of a SAM-2 state dict (keys without the ``model.visual_model.`` prefix).

    Raises ValueError naming the first key it needs and cannot find.
    """
    def tensor(key: str) -> torch.Tensor:
        if key not in state:
            raise ValueError(f"the SAM-2 weights lack {key}: not a SAM-2 model")
        return state[key]

    blocks = sorted({int(k[len(TRUNK + "blocks."):].split(".")[0]) for k in state if k.startswith(TRUNK + "blocks.")})
    if blocks != list(range(len(blocks))) or not blocks:
        raise ValueError(f"the SAM-2 weights' Hiera blocks are not numbered 0..N-1: {blocks[:10]}")
    stages, count = [], 0
    for b in blocks:
        if b and f"{TRUNK}blocks.{b}.proj.weight" in state:
            stages.append(count)
            count = 0
        count += 1
    stages.append(count)
    necks = sorted({int(k.split(".")[3]) for k in state if k.startswith("image_encoder.neck.convs.")})
    layers = {int(k.split(".")[2]) for k in state if k.startswith("memory_attention.layers.")}
    return Sam2Signature(
        embed_dim=int(tensor(TRUNK + "patch_embed.proj.weight").shape[0]),
        stages=tuple(stages),
        pos_embed_size=tuple(int(s) for s in tensor(TRUNK + "pos_embed").shape[-2:]),
        window0=int(tensor(TRUNK + "pos_embed_window").shape[-1]),
        backbone_channels=tuple(int(tensor(f"image_encoder.neck.convs.{i}.conv.weight").shape[1]) for i in necks),
        memory_attention_layers=len(layers),
        sam21="no_obj_embed_spatial" in state,
    )


def config_signature(spec: Sam2Spec) -> Sam2Signature:
    """The signature of the architecture ``spec`` builds, from its composed hydra config (Hiera's
    constructor defaults fill what the config leaves out); nothing is instantiated."""
    from hydra import compose
    from omegaconf import OmegaConf

    importlib.import_module("sam2")  # initialises hydra's config module "sam2"
    from sam2.modeling.backbones.hieradet import Hiera

    cfg = compose(config_name=SAM2_CONFIGS[spec.arch], overrides=spec.hydra_overrides())
    model = OmegaConf.to_container(cfg.model, resolve=True)
    defaults = {k: p.default for k, p in inspect.signature(Hiera.__init__).parameters.items()}
    trunk = {**defaults, **model["image_encoder"]["trunk"]}
    return Sam2Signature(
        embed_dim=int(trunk["embed_dim"]),
        stages=tuple(trunk["stages"]),
        pos_embed_size=tuple(trunk["window_pos_embed_bkg_spatial_size"]),
        window0=int(trunk["window_spec"][0]),
        backbone_channels=tuple(model["image_encoder"]["neck"]["backbone_channel_list"]),
        memory_attention_layers=int(model["memory_attention"]["num_layers"]),
        sam21=bool(model.get("no_obj_embed_spatial", False)),
    )


def infer_sam2_spec(state: dict[str, torch.Tensor]) -> tuple[str, Sam2Spec]:
    """(name, spec) of the one known variant whose signature equals the weights'.

    Raises ValueError with the weights' signature and the known names when none matches.
    """
    found = weights_signature(state)
    for name, spec in VRSHQ_SAM2_VARIANTS.items():
        if config_signature(spec) == found:
            return name, spec
    raise ValueError(f"the SAM-2 weights ({found}) match no known VRS-HQ SAM-2 variant "
                     f"({', '.join(VRSHQ_SAM2_VARIANTS)}); give the architecture explicitly (sam2_spec)")
