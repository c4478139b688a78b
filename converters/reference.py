"""Independent references built from timm: its model fed the original checkpoint through timm's
own filter, and its evaluation transform from its own pretrained config."""

from __future__ import annotations

from typing import Callable, Mapping

import torch


def timm_model(arch: str, original: Mapping[str, torch.Tensor], filter_fn: Callable | None, **kwargs):
    import timm

    model = timm.create_model(arch, pretrained=False, **kwargs)
    state = filter_fn(dict(original), model) if filter_fn else dict(original)
    model.load_state_dict(state, strict=True, assign=True)  # no second copy of the weights
    return model.eval()


def timm_data_config(tag: str) -> dict:
    import timm
    from timm.data import resolve_data_config

    return resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(tag).to_dict())


def timm_transform(tag: str):
    """timm's evaluation transform for a pretrained tag: PIL image -> normalised tensor."""
    from timm.data import create_transform

    return create_transform(**timm_data_config(tag))
