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

from .hooks import forward_hooks
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


def _alignments(a: torch.Tensor, like: torch.Tensor, declared=None):
    """`a` (an oracle tensor) in `like`'s layout (the converted model's), every way the core knows:
    itself; a permutation of its dimensions (channels-last vs channels-first); a (B, H, W, C) map as
    a (B, H*W, C) token sequence (the same elements: a reshape) or back; a (B, C, H, W) map as a
    (B, H*W, C) sequence (flatten and transpose) or back; then the family's own rule
    (`Family.block_alignment`), when it declares one."""
    if a.shape == like.shape:
        yield a
    elif a.numel() == like.numel():
        if a.ndim == like.ndim and a.ndim <= 5:
            yield from (a.permute(p) for p in itertools.permutations(range(a.ndim)) if a.permute(p).shape == like.shape)
        if a.ndim == 4 and like.ndim == 3:
            b, h, w, c = a.shape
            if like.shape == (b, h * w, c):  # (B, H, W, C) -> (B, H*W, C)
                yield a.flatten(1, 2)
            b, c, h, w = a.shape
            if like.shape == (b, h * w, c):  # (B, C, H, W) -> (B, H*W, C)
                yield a.flatten(2).transpose(1, 2)
        if a.ndim == 3 and like.ndim == 4:
            b, h, w, c = like.shape
            if a.shape == (b, h * w, c):  # (B, H*W, C) -> (B, H, W, C)
                yield a.reshape(like.shape)
            b, c, h, w = like.shape
            if a.shape == (b, h * w, c):  # (B, H*W, C) -> (B, C, H, W)
                yield a.transpose(1, 2).reshape(like.shape)
    if declared is not None:
        aligned = declared(a, like)
        if aligned is not None and aligned.shape == like.shape:
            yield aligned


DERIVED = ("equal shapes, a permutation of dimensions, (B, H, W, C) <-> (B, H*W, C), "
           "(B, C, H, W) <-> (B, H*W, C)")
DECLARE = ("Family.block_alignment: (oracle block tensor, converted block tensor) -> the oracle tensor in "
           "the converted model's layout, or None")


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
    watched = []

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
        watched += [(modules[n], hook(side, n)) for n in names]
    with forward_hooks(watched), torch.inference_mode():
        converted(**converted_inputs)
        oracle(*oracle_inputs)

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
    # every block not compared, with why: no oracle counterpart, or input / output layouts that no
    # rule aligns (both shapes given)
    unpaired: list[str]
    atol: float
    rtol: float
    owner: str = "the model"  # whose blocks: "family 'name'"

    @property
    def worst(self) -> BlockError | None:
        return max(self.blocks, key=lambda b: b.relative, default=None)

    @property
    def first_over(self) -> BlockError | None:
        return next((b for b in self.blocks if b.over), None)

    def describe(self) -> str:
        unpaired = (f"; {len(self.unpaired)} unpaired: " + "; ".join(self.unpaired) +
                    f" (derived alignments: {DERIVED}; declare {DECLARE})") if self.unpaired else ""
        if not self.blocks:
            return f"per-block parity of {self.owner}: no block paired with the oracle{unpaired}"
        worst, first = self.worst, self.first_over
        said = (f"first block over tolerance {first.block} (oracle {first.oracle}): max abs diff "
                f"{first.max_abs_diff:.3g}, {first.relative:.3g} of its output" if first else
                f"no block over tolerance max(atol {self.atol:.1g}, {self.rtol:.0e} x its output)")
        return (f"per-block parity of {self.owner} (each of {len(self.blocks)} blocks run on the oracle's input to it): "
                f"{said}; worst block {worst.block}: max abs diff {worst.max_abs_diff:.3g}, "
                f"{worst.relative:.3g} of its output{unpaired}")

    def figures(self) -> dict:
        worst, first = self.worst, self.first_over
        return {"blocks": [[b.block, b.max_abs_diff, b.relative] for b in self.blocks],
                "worst_block": worst.block if worst else None, "first_block_over": first.block if first else None,
                "unpaired_blocks": self.unpaired, "tolerances": [b.tolerance for b in self.blocks]}


