"""Pair two implementations' tensors by the order their forward first uses them, and by shape.

`converters.trace` pairs whole modules in the order their forwards finish; that needs one module
per module. Here the unit is the tensor: every state-dict entry is recorded at its first use by
any torch function (a `TorchFunctionMode`), so a weight used functionally (timm's BEiT runs its
fused qkv through `F.linear` with biases it concatenates itself) still has a place, and a fused
tensor can pair with the several tensors it is split into. Both models run on the meta device:
shapes only, no memory, no arithmetic.

The two orders are walked together: equal shapes pair (a copy); equal sizes pair as a reshape (a
2-D shape reversed: a transpose); one tensor whose shape is consecutive tensors of one shape
concatenated pairs as a split (or a concatenation the other way). Where the orders differ locally
(q, k, v biases before or after their weights), the smallest windows of equal total size pair by
shape, in order within each shape. Entries a forward never uses (BatchNorm's
`num_batches_tracked`, a mask token) pair next to their state-dict neighbour. Anything else is a
`PairingError` listing the unpaired entries with their shapes, or, where two entries of one shape
could take one place, both: never decided silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .quote import quote

WINDOW = 64  # entries on both sides of one reordered window: beyond it the orders do not pair
# torch functions that read a tensor's metadata, not its values: not a use
_NOT_A_USE = {"__get__", "size", "dim", "numel", "is_floating_point", "element_size", "stride", "__len__",
              "data_ptr", "is_contiguous", "storage_offset", "type", "requires_grad_", "__format__", "__repr__"}


class PairingError(RuntimeError):
    pass


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    def text(self) -> str:
        return f"{quote(self.name)} {self.shape}"


@dataclass(frozen=True)
class Pair:
    """kind: "copy", "reshape", "transpose" (one to one), "split" (one source -> targets, `dim`),
    "concat" (sources -> one target, `dim`)."""

    kind: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    dim: int = 0


class _FirstUse(TorchFunctionMode):
    def __init__(self, names: dict[int, str]):
        super().__init__()
        self.names, self.order, self.seen = names, [], set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in _NOT_A_USE:
            for value in _flat((args, kwargs)):
                if isinstance(value, torch.Tensor) and id(value) in self.names and id(value) not in self.seen:
                    self.seen.add(id(value))
                    self.order.append(self.names[id(value)])
        return func(*args, **kwargs)


def _flat(value):
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flat(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flat(item)
    else:
        yield value


def use_order(model: nn.Module, run) -> tuple[list[Entry], list[Entry]]:
    """(entries in the order `run(model)` first uses them, entries it never uses), state-dict
    entries only (parameters and persistent buffers)."""
    state = model.state_dict(keep_vars=True)
    names: dict[int, str] = {}
    for name, tensor in state.items():
        names.setdefault(id(tensor), name)
    mode = _FirstUse(names)
    with torch.no_grad(), mode:
        run(model)
    used = set(mode.order)
    entry = {name: Entry(name, tuple(t.shape)) for name, t in state.items()}
    return [entry[n] for n in mode.order], [entry[n] for n in state if n not in used and names.get(id(state[n])) == n]


def _cat_dim(parts: Sequence[tuple[int, ...]], whole: tuple[int, ...]) -> int | None:
    """The dimension along which `parts` concatenate to `whole`, if exactly one."""
    found = []
    for d in range(len(whole)):
        if all(len(p) == len(whole) and all(p[k] == whole[k] for k in range(len(whole)) if k != d) for p in parts) \
                and sum(p[d] for p in parts) == whole[d]:
            found.append(d)
    return found[0] if len(found) == 1 else None


def _one_to_one(a: Entry, b: Entry) -> Pair | None:
    if a.shape == b.shape:
        return Pair("copy", (a.name,), (b.name,))
    if a.numel == b.numel:
        transposed = len(a.shape) == 2 and a.shape == b.shape[::-1]
        return Pair("transpose" if transposed else "reshape", (a.name,), (b.name,))
    return None


def _fused(one: Entry, many: Sequence[Entry]) -> tuple[int, int] | None:
    """(count, dim) when `one` is the first `count` >= 2 entries of `many` (one shape) concatenated."""
    for count in range(2, min(len(many), 16) + 1):
        group = many[:count]
        if len({e.shape for e in group}) != 1:
            return None
        if sum(e.numel for e in group) == one.numel:
            dim = _cat_dim([e.shape for e in group], one.shape)
            return (count, dim) if dim is not None else None
        if sum(e.numel for e in group) > one.numel:
            return None
    return None


def _pieces(whole: Entry, pool: list[Entry]) -> tuple[list[Entry], int | None]:
    """The first `count` >= 2 entries of `pool` of one shape (in order, others between them
    allowed: q.weight, q.bias, k.weight, ...) that `whole` is the concatenation of."""
    for dim, size in enumerate(whole.shape):
        for count in range(2, 17):
            if size % count:
                continue
            piece = whole.shape[:dim] + (size // count,) + whole.shape[dim + 1:]
            group = [b for b in pool if b.shape == piece][:count]
            if len(group) == count:
                return group, dim
    return [], None


def _window(src: list[Entry], tgt: list[Entry]) -> list[Pair]:
    """Pair a reordered window of equal total size: by shape in order, then fused leftovers."""
    pairs, left_src, left_tgt = [], list(src), list(tgt)
    for a in src:
        match = next((b for b in left_tgt if b.shape == a.shape), None)
        if match is not None:
            pairs.append(Pair("copy", (a.name,), (match.name,)))
            left_src.remove(a)
            left_tgt.remove(match)
    for fused_side, parts_side, kind in ((left_src, left_tgt, "split"), (left_tgt, left_src, "concat")):
        for a in list(fused_side):
            group, dim = _pieces(a, parts_side)
            if group:
                names = tuple(b.name for b in group)
                pairs.append(Pair(kind, (a.name,), names, dim) if kind == "split" else Pair(kind, names, (a.name,), dim))
                fused_side.remove(a)
                for b in group:
                    parts_side.remove(b)
    if left_src or left_tgt:
        raise PairingError(_unpaired(left_src, left_tgt, "in a window of equal size the orders do not pair"))
    return pairs


def align(src: list[Entry], tgt: list[Entry]) -> list[Pair]:
    """Pair two use orders (see the module docstring)."""
    pairs, i, j = [], 0, 0
    while i < len(src) and j < len(tgt):
        one = _one_to_one(src[i], tgt[j])
        if one is not None and one.kind == "copy":
            pairs.append(one)
            i, j = i + 1, j + 1
            continue
        split = _fused(src[i], tgt[j:])
        if split:
            count, dim = split
            pairs.append(Pair("split", (src[i].name,), tuple(e.name for e in tgt[j:j + count]), dim))
            i, j = i + 1, j + count
            continue
        concat = _fused(tgt[j], src[i:])
        if concat:
            count, dim = concat
            pairs.append(Pair("concat", tuple(e.name for e in src[i:i + count]), (tgt[j].name,), dim))
            i, j = i + count, j + 1
            continue
        if one is not None:
            pairs.append(one)
            i, j = i + 1, j + 1
            continue
        p, q, a, b = i + 1, j + 1, src[i].numel, tgt[j].numel
        while a != b:
            if (p - i) + (q - j) > WINDOW or (a < b and p >= len(src)) or (a > b and q >= len(tgt)):
                raise PairingError(_unpaired(src[i:p], tgt[j:q], "no window of equal size pairs them"))
            if a < b:
                a, p = a + src[p].numel, p + 1
            else:
                b, q = b + tgt[q].numel, q + 1
        pairs += _window(src[i:p], tgt[j:q])
        i, j = p, q
    if i < len(src) or j < len(tgt):
        raise PairingError(_unpaired(src[i:], tgt[j:], "left over at the end of one order"))
    return pairs


def by_local_names(pairs: list[Pair], src_shapes: dict, tgt_shapes: dict) -> tuple[list[Pair], list[str]]:
    """Within one module of each side, entries of one shape pair by the order of first use unless
    both sides name them alike (GRN's `weight` and `bias`: timm uses the bias first, transformers
    the weight): then by name. Returns the pairs and a note per module re-paired."""
    groups: dict[tuple, list[int]] = {}
    for n, pair in enumerate(pairs):
        if pair.kind in ("copy", "reshape", "transpose"):
            a, b = pair.sources[0], pair.targets[0]
            groups.setdefault((a.rpartition(".")[0], b.rpartition(".")[0], src_shapes[a], tgt_shapes[b]), []).append(n)
    out, notes = list(pairs), {}
    for (src_module, tgt_module, _, _), members in groups.items():
        if len(members) < 2:
            continue
        leaf = {pairs[n].sources[0].rpartition(".")[2]: pairs[n].sources[0] for n in members}
        targets = {pairs[n].targets[0].rpartition(".")[2]: pairs[n].targets[0] for n in members}
        if set(leaf) != set(targets) or all(pairs[n].sources[0].rpartition(".")[2] == pairs[n].targets[0].rpartition(".")[2] for n in members):
            continue
        for n in members:
            name = pairs[n].targets[0].rpartition(".")[2]
            out[n] = Pair(pairs[n].kind, (leaf[name],), pairs[n].targets, pairs[n].dim)
        where = (re.sub(r"\d+", "#", src_module), re.sub(r"\d+", "#", tgt_module), tuple(sorted(leaf)))
        notes[where] = notes.get(where, 0) + 1
    return out, [f"{quote(a)} -> {quote(b)} ({n} modules, # a number): entries of one shape paired by their names "
                 f"({', '.join(names)}), not by the order of first use, which differs" for (a, b, names), n in notes.items()]


def pair_unused(pairs: list[Pair], src_state: list[str], tgt_state: list[str], src_unused: list[Entry],
                tgt_unused: list[Entry]) -> tuple[list[Pair], list[Entry], list[Entry]]:
    """Pair entries no forward used next to their state-dict neighbours: a target entry takes the
    source entry that follows its predecessor's partner, when that one is unused too and of its
    shape. Returns the new pairs and what stays unpaired on each side."""
    partner = {t: s for pair in pairs if len(pair.sources) == 1 for t in pair.targets for s in pair.sources}
    src_left = {e.name: e for e in src_unused}
    new, tgt_left = [], []
    src_index = {name: n for n, name in enumerate(src_state)}
    for entry in tgt_unused:
        position = tgt_state.index(entry.name)
        match = None
        if position > 0 and tgt_state[position - 1] in partner:
            before = src_index.get(partner[tgt_state[position - 1]])
            candidate = src_state[before + 1] if before is not None and before + 1 < len(src_state) else None
            if candidate in src_left and src_left[candidate].shape == entry.shape:
                match = candidate
        if match is None:
            tgt_left.append(entry)
            continue
        new.append(Pair("copy", (match,), (entry.name,)))
        partner[entry.name] = match
        del src_left[match]
    return new, list(src_left.values()), tgt_left


def ambiguous(src_left: list[Entry], tgt_left: list[Entry]) -> list[str]:
    """Unpaired entries two of which share a shape on one side with a candidate of that shape on
    the other: an order cannot tell them apart."""
    lines = []
    for shape in {e.shape for e in src_left} & {e.shape for e in tgt_left}:
        a = [e for e in src_left if e.shape == shape]
        b = [e for e in tgt_left if e.shape == shape]
        if len(a) > 1 or len(b) > 1:
            lines.append(f"ambiguous pairing of shape {shape}: sources {', '.join(e.text() for e in a[:10])} "
                         f"and targets {', '.join(e.text() for e in b[:10])}")
    return lines


def _unpaired(src: Sequence[Entry], tgt: Sequence[Entry], why: str) -> str:
    shown = 12
    lines = [f"cannot pair the two models ({why}):",
             f"  source entries ({len(src)}): " + ", ".join(e.text() for e in src[:shown]) + (" ..." if len(src) > shown else ""),
             f"  target entries ({len(tgt)}): " + ", ".join(e.text() for e in tgt[:shown]) + (" ..." if len(tgt) > shown else "")]
    return "\n".join(lines)
