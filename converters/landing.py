"""Where each original element lands: distinct values in, original (key, index) read back out.

Every element of an original state dict gets its own value, a code: 2**40 plus its global index,
as float64 (exact to 2**53; integer tensors keep int64). A sum of two codes is above every code, so
arithmetic that mixes elements (a filter that folds a position embedding into the class
token) reads back as "no original element", never as a wrong one. After any chain of
copies, slices, reshapes, transposes and concatenations, `decode` turns a tensor back into the
original key and flat index of each element, and `describe` names the operation: a tensor's
`Source`. The same reading serves a drafted plan and a hand-written one, so two plans compare by
what they do to every element, not by how they are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from .quote import listing, quote

BASE = 2**40


class LandingError(RuntimeError):
    pass


@dataclass(frozen=True)
class Codes:
    """The coding of one original state dict: key order, offsets and shapes."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: torch.Tensor  # int64, len(keys) + 1

    def shape_of(self, key: str) -> tuple[int, ...]:
        return self.shapes[self.keys.index(key)]


def distinct(layout: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Codes]:
    """The layout (meta or real tensors) filled with codes: every element its own value."""
    keys = tuple(layout)
    shapes = tuple(tuple(v.shape) for v in layout.values())
    sizes = torch.tensor([0] + [int(torch.Size(s).numel()) for s in shapes], dtype=torch.int64)
    offsets = sizes.cumsum(0)
    if int(offsets[-1]) >= BASE:
        raise LandingError(f"{int(offsets[-1])} elements: more than the {BASE} codes float64 holds exactly")
    state = {}
    for n, (key, value) in enumerate(layout.items()):
        dtype = torch.int64 if not (value.dtype.is_floating_point or value.dtype.is_complex) else torch.float64
        code = torch.arange(int(offsets[n]), int(offsets[n + 1]), dtype=torch.int64) + BASE
        state[key] = code.to(dtype).reshape(shapes[n])
    return state, Codes(keys, shapes, offsets)


@dataclass(frozen=True)
class Decoded:
    """A tensor read back: its elements' key numbers (`key`, an int when all come from one key,
    the common case) and flat indices in their keys, shaped like the tensor."""

    key: int | torch.Tensor
    index: torch.Tensor

    def key_numbers(self) -> list[int]:
        if isinstance(self.key, int):
            return [self.key]
        return torch.unique_consecutive(self.key.flatten()).tolist()


def decode(codes: Codes, tensor: torch.Tensor) -> Decoded | None:
    """Each element's original key and flat index; None when any element is no code (computed
    by arithmetic, a changed dtype, a constant)."""
    if tensor.is_meta or tensor.dtype not in (torch.float64, torch.int64):
        return None
    values = tensor.detach()
    if values.dtype == torch.float64:
        as_int = values.to(torch.int64)
        if not torch.equal(as_int.to(torch.float64), values):
            return None
        values = as_int
    g = values - BASE
    total = int(codes.offsets[-1])
    if not g.numel():
        return None
    low, high = int(g.min()), int(g.max())
    if low < 0 or high >= total:
        return None
    first, last = (int(torch.searchsorted(codes.offsets, torch.tensor(v), right=True)) - 1 for v in (low, high))
    if first == last:
        return Decoded(first, g - int(codes.offsets[first]))
    key = torch.searchsorted(codes.offsets, g, right=True) - 1
    return Decoded(key, g - codes.offsets[key])


# --------------------------------------------------------------------------- what a tensor is


@dataclass(frozen=True)
class Source:
    """How one target tensor is made of original elements.
    kind: "copy" (same shape, same order), "reshape", "transpose" (`dims`), "chunk" (`part` of
    `parts` along `dim`), "concat" (several keys along `dim`)."""

    kind: str
    keys: tuple[str, ...]
    dim: int | None = None
    part: int | None = None
    parts: int | None = None
    dims: tuple[int, int] | None = None
    shape: tuple[int, ...] = ()

    def text(self) -> str:
        what = {"copy": "", "reshape": f" reshaped to {self.shape}", "transpose": f" transposed {self.dims}",
                "chunk": f" chunk {self.part} of {self.parts} along dim {self.dim}",
                "concat": f" concatenated along dim {self.dim}"}[self.kind]
        return " + ".join(self.keys) + what


def _arange(shape) -> torch.Tensor:
    return torch.arange(int(torch.Size(shape).numel()), dtype=torch.int64).reshape(shape)