def _leaf_names(model: torch.nn.Module) -> dict[str, frozenset]:
    """module name -> the names of the parameterised leaves under it."""
    leaves = [name for name, _ in _leaves(model)]
    return {name: frozenset(leaf for leaf in leaves if leaf == name or leaf.startswith(name + "." if name else ""))
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


def _aligned_to(a: torch.Tensor, like: torch.Tensor, declared=None) -> torch.Tensor | None:
    """`a` in `like`'s layout (the first alignment), else None."""
    return next(_alignments(a, like, declared), None)


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else "no tensor"


def _module_of(oracle):
    """The torch module behind an oracle: the module, a callable's `.model`, a bound method's owner."""
    for candidate in (oracle, getattr(oracle, "model", None), getattr(oracle, "__self__", None)):
        if isinstance(candidate, torch.nn.Module):
            return candidate
    return None


def block_parity(converted, oracle, converted_inputs: dict, oracle_inputs: tuple, atol: float,
                 rtol: float = 1e-4, family=None) -> BlockParity:
    """Teacher forcing: each block of the converted model is run on the oracle's input to the
    matching oracle block, and its output compared with that oracle block's output, so a fault
    shows at the block that has it instead of accumulating downstream. Blocks pair by position
    (the i-th block of one model with the i-th of the other, in module order), never through
    the weights: a swapped or altered tensor must not change the pairing that exposes it. One
    oracle pass records the inputs and outputs; one converted pass, in which every block's input
    is replaced by the oracle's, gives each block's own error. Inputs and outputs are aligned by
    the derived rules (`_alignments`) and the `family`'s `block_alignment`; a block none aligns is
    unpaired, with both shapes and why."""
    declared = getattr(family, "block_alignment", None)
    owner = f"family {family.name!r}" if family is not None else "the model"
    oracle_module = _module_of(oracle)
    if oracle_module is None:
        return BlockParity([], ["the oracle is not a torch module"], atol, rtol, owner)
    ours_blocks, theirs_blocks = _blocks(converted), _blocks(oracle_module)
    if len(ours_blocks) != len(theirs_blocks) or not ours_blocks:
        return BlockParity([], [f"{len(ours_blocks)} blocks in the converted model, {len(theirs_blocks)} in the oracle "
                                f"(a block: the innermost element of a ModuleList / Sequential with >= {BLOCK_MIN_LEAVES} "
                                "modules holding parameters)"], atol, rtol, owner)
    pairs, why = dict(zip(ours_blocks, theirs_blocks)), {}

    recorded: dict[str, list] = {}
    modules = dict(oracle_module.named_modules())

    def record(name):
        def hook(module, args, kwargs, output):
            given = _first_tensor(args) if args else _first_tensor(kwargs.get("hidden_states"))
            output = _first_tensor(output)  # copies: later in-place ops (ReLU) must not change them
            recorded.setdefault(name, []).append(tuple(t if t is None else t.clone() for t in (given, output)))
        return hook

    with forward_hooks(((modules[o], record(o)) for o in set(pairs.values())), with_kwargs=True), torch.inference_mode():
        oracle(*oracle_inputs)

    calls: dict[str, int] = {}
    forced: dict[str, bool] = {}
    errors: dict[str, list] = {}
    order: list[str] = []
    ours = dict(converted.named_modules())

    def force(block):
        where = f"{block} (oracle {pairs[block]})"

        def pre(module, args, kwargs):
            k = calls.get(block, 0)
            calls[block] = k + 1
            forced[block] = False
            taken = recorded.get(pairs[block], [])
            if k >= len(taken) or taken[k][0] is None:
                why[block] = f"{where}: the oracle block was not called with a tensor (call {k + 1})"
                return None
            theirs = taken[k][0]
            if args and isinstance(args[0], torch.Tensor):
                mine, put = args[0], lambda given: ((given, *args[1:]), kwargs)
            elif isinstance(kwargs.get("hidden_states"), torch.Tensor):
                mine, put = kwargs["hidden_states"], lambda given: (args, {**kwargs, "hidden_states": given})
            else:
                why[block] = f"{where}: the block takes no tensor as its first argument or hidden_states"
                return None
            given = _aligned_to(theirs.clone(), mine, declared)  # a fresh copy: the block may work in place
            if given is None:
                why[block] = f"{where}: input {_shape(mine)}, the oracle's input {_shape(theirs)}: no rule aligns them"
                return None
            forced[block] = True
            return put(given)

        def post(module, args, kwargs, output):
            k, taken = calls[block] - 1, recorded.get(pairs[block], [])
            if not forced.get(block):  # a block not run on the oracle's input: its output proves nothing
                return
            mine = _first_tensor(output)
            theirs = taken[k][1] if k < len(taken) else None
            aligned = None if mine is None or theirs is None else _aligned_to(theirs, mine, declared)
            if aligned is None:
                why[block] = f"{where}: output {_shape(mine)}, the oracle's output {_shape(theirs)}: no rule aligns them"
                return
            errors.setdefault(block, []).append((max_abs_diff(mine, aligned), aligned.abs().max().item()))
            order.append(block)
        return pre, post

    forcing = {block: force(block) for block in pairs}
    with forward_hooks([(ours[b], post) for b, (_, post) in forcing.items()],
                       before=[(ours[b], pre) for b, (pre, _) in forcing.items()], with_kwargs=True), torch.inference_mode():
        converted(**converted_inputs)
    blocks = []
    for block in dict.fromkeys(order):  # in the order the blocks finished
        diff = max(d for d, _ in errors[block])
        scale = max(s for _, s in errors[block])
        blocks.append(BlockError(block, pairs[block], diff, diff / scale if scale else float(diff > 0),
                                 not diff <= max(atol, rtol * scale), max(atol, rtol * scale)))
    unpaired = [why.get(b, f"{b} (oracle {pairs[b]}): not called") for b in pairs if b not in errors or b in why]
    return BlockParity(blocks, unpaired, atol, rtol, owner)
