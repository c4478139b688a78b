"""Convert original vision checkpoints to Hugging Face transformers, and back.

    import converters
    case = converters.get("convnextv2_atto_1k_224")
    hf_state, coverage = converters.convert(case, original_state)
    assert coverage.ok, coverage.describe()
    model = converters.build_model(case, hf_state)

Each family module (`converters/<family>.py`) declares its cases and its plan as data.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Mapping

import torch

from . import compat
from .case import Case, random_state
from .checkpoint import CheckpointError, load
from .plan import Coverage, Plan, meta_state

families = ("convnextv2", "resnet", "regnet_seer", "vit_hybrid", "data2vec_vision")

__all__ = [
    "Case", "CheckpointError", "Coverage", "Plan", "families", "cases", "get", "family",
    "build_config", "build_model", "target_layout", "original_layout", "convert", "revert",
    "synthetic_original", "load_original", "image_processor", "source_transform", "oracle",
]


def _available() -> dict[str, ModuleType]:
    mods = {}
    for name in families:
        try:
            mods[name] = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":  # a family whose own imports fail is a real error
                raise
    return mods


def family(case: Case) -> ModuleType:
    return importlib.import_module(f"{__name__}.{case.family}")


def cases(family_name: str | None = None) -> list[Case]:
    return [c for name, mod in _available().items() if family_name in (None, name) for c in mod.CASES]


def get(case_id: str) -> Case:
    by_id = {c.id: c for c in cases()}
    if case_id not in by_id:
        close = difflib.get_close_matches(case_id, by_id, n=3)
        raise KeyError(f"unknown case {case_id!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    return by_id[case_id]


def build_config(case: Case):
    kwargs = dict(case.config)
    if kwargs.get("num_labels") == 1000 and "id2label" not in kwargs:
        from timm.data import ImageNetInfo  # ImageNet-1k names ship with timm: no download

        info = ImageNetInfo()
        kwargs["id2label"] = {i: info.index_to_description(i) for i in range(1000)}
        kwargs["label2id"] = {v: k for k, v in kwargs["id2label"].items()}
    return compat.get_class(case.config_class)(**kwargs)


def target_layout(case: Case) -> dict[str, torch.Tensor]:
    """Keys and shapes of the running transformers model, on the meta device (no memory)."""
    return meta_state(compat.build_model(case.model_class, build_config(case), device="meta").state_dict())


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """Keys and shapes of the original checkpoint, on the meta device."""
    return family(case).original_layout(case)


def synthetic_original(case: Case) -> dict[str, torch.Tensor]:
    """A checkpoint in the exact original layout, every tensor random, seeded by case id."""
    return random_state(original_layout(case), case.seed)


def plan(case: Case) -> Plan:
    return family(case).plan(case)


def convert(case: Case, original: Mapping[str, torch.Tensor]):
    """Original state dict -> (transformers state dict, coverage report against the target)."""
    return plan(case).forwards(original, target=target_layout(case))


def revert(case: Case, converted: Mapping[str, torch.Tensor]):
    """Transformers state dict -> (original state dict, coverage report against the original layout)."""
    return plan(case).backwards(converted, target=original_layout(case))


def build_model(case: Case, state: Mapping[str, torch.Tensor]):
    """The transformers model holding `state` (strict: every key, every shape). The tensors are
    assigned, not copied: a 2.6 GB model costs no second 2.6 GB."""
    model = compat.build_model(case.model_class, build_config(case))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_original(case: Case, path, mmap: bool = False):
    """Safe load of an original file (weights_only + the family's allow-list), unwrapped."""
    mod = family(case)
    return load(path, case.id, unwrap=getattr(mod, "UNWRAP", ()), allow=getattr(mod, "ALLOW", ()), mmap=mmap)


def image_processor(case: Case):
    """The transformers image processor (PIL backend) that reproduces the original evaluation."""
    return compat.image_processor_class(case.processor_class)(**case.processor)


def source_transform(case: Case):
    """The original evaluation preprocessing (PIL image -> tensor); timm's own by default."""
    mod = family(case)
    if hasattr(mod, "source_transform"):
        return mod.source_transform(case)
    from .reference import timm_transform

    return timm_transform(case.timm_tag)


def oracle(case: Case, original: Mapping[str, torch.Tensor]):
    """An implementation we did not write, loaded with the original checkpoint: pixels -> output."""
    return family(case).oracle(case, original)
