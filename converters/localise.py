"""Where do two models first disagree? Run both with forward hooks, pair their modules through the
tensors the conversion gave them, and name the first module (in call order) whose output differs.

Pairing needs no name rules: the converted model holds the original tensors (assigned, not copied)
and so does the oracle (timm's filter renames and reshapes views), so a transformers module and
an oracle module that hold the same original tensor are the same module of the original network.
Tensors an operation copied (a split qkv) are paired by value instead.
"""

from __future__ import annotations

import itertools

import torch


def _leaves(model: torch.nn.Module):
    return [(name, m) for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]


def _first_param(module) -> torch.Tensor:
    params = dict(module.named_parameters(recurse=False))
    return params.get("weight", next(iter(params.values())))


def pair_modules(converted: torch.nn.Module, oracle: torch.nn.Module) -> list[tuple[str, str]]:
    """(converted module name, oracle module name) for modules holding the same original weight."""
    by_storage, by_value = {}, []
    for name, module in _leaves(oracle):
        w = _first_param(module)
        by_storage.setdefault(w.untyped_storage().data_ptr(), name)
        by_value.append((name, w))
    pairs = []
    for name, module in _leaves(converted):
        w = _first_param(module)
        match = by_storage.get(w.untyped_storage().data_ptr())
        if match is None:
            match = next((n for n, v in by_value if v.numel() == w.numel() and torch.equal(v.reshape(w.shape), w)), None)
        if match is not None:
            pairs.append((name, match))
    return pairs


def _aligned_diff(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Max abs diff, allowing for a layout permutation (channels-last vs channels-first)."""
    if a.shape == b.shape:
        return (a - b).abs().max().item()
    if a.numel() != b.numel() or a.ndim != b.ndim or a.ndim > 5:
        return None
    diffs = [(a - b.permute(p)).abs().max().item() for p in itertools.permutations(range(b.ndim)) if b.permute(p).shape == a.shape]
    return min(diffs) if diffs else None


def first_divergence(converted, oracle, converted_inputs: dict, oracle_inputs: tuple, atol: float) -> str:
    """A sentence naming the first paired module whose output differs by more than `atol` (or
    1e-4 of its magnitude, whichever is larger)."""
    if not isinstance(oracle, torch.nn.Module):
        oracle = getattr(oracle, "model", oracle)
    if not isinstance(oracle, torch.nn.Module):
        return "divergence not localised: the oracle is not a torch module"
    pairs = pair_modules(converted, oracle)
    outputs: dict[tuple[str, str], list] = {}
    order: list[str] = []
    handles = []

    def hook(side: str, name: str):
        def record(module, args, output):
            if isinstance(output, torch.Tensor):
                outputs.setdefault((side, name), []).append(output.detach())
                if side == "converted":
                    order.append(name)
        return record

    pair_of = dict(pairs)
    for side, model, names in (("converted", converted, set(pair_of)), ("oracle", oracle, set(pair_of.values()))):
        modules = dict(model.named_modules())
        handles += [modules[n].register_forward_hook(hook(side, n)) for n in names]
    try:
        with torch.inference_mode():
            converted(**converted_inputs)
            oracle(*oracle_inputs)
    finally:
        for h in handles:
            h.remove()

    for name in dict.fromkeys(order):
        ours, theirs = outputs.get(("converted", name)), outputs.get(("oracle", pair_of[name]))
        if not ours or not theirs or len(ours) != len(theirs):
            continue
        diffs = [_aligned_diff(a, b) for a, b in zip(ours, theirs)]
        if any(d is None for d in diffs):
            continue
        # Float noise grows with activation size; a mapping bug is an O(1) relative error.
        scale = max(t.abs().max().item() for t in theirs)
        if max(diffs) > max(atol, 1e-4 * scale):
            return f"first divergence at {name} (oracle {pair_of[name]}): max abs diff {max(diffs):.3g} > atol {atol:.1g}"
    return f"no paired module diverges beyond atol {atol:.1g} ({len(pairs)} pairs compared): the difference arises in unpaired code"
