"""CLIP anchor-frame scorer (VRS-HQ stage A) on ``open_clip``.

VRS-HQ scores every frame against the instruction with CLIP ViT-L/14-336 (OpenAI weights) and
takes the argmax over frames as the anchor of its frame lattice (REFERENCE_VRSHQ_VIDEOLISA.md
§1.2). Streaming, the same happens over the frame window: each frame's image embedding is computed
once (the caller caches it with the frame) and the text embedding once per instruction.

Real use: ``ClipAnchorScorer.from_pretrained("ViT-L-14-336", "openai")`` (weights from the
open_clip / Hugging Face cache or a local file path; nothing is downloaded when
``HF_HUB_OFFLINE=1``). Tests: ``ClipAnchorScorer.tiny()``, the same classes with a tiny
configuration and seeded random weights.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

VRSHQ_ANCHOR_MODEL = "ViT-L-14-336"
"""open_clip's name of VRS-HQ's CLIP-336 anchor scorer."""

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
"""A tiny CLIP (ViT vision tower, transformer text tower, OpenAI BPE vocabulary) for tests."""


class ClipAnchorScorer:
    """Image/text embeddings and the anchor = argmax_t cos(image_t, text) over a window."""

    def __init__(self, model: torch.nn.Module, preprocess, tokenizer, precision: str = "fp32"):
        """``precision``: open_clip's precision the model was created in; images are fed to it in
        open_clip's input dtype for it (bfloat16 for ``"bf16"``, float32 for ``"fp32"``)."""
        import open_clip

        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.input_dtype = open_clip.get_input_dtype(precision) or torch.float32

    @property
    def device(self) -> torch.device:
        """Where the CLIP weights are (they may be moved, e.g. by :meth:`LoadedModels.to`)."""
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(cls, model_name: str = VRSHQ_ANCHOR_MODEL, pretrained: str = "openai",
                        device: str | torch.device = "cpu", precision: str = "fp32") -> "ClipAnchorScorer":
        """An open_clip model by name with ``pretrained`` weights (a tag such as "openai" or a
        checkpoint file path; None = open_clip's random initialisation, for benchmarks) in open_clip's
        ``precision`` ("fp32", or "bf16": bfloat16 weights, LayerNorms computing in float32)."""
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device, precision=precision)
        return cls(model, preprocess, open_clip.get_tokenizer(model_name), precision)

    @classmethod
    def tiny(cls, seed: int = 0, device: str | torch.device = "cpu", precision: str = "fp32") -> "ClipAnchorScorer":
        """:data:`TINY_CLIP_CONFIG` with seeded random weights and CLIP's own preprocessing, in
        open_clip's ``precision`` (built by ``open_clip.create_model`` as :meth:`from_pretrained`
        builds a named model; the name it is given only supplies the defaults the tiny
        configuration replaces)."""
        import open_clip

        torch.manual_seed(seed)
        model = open_clip.create_model("ViT-B-32", pretrained=None, device=device, precision=precision,
                                       **TINY_CLIP_CONFIG)
        preprocess = open_clip.image_transform(TINY_CLIP_CONFIG["vision_cfg"]["image_size"], is_train=False)
        return cls(model, preprocess, open_clip.get_tokenizer("ViT-B-32"), precision)

    @torch.inference_mode()
    def embed_image(self, image: np.ndarray) -> torch.Tensor:
        """Unit-norm image embedding (D,) of one H x W x 3 uint8 RGB frame."""
        from PIL import Image

        x = self.preprocess(Image.fromarray(image))[None].to(self.device, self.input_dtype)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)[0]

    @torch.inference_mode()
    def embed_text(self, text: str) -> torch.Tensor:
        """Unit-norm text embedding (D,). Text longer than CLIP's context (77 tokens) is truncated
        by the tokenizer (VRS-HQ's CLIPProcessor call did not truncate and would overflow)."""
        tokens = self.tokenizer([text]).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)[0]

    @staticmethod
    def anchor(image_embeddings: torch.Tensor, text_embedding: torch.Tensor) -> int:
        """Position of the frame most similar to the text: argmax_t cos(image_t, text).

        (VRS-HQ takes the argmax of softmax over frames of logit_scale * cos: the same frame.)
        """
        if image_embeddings.ndim != 2 or len(image_embeddings) == 0:
            raise ValueError(f"need (T>0, D) image embeddings, got {tuple(image_embeddings.shape)}")
        return int(torch.argmax(image_embeddings @ text_embedding))
