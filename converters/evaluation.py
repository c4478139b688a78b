"""The original evaluation preprocessing, declared as data.

A family says how its original repository evaluates (`Family.evaluation`): the resize rule, the
crop, the interpolation, mean/std and the repository, file and function it comes from. The
reference transform the pixel checks compare the transformers processor with is built from that
declaration the way such originals build theirs (torchvision transforms on a PIL image: Resize,
CenterCrop, ToTensor, Normalize), so a declaration is read against the original code, not run.

A family whose original *is* timm (its weights are timm's, evaluated with timm's pretrained
config) declares `evaluation=timm_evaluation`: timm's own transform of `case.timm_tag`. There is
no default: a family that declares nothing fails registry validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .case import Case

# torchvision InterpolationMode names (the PIL filters of the same names on PIL images)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
RESIZE_RULES = ("shortest_edge", "crop_pct", "warp")


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """One original evaluation transform. Exactly one resize rule:
    - `shortest_edge=N`: the short side to N (aspect kept), then a centre crop of `crop_size`;
    - `crop_pct=p`: the short side to int(crop_size / p), then a centre crop of `crop_size`
      (the common `size = int(args.input_size / crop_pct)` of original evaluation code);
    - `warp=True`: straight to crop_size x crop_size (aspect not kept), no crop."""

    source: str  # the original repository, file and function: "owner/repo path function(args)"
    crop_size: int  # the side of the square the model is fed
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"  # of the resize (INTERPOLATIONS)
    shortest_edge: int | None = None
    crop_pct: float | None = None
    warp: bool = False

    def __post_init__(self):
        rules = [name for name, set_ in (("shortest_edge", self.shortest_edge is not None),
                                         ("crop_pct", self.crop_pct is not None), ("warp", self.warp)) if set_]
        problems = []
        if len(rules) != 1:
            problems.append(f"needs exactly one resize rule of {', '.join(RESIZE_RULES)} (got {rules or 'none'})")
        if not self.source.strip():
            problems.append("source (repository, file and function) is empty")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append(f"mean and std need 3 values each, std > 0 (got {self.mean}, {self.std})")
        if self.crop_size <= 0 or (self.shortest_edge is not None and self.shortest_edge < self.crop_size):
            problems.append(f"crop_size {self.crop_size} must be positive and no larger than the resized short side")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            problems.append(f"crop_pct {self.crop_pct} is not in (0, 1]")
        if problems:
            raise ValueError(f"Evaluation from {self.source!r}: " + "; ".join(problems))

    @property
    def resize(self) -> int | tuple[int, int]:
        """What the original passes to Resize: the short side's length, or (height, width) when warping."""
        if self.warp:
            return (self.crop_size, self.crop_size)
        if self.crop_pct is not None:
            return int(self.crop_size / self.crop_pct)
        return self.shortest_edge

    @property
    def described(self) -> str:
        """For a reader (the model card): what to preprocess with to reproduce the original."""
        return f"the original evaluation transform ({self.source})"

    def transform(self):
        """The reference transform (PIL RGB image -> normalised float tensor), as the original builds it."""
        from torchvision import transforms

        mode = transforms.InterpolationMode(self.interpolation)
        steps = [transforms.Resize(self.resize, interpolation=mode)]
        if not self.warp:
            steps.append(transforms.CenterCrop(self.crop_size))
        return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])


@dataclass(frozen=True)
class TimmEvaluation:
    """The original is timm: its evaluation is timm's own transform from the tag's pretrained config."""

    tag: str

    @property
    def source(self) -> str:
        return (f"huggingface/pytorch-image-models timm/data/transforms_factory.py "
                f"create_transform(**resolve_data_config(pretrained_cfg of {self.tag!r}))")

    @property
    def described(self) -> str:
        return f"timm's evaluation transform of `{self.tag}`"

    def transform(self):
        from .reference import timm_transform

        return timm_transform(self.tag)


def timm_evaluation(case: "Case") -> TimmEvaluation:
    """`Family.evaluation` of a family whose original is timm: the case's `timm_tag`, evaluated by timm."""
    if not case.timm_tag:
        raise ValueError(f"{case.id}: evaluation=timm_evaluation needs the case's timm_tag (it is not set)")
    return TimmEvaluation(case.timm_tag)


DECLARED = (Evaluation, TimmEvaluation)
