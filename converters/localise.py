"""Where do two models first disagree? Run both with forward hooks, pair their modules through the
tensors the conversion gave them, and name the first module (in call order) whose output differs.

Pairing needs no name rules: the converted model holds the original tensors (assigned, not copied)
and so does the oracle (timm's filter renames and reshapes views), so a transformers module and
an oracle module that hold the same original tensor are the same module of the original network.
Tensors an operation copied (a split qkv) are paired by value instead.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from .metrics import max_abs_diff


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


def _alignments(a: torch.Tensor, like: torch.Tensor):
    """`a` in `like`'s layout: itself, or each permutation of its dimensions (channels-last vs
    channels-first) that gives `like`'s shape."""
    if a.shape == like.shape:
        yield a
    elif a.numel() == like.numel() and a.ndim == like.ndim and a.ndim <= 5:
        yield from (a.permute(p) for p in itertools.permutations(range(a.ndim)) if a.permute(p).shape == like.shape)


def _aligned_diff(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Max abs diff, allowing for a layout permutation: the smallest over the permutations that fit."""
    return min((max_abs_diff(a, p) for p in _alignments(b, a)), default=None)


def first_divergence(converted, oracle, converted_inputs: dict, oracle_inputs: tuple, atol: float) -> str:
    """A sentence naming the first paired module whose output differs by more than `atol` (or
    1e-4 of its magnitude, whichever is larger)."""
    oracle = _module_of(oracle)
    if oracle is None:
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


# --------------------------------------------------------------------------- per-block parity

# A block is an element of a ModuleList / Sequential holding at least this many parameterised
# modules, the innermost such: a transformer layer, a ConvNeXt or bottleneck block, a RegNet-Y
# layer; not a conv-norm pair (two), which is a part of a block.
BLOCK_MIN_LEAVES = 3


@dataclass
class BlockError:
    block: str  # the converted model's module name
    oracle: str  # the oracle's module holding the same original tensors
    max_abs_diff: float
    relative: float  # max abs diff / the max abs of the oracle block's output
    over: bool  # beyond max(atol, rtol * magnitude)
    tolerance: float | None = None  # max(atol, rtol * magnitude): the chart of the HTML report draws it


@dataclass
class BlockParity:
    blocks: list[BlockError]
    unpaired: list[str]  # blocks with no oracle counterpart, or whose input layouts differ
    atol: float
    rtol: float

    @property
    def worst(self) -> BlockError | None:
        return max(self.blocks, key=lambda b: b.relative, default=None)

    @property
    def first_over(self) -> BlockError | None:
        return next((b for b in self.blocks if b.over), None)

    def describe(self) -> str:
        if not self.blocks:
            return f"per-block parity: no block paired with the oracle ({len(self.unpaired)} unpaired)"
        worst, first = self.worst, self.first_over
        said = (f"first block over tolerance {first.block} (oracle {first.oracle}): max abs diff "
                f"{first.max_abs_diff:.3g}, {first.relative:.3g} of its output" if first else
                f"no block over tolerance max(atol {self.atol:.1g}, {self.rtol:.0e} x its output)")
        return (f"per-block parity (each of {len(self.blocks)} blocks run on the oracle's input to it): {said}; "
                f"worst block {worst.block}: max abs diff {worst.max_abs_diff:.3g}, {worst.relative:.3g} of its output")

    def figures(self) -> dict:
        worst, first = self.worst, self.first_over
        return {"blocks": [[b.block, b.max_abs_diff, b.relative] for b in self.blocks],
                "worst_block": worst.block if worst else None, "first_block_over": first.block if first else None,
                "unpaired_blocks": self.unpaired, "tolerances": [b.tolerance for b in self.blocks]}


def _leaf_names(model: torch.nn.Module) -> dict[str, frozenset]:
    """module name -> the names of the parameterised leaves under it."""
    leaves = [name for name, _ in _leaves(model)]
    return {name: frozenset(l for l in leaves if l == name or l.startswith(name + "." if name else ""))
            for name, _ in model.named_modules()}


def _blocks(model: torch.nn.Module) -> list[str]:
    leaves = _leaf_names(model)
    listed = {f"{name}.{child}" if name else child for name, m in model.named_modules()
              if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential)) for child, _ in m.named_children()}
    candidates = [n for n in listed if len(leaves.get(n, ())) >= BLOCK_MIN_LEAVES]  # (a shared module is listed once)
    innermost = {n for n in candidates if not any(o != n and o.startswith(n + ".") for o in candidates)}
    return [name for name, _ in model.named_modules() if name in innermost]  # in module order


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return getattr(value, "last_hidden_state", None) if not isinstance(value, (tuple, list)) else None


def _aligned_to(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """`a` in `like`'s layout (the first alignment), else None."""
    return next(_alignments(a, like), None)


def _module_of(oracle):
    """The torch module behind an oracle: the module, a callable's `.model`, a bound method's owner."""
    for candidate in (oracle, getattr(oracle, "model", None), getattr(oracle, "__self__", None)):
        if isinstance(candidate, torch.nn.Module):
            return candidate
    return None


def block_parity(converted, oracle, converted_inputs: dict, oracle_inputs: tuple, atol: float,
                 rtol: float = 1e-4) -> BlockParity:
    """Teacher forcing: each block of the converted model is run on the oracle's input to the
    matching oracle block, and its output compared with that oracle block's output, so a fault
    shows at the block that has it instead of accumulating downstream. Blocks pair by position
    (the i-th block of one model with the i-th of the other, in module order), never through
    the weights: a swapped or altered tensor must not change the pairing that exposes it. One
    oracle pass records the inputs and outputs; one converted pass, in which every block's input
    is replaced by the oracle's, gives each block's own error."""
    oracle_module = _module_of(oracle)
    if oracle_module is None:
        return BlockParity([], ["the oracle is not a torch module"], atol, rtol)
    ours_blocks, theirs_blocks = _blocks(converted), _blocks(oracle_module)
    if len(ours_blocks) != len(theirs_blocks) or not ours_blocks:
        return BlockParity([], [f"{len(ours_blocks)} blocks in the converted model, {len(theirs_blocks)} in the oracle"],
                           atol, rtol)
    pairs, unpaired = dict(zip(ours_blocks, theirs_blocks)), []

    recorded: dict[str, list] = {}
    modules = dict(oracle_module.named_modules())

    def record(name):
        def hook(module, args, kwargs, output):
            given = _first_tensor(args) if args else _first_tensor(kwargs.get("hidden_states"))
            output = _first_tensor(output)  # copies: later in-place ops (ReLU) must not change them
            recorded.setdefault(name, []).append(tuple(t if t is None else t.clone() for t in (given, output)))
        return hook

    handles = [modules[o].register_forward_hook(record(o), with_kwargs=True) for o in set(pairs.values())]
    try:
        with torch.inference_mode():
            oracle(*oracle_inputs)
    finally:
        for h in handles:
            h.remove()

    calls: dict[str, int] = {}
    errors: dict[str, list] = {}
    order: list[str] = []
    ours = dict(converted.named_modules())

    def force(block):
        def pre(module, args, kwargs):
            k = calls.get(block, 0)
            calls[block] = k + 1
            taken = recorded.get(pairs[block], [])
            if k >= len(taken) or taken[k][0] is None:
                return None
            if args and isinstance(args[0], torch.Tensor):
                given = _aligned_to(taken[k][0].clone(), args[0])  # a fresh copy: the block may work in place
                return None if given is None else ((given, *args[1:]), kwargs)
            if isinstance(kwargs.get("hidden_states"), torch.Tensor):
                given = _aligned_to(taken[k][0].clone(), kwargs["hidden_states"])
                return None if given is None else (args, {**kwargs, "hidden_states": given})
            return None

        def post(module, args, kwargs, output):
            k, taken = calls[block] - 1, recorded.get(pairs[block], [])
            mine = _first_tensor(output)
            if k < len(taken) and mine is not None and taken[k][1] is not None:
                theirs = _aligned_to(taken[k][1], mine)
                if theirs is not None:
                    errors.setdefault(block, []).append((max_abs_diff(mine, theirs), theirs.abs().max().item()))
                    order.append(block)
        return pre, post

    handles = []
    for block in pairs:
        pre, post = force(block)
        handles += [ours[block].register_forward_pre_hook(pre, with_kwargs=True),
                    ours[block].register_forward_hook(post, with_kwargs=True)]
    try:
        with torch.inference_mode():
            converted(**converted_inputs)
    finally:
        for h in handles:
            h.remove()
    blocks = []
    for block in dict.fromkeys(order):  # in the order the blocks finished
        diff = max(d for d, _ in errors[block])
        scale = max(s for _, s in errors[block])
        blocks.append(BlockError(block, pairs[block], diff, diff / scale if scale else float(diff > 0),
                                 not diff <= max(atol, rtol * scale), max(atol, rtol * scale)))
    unpaired += [b for b in pairs if b not in errors]
    return BlockParity(blocks, unpaired, atol, rtol)
