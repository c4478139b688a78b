"""How close two outputs are: every figure a tolerance decision or a report needs."""

from __future__ import annotations

import torch


def compare(actual: torch.Tensor, expected: torch.Tensor) -> dict:
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    a, e = actual.detach().double().flatten(1), expected.detach().double().flatten(1)
    diff = (a - e).abs()
    figures = {
        "max_abs_diff": diff.max().item(),
        "max_rel_diff": (diff / e.abs().clamp_min(1e-6)).max().item(),
        "cosine_similarity": torch.nn.functional.cosine_similarity(a, e, dim=1).min().item(),
    }
    if actual.ndim == 2 and actual.shape[1] >= 5:  # class logits: do the top-5 classes agree?
        same = [set(x.tolist()) == set(y.tolist()) for x, y in zip(a.topk(5).indices, e.topk(5).indices)]
        figures["top5_agreement"] = sum(same) / len(same)
    return figures


def max_abs_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """One figure for tensors that should be equal: inf when shapes differ or a NaN appears."""
    if actual.shape != expected.shape:
        return float("inf")
    if actual.numel() == 0:
        return 0.0
    diff = (actual.double() - expected.double()).abs().max().item()
    return float("inf") if diff != diff else diff
