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
    if actual.numel() == 0 or (actual.dtype == expected.dtype and torch.equal(actual, expected)):
        return 0.0  # no copy: a memory-mapped 40 GB checkpoint is compared without memory
    worst = 0.0
    a, e = actual.reshape(-1), expected.reshape(-1)
    for start in range(0, a.numel(), CHUNK):  # in float64, a chunk at a time
        diff = (a[start:start + CHUNK].double() - e[start:start + CHUNK].double()).abs().max().item()
        if diff != diff:
            return float("inf")
        worst = max(worst, diff)
    return worst


CHUNK = 1 << 22  # elements: 32 MiB of float64 per operand