def describe(codes: Codes, tensor: torch.Tensor, decoded: Decoded | None = None) -> Source | str:
    """The `Source` of one tensor, or a sentence saying why it has none."""
    decoded = decoded or decode(codes, tensor)
    if decoded is None:
        return "holds values no original element has (arithmetic or a dtype change in between)"
    index = decoded.index
    shape = tuple(tensor.shape)
    numbers = decoded.key_numbers()
    if len(set(numbers)) == 1:
        key = codes.keys[numbers[0]]
        original = codes.shapes[numbers[0]]
        whole = _arange(original)
        if index.numel() == whole.numel():
            if torch.equal(index.flatten(), whole.flatten()):
                return Source("copy" if shape == original else "reshape", (key,), shape=shape)
            for a in range(len(original)):
                for b in range(a + 1, len(original)):
                    if tuple(whole.transpose(a, b).shape) == shape and torch.equal(whole.transpose(a, b), index):
                        return Source("transpose", (key,), dims=(a, b), shape=shape)
        elif len(original) == len(shape):
            for dim in range(len(original)):
                if shape[dim] and original[dim] % shape[dim] == 0 and all(
                        s == o for d, (s, o) in enumerate(zip(shape, original)) if d != dim):
                    parts = original[dim] // shape[dim]
                    for part, chunk in enumerate(whole.chunk(parts, dim)):
                        if torch.equal(chunk, index):
                            return Source("chunk", (key,), dim=dim, part=part, parts=parts, shape=shape)
        return f"an arrangement of {key} that is no copy, reshape, transpose or chunk"
    if len(numbers) != len(set(numbers)):
        return "interleaves elements of several original keys"
    keys = tuple(codes.keys[n] for n in numbers)
    for dim in range(len(shape)):
        try:
            expected = torch.cat([_arange(codes.shapes[n]) + int(codes.offsets[n]) for n in numbers], dim)
        except RuntimeError:
            continue
        if tuple(expected.shape) == shape and torch.equal(expected, index + codes.offsets[decoded.key]):
            return Source("concat", keys, dim=dim, shape=shape)
    return f"mixes {listing(keys)} in no concatenation"


@dataclass
class Landing:
    """Every target tensor's source, and every problem: tensors with none, original elements
    that land nowhere or more than once."""

    sources: dict[str, Source]
    unexplained: dict[str, str]  # target key -> why
    nowhere: dict[str, int]  # original key -> elements that land nowhere
    twice: dict[str, int]  # original key -> elements that land more than once

    def problems(self) -> list[str]:
        lines = [f"target {quote(k)}: {why}" for k, why in self.unexplained.items()]
        lines += [f"original {quote(k)}: {n} element(s) land nowhere" for k, n in self.nowhere.items()]
        lines += [f"original {quote(k)}: {n} element(s) land more than once" for k, n in self.twice.items()]
        return lines


def land(codes: Codes, state: Mapping[str, torch.Tensor]) -> Landing:
    """Read a state dict made from the coded original back to original elements."""
    whole: dict[int, int] = {}  # key number -> times all its elements landed
    partial: dict[int, torch.Tensor] = {}  # key number -> per-element counts of partial landings
    sources, unexplained = {}, {}
    number = {k: n for n, k in enumerate(codes.keys)}

    def count(n: int, index: torch.Tensor | None):
        if index is None:
            whole[n] = whole.get(n, 0) + 1
            return
        size = int(codes.offsets[n + 1] - codes.offsets[n])
        hits = partial.setdefault(n, torch.zeros(size, dtype=torch.int32))
        hits.index_add_(0, index.flatten(), torch.ones(index.numel(), dtype=torch.int32))

    for key, tensor in state.items():
        decoded = decode(codes, tensor)
        source = describe(codes, tensor, decoded)
        if isinstance(source, Source):
            sources[key] = source
            if source.kind == "chunk":
                count(number[source.keys[0]], decoded.index)
            else:
                for k in source.keys:
                    count(number[k], None)
            continue
        unexplained[key] = source
        if decoded is not None:
            numbers = decoded.key if isinstance(decoded.key, torch.Tensor) else torch.full_like(decoded.index, decoded.key)
            for n in torch.unique(numbers).tolist():
                count(n, decoded.index[numbers == n])
    nowhere, twice = {}, {}
    for n, key in enumerate(codes.keys):
        size = int(codes.offsets[n + 1] - codes.offsets[n])
        hits = partial.get(n)
        base = whole.get(n, 0)
        if hits is None:
            if base == 0 and size:
                nowhere[key] = size
            elif base > 1:
                twice[key] = size
            continue
        hits = hits + base
        if int((hits == 0).sum()):
            nowhere[key] = int((hits == 0).sum())
        if int((hits > 1).sum()):
            twice[key] = int((hits > 1).sum())
    return Landing(sources, unexplained, nowhere, twice)
