"""A case is one published checkpoint and everything needed to convert and check it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Case:
    id: str  # what `pytest -k` matches
    family: str  # converters.<family>
    hub_name: str  # repo name as the originals publish it (the part after the org)
    url: str | None  # where the original checkpoint lives (None: timm / hub sources)
    config_class: str
    config: Mapping[str, Any]
    model_class: str
    output: str  # the model output compared: "logits", "last_hidden_state", "pooler_output"
    processor_class: str
    processor: Mapping[str, Any]
    timm_tag: str | None = None  # timm pretrained tag of the same weights (oracle, source transform)
    atol: float = 1e-5  # logits vs oracle, random weights: set from measurement
    marks: tuple[str, ...] = ()  # extra pytest marks, e.g. "large"
    params: Mapping[str, Any] = field(default_factory=dict)  # family specifics
    # Config overrides for random weights when the real size cannot be materialised (a 10B model):
    # same layout and depths, smaller widths. Full-size key coverage is then checked on meta tensors.
    random_config: Mapping[str, Any] | None = None
    # A measured, explained difference between the original preprocessing and every transformers
    # image processor configuration: the pixel check is then a strict expected failure with this reason.
    pixel_divergence: str | None = None
    # A measured, explained difference between the converted model and the original evaluation's
    # model that no transformers configuration removes (DINOv2's position-embedding interpolation):
    # the logits check compares with an oracle that shares transformers' choice, and this says
    # what differs from the original evaluation, in the summary and the model card.
    output_divergence: str | None = None
    # Too large to hold in memory (a 10B model): the original file is memory-mapped, `--save` streams
    # it tensor by tensor into shards, and forward passes run from the mapped tensors (models built on
    # the meta device and given them); they skip only when even the activations cannot fit.
    streamed: bool = False
    # Original files beside the main one (`url`), by part name: a DINOv2 linear classifier is a
    # backbone file plus a head file. A part's keys enter the original state under `<part>.`;
    # `--checkpoint CASE:PART=PATH` gives a local file for a part.
    extra_files: Mapping[str, str] = field(default_factory=dict)
    # Where this case's weights differ from its family's provenance (`Family.provenance`): fields of
    # `converters.family.Provenance` and their values, e.g. the 22k cases' training data.
    provenance: Mapping[str, Any] = field(default_factory=dict)
    # The Hub repository where this conversion is already published ("org/name"), when known;
    # None otherwise (never guessed from hub_name).
    published_repo: str | None = None

    @property
    def seed(self) -> int:
        """Per-case seed for synthetic weights: stable across runs, processes and machines."""
        return int.from_bytes(hashlib.sha256(self.id.encode()).digest()[:8], "little") % (2**63)

    def for_random_weights(self) -> "Case":
        if not self.random_config:
            return self
        return replace(self, config={**self.config, **self.random_config})

    @property
    def image_size(self) -> int:
        return int(self.config.get("image_size", 224))


def random_like(name: str, meta: "torch.Tensor", generator: "torch.Generator") -> "torch.Tensor":
    """A random tensor for one original key. Every tensor is randomised (norm scales, biases,
    BatchNorm statistics too): originals that initialise to zero would hide mapping bugs.
    Scales keep activations O(1) so logit tolerances stay meaningful."""
    import torch

    shape, dtype = tuple(meta.shape), meta.dtype
    if not dtype.is_floating_point:
        return torch.randint(0, 8, shape, generator=generator, dtype=dtype)
    if name.endswith("running_var"):
        return torch.rand(shape, generator=generator) + 0.5
    if len(shape) >= 2 and shape[0] > 1:
        fan_in = max(1, meta.numel() // shape[0])
        return torch.randn(shape, generator=generator) / fan_in**0.5
    scale = torch.randn(shape, generator=generator) * 0.2
    return scale + 1.0 if name.endswith(("weight", "gamma")) and "grn" not in name else scale


def random_state(layout: Mapping[str, "torch.Tensor"], seed: int) -> dict[str, "torch.Tensor"]:
    """Random tensors for every meta entry of `layout`; real tensors in it (index buffers the
    original computes) are kept as they are."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return {
        name: random_like(name, meta, generator) if meta.is_meta else meta.clone()
        for name, meta in layout.items()
    }
