"""The conversion core: what every family gets from its declared `Family`, once.

Library modules import from here (never from the package facade `converters/__init__.py`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import torch

from . import compat
from .case import Case, random_state
from .checkpoint import load
from .plan import Plan, meta_state
from .quote import listing
from .registry import family_of

# class count -> the ImageNet label set timm ships with that many classes (its `infer_imagenet_subset`)
IMAGENET_SUBSETS = {1000: "imagenet-1k", 21841: "imagenet-22k"}


@lru_cache(maxsize=None)
def imagenet_labels(subset: str) -> tuple[str, ...]:
    """The class names of an ImageNet label set, by index: they ship with timm (no download)."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo(subset).label_descriptions())


def build_config(case: Case):
    kwargs = dict(case.config)
    subset = IMAGENET_SUBSETS.get(kwargs.get("num_labels"))
    if subset and "id2label" not in kwargs:
        kwargs["id2label"] = dict(enumerate(imagenet_labels(subset)))
        kwargs["label2id"] = {v: k for k, v in kwargs["id2label"].items()}
    return compat.get_class(case.config_class)(**kwargs)


def target_layout(case: Case) -> dict[str, torch.Tensor]:
    """Keys and shapes of the running transformers model, on the meta device (no memory)."""
    return meta_state(compat.build_model(case.model_class, build_config(case), device="meta").state_dict())


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """Keys and shapes of the original checkpoint, on the meta device."""
    return family_of(case).original_layout(case)


def synthetic_original(case: Case) -> dict[str, torch.Tensor]:
    """A checkpoint in the exact original layout, every tensor random, seeded by case id."""
    return random_state(original_layout(case), case.seed)


def plan_of(case: Case) -> Plan:
    """The family's plan for the case on the installed transformers line (`Plan.by_line` resolved)."""
    family = family_of(case)
    owner = f"family {family.name!r} (Family.plan), case {case.id!r}, transformers {compat.VERSION}"
    return family.plan(case).for_line(compat.MAJOR, owner)


def _tensors_only(case: Case, state: Mapping, what: str) -> None:
    wrong = [f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if wrong:
        raise TypeError(f"{case.id}: {what} takes a state dict of tensors; not tensors: {listing(wrong, limit=20, count=False)}")


def convert(case: Case, original: Mapping[str, torch.Tensor]):
    """Original state dict -> (transformers state dict, coverage report against the target)."""
    _tensors_only(case, original, "convert")
    return plan_of(case).forwards(original, target=target_layout(case))


def revert(case: Case, converted: Mapping[str, torch.Tensor]):
    """Transformers state dict -> (original state dict, coverage report against the original layout)."""
    _tensors_only(case, converted, "revert")
    return plan_of(case).backwards(converted, target=original_layout(case))


def build_model(case: Case, state: Mapping[str, torch.Tensor]):
    """The transformers model holding `state` (strict: every key, every shape). Built on the meta
    device and given the tensors (assigned, never copied), so memory-mapped weights stay pages of
    their file: a forward pass of a 40 GB model needs memory for its activations only. A model
    with buffers its state dict does not carry (non-persistent, computed when it is built) is
    built on the CPU instead, since the meta device cannot compute them."""
    config = build_config(case)
    model = compat.build_model(case.model_class, config, device="meta")
    if set(dict(model.named_buffers())) - set(model.state_dict()):
        model = compat.build_model(case.model_class, config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_original(case: Case, path, mmap: bool = False, part: str | None = None, checks: bool = True):
    """Safe load of an original file (weights_only + the family's allow-list), unwrapped. `part`
    names one of `case.extra_files` (its keys come back under `<part>.`); `checks` as in `load`."""
    family = family_of(case)
    loaded = load(path, case.id, unwrap=family.unwrap, allow=family.allow, mmap=mmap, checks=checks)
    if part is not None:
        loaded.state = {f"{part}.{k}": v for k, v in loaded.state.items()}
    return loaded


def image_processor(case: Case):
    """The transformers image processor (PIL backend) that reproduces the original evaluation."""
    return compat.image_processor_class(case.processor_class)(**case.processor)


def source_transform(case: Case):
    """The original evaluation preprocessing (PIL image -> tensor), built from the family's
    declaration (`Family.evaluation`, validated by the registry)."""
    return family_of(case).evaluation_of(case).transform()


def oracle(case: Case, original: Mapping[str, torch.Tensor]):
    """An implementation we did not write, loaded with the original checkpoint: pixels -> output."""
    return family_of(case).oracle(case, original)
