"""Declarative, reversible weight conversion.

A `Plan` is data: tensor operations (split, reshape, transpose, drop) that act on original key
names, followed by ordered renames. Every piece knows its inverse, so a plan runs forwards
(original -> transformers) and backwards, on real tensors or on meta tensors (keys and shapes
only). Applying a plan never raises on a bad checkpoint: it returns the converted dict and a
`Coverage` report that lists every problem at once.

Key templates use `{name}` placeholders for numeric indices (`stages.{i}.{j}.dwconv.`).
A template ending in "." (or "/", the separator of JAX originals' keys) matches a key prefix and
carries the rest of the key over; any other template matches a whole key.

Where transformers' own names differ between its lines (5.x renamed attention projections to
`q_proj`/.../`o_proj`), a plan declares what each line adds in `by_line`, data keyed by the major
version; `converters.core.plan_of` resolves it against the installed line, in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Mapping

import torch

from .quote import listing, quote

DESCRIBED = 50  # lines of each kind of coverage problem a message shows (a hostile file can hold 200 000 keys)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
SEPARATORS = (".", "/")  # between a key's segments: torch's dots, JAX's slashes


@dataclass(frozen=True)
class Template:
    text: str

    @property
    def regex(self) -> re.Pattern:
        return _compile(self.text)

    def match(self, key: str) -> dict | None:
        m = self.regex.match(key)
        return m.groupdict() if m else None

    def format(self, groups: Mapping[str, str]) -> str:
        return self.text.format(**groups) + groups.get("_rest", "")


@lru_cache(maxsize=None)  # traced plans hold hundreds of templates: more than re's own cache keeps
def _compile(text: str) -> re.Pattern:
    parts, pos = [], 0
    for m in _PLACEHOLDER.finditer(text):
        parts.append(re.escape(text[pos : m.start()]))
        parts.append(rf"(?P<{m.group(1)}>\d+)")
        pos = m.end()
    parts.append(re.escape(text[pos:]))
    tail = "(?P<_rest>.*)" if text.endswith(SEPARATORS) else ""
    return re.compile("^" + "".join(parts) + tail + "$")


# --------------------------------------------------------------------------- renames


@dataclass(frozen=True)
class Rename:
    """`source` template -> `target` template; backwards swaps the two."""

    source: str
    target: str

    def __post_init__(self):
        if set(_PLACEHOLDER.findall(self.source)) != set(_PLACEHOLDER.findall(self.target)):
            raise ValueError(f"Rename {self.source!r} -> {self.target!r}: placeholders differ")
        if self.source.endswith(SEPARATORS) != self.target.endswith(SEPARATORS):
            raise ValueError(f"Rename {self.source!r} -> {self.target!r}: prefix/whole-key mismatch")

    def reversed(self) -> "Rename":
        return Rename(self.target, self.source)


def rename_key(key: str, renames: Iterable[Rename]) -> str | None:
    """The first matching rule renames the key; None when no rule matches."""
    return _renamer(tuple(renames))(key)


def _renamer(renames: tuple[Rename, ...]) -> Callable[[str], str | None]:
    """`rename_key` for many keys. Whole-key rules without placeholders (a traced plan has one
    per key) are looked up in a dict; the first matching rule still wins."""
    exact, patterns = {}, []
    for position, rule in enumerate(renames):
        if rule.source.endswith(SEPARATORS) or _PLACEHOLDER.search(rule.source):
            patterns.append((position, rule))
        else:
            exact.setdefault(rule.source, (position, rule.target))

    def rename(key: str) -> str | None:
        position, target = exact.get(key, (len(renames), None))
        for earlier, rule in patterns:
            if earlier > position:
                break
            groups = Template(rule.source).match(key)
            if groups is not None:
                return Template(rule.target).format(groups)
        return target

    return rename


# --------------------------------------------------------------------------- tensor operations


class Op:
    """A tensor operation on original-namespace keys, with its exact inverse."""

    def forward(self, state: dict) -> dict:
        raise NotImplementedError

    def backward(self, state: dict) -> dict:
        raise NotImplementedError

    def reversed(self) -> "Op":
        return _Inverse(self)

    @staticmethod
    def _each(state: dict, template: str):
        tpl = Template(template)
        for key in list(state):
            groups = tpl.match(key)
            if groups is not None:
                yield key, groups


@dataclass(frozen=True)
class _Inverse(Op):
    op: Op

    def forward(self, state):
        return self.op.backward(state)

    def backward(self, state):
        return self.op.forward(state)

    def reversed(self):
        return self.op


@dataclass(frozen=True)
class Split(Op):
    """One fused tensor -> equal chunks along `dim` (a fused qkv into q, k, v); inverse: concat."""

    source: str
    targets: tuple[str, ...]
    dim: int = 0

    def forward(self, state):
        out = dict(state)
        for key, groups in self._each(state, self.source):
            for name, chunk in zip(self.targets, out.pop(key).chunk(len(self.targets), self.dim)):
                out[Template(name).format(groups)] = chunk.clone()  # own storage: safetensors refuses shared
        return out

    def backward(self, state):
        out = dict(state)
        for first, groups in self._each(state, self.targets[0]):
            parts = [Template(t).format(groups) for t in self.targets]
            if all(p in out for p in parts):
                out[Template(self.source).format(groups)] = torch.cat([out.pop(p) for p in parts], self.dim)
        return out


@dataclass(frozen=True)
class Reshape(Op):
    """Reshape matching tensors to `shape`; `back` is the original shape (-1 allowed in both)."""

    key: str
    shape: tuple[int, ...]
    back: tuple[int, ...]

    def forward(self, state):
        return {k: (v.reshape(self.shape) if Template(self.key).match(k) is not None else v) for k, v in state.items()}

    def backward(self, state):
        return {k: (v.reshape(self.back) if Template(self.key).match(k) is not None else v) for k, v in state.items()}


@dataclass(frozen=True)
class Transpose(Op):
    """Swap two dimensions of matching tensors (its own inverse). The result is laid out afresh
    (contiguous): a transposed view computes through other kernels than the saved, reloaded
    tensor (measured on ViT: outputs 1.5e-6 apart), and safetensors refuses views."""

    key: str
    dims: tuple[int, int] = (0, 1)

    def forward(self, state):
        return {k: (v.transpose(*self.dims).contiguous() if Template(self.key).match(k) is not None else v)
                for k, v in state.items()}

    backward = forward


@dataclass(frozen=True)
class Permute(Op):
    """Reorder all dimensions of matching tensors (`dims` as `torch.permute` takes them: a JAX HWIO
    kernel to torch's OIHW is (3, 2, 0, 1)); inverse: the inverse permutation. The results are
    contiguous copies: a strided view of a weight sends CPU kernels down another path (outputs
    ~1e-6 off the same values saved and reloaded, converters/checkpoint.py). A matching tensor of
    another rank (a bad checkpoint) passes unchanged: applying a plan never raises, coverage reports
    its shape."""

    key: str
    dims: tuple[int, ...]

    def __post_init__(self):
        if sorted(self.dims) != list(range(len(self.dims))):
            raise ValueError(f"Permute {self.key!r}: dims {self.dims} are not a permutation of 0..{len(self.dims) - 1}")

    @property
    def inverse(self) -> tuple[int, ...]:
        return tuple(sorted(range(len(self.dims)), key=self.dims.__getitem__))

    def _apply(self, state, dims):
        return {k: (v.permute(dims).contiguous() if v.dim() == len(dims) and Template(self.key).match(k) is not None else v)
                for k, v in state.items()}

    def forward(self, state):
        return self._apply(state, self.dims)

    def backward(self, state):
        return self._apply(state, self.inverse)


@dataclass(frozen=True)
class Drop(Op):
    """Drop a tensor the target recomputes (an index buffer). `restore(groups, state)` rebuilds
    it for the backwards direction; without it the key is declared not restorable."""

    key: str
    restore: Callable[[dict, dict], torch.Tensor] | None = None

    def forward(self, state):
        return {k: v for k, v in state.items() if Template(self.key).match(k) is None}

    def backward(self, state):
        return state  # restored by Plan.backwards, which knows which keys were dropped


# --------------------------------------------------------------------------- coverage


@dataclass
class Coverage:
    """Every problem found while applying a plan; `ok` only when there are none."""

    unconsumed: list[str] = field(default_factory=list)  # source keys no rule took
    missing: list[str] = field(default_factory=list)  # target keys nothing produced
    unexpected: list[str] = field(default_factory=list)  # produced keys the target lacks
    shape_mismatches: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, produced, expected
    duplicates: list[tuple[str, list[str]]] = field(default_factory=list)  # target, its sources
    dropped: list[str] = field(default_factory=list)  # consumed on purpose, not a problem
    undeclared: list[str] = field(default_factory=list)  # what the plan does not declare (a transformers line)

    @property
    def ok(self) -> bool:
        return not (self.unconsumed or self.missing or self.unexpected or self.shape_mismatches or self.duplicates
                    or self.undeclared)

    def _kinds(self) -> list[list[str]]:
        """One line per problem, by kind; key names quoted (a file's keys can hold escapes, newlines)."""
        return [list(self.undeclared),  # first: it explains the keys below
                [f"source key not consumed: {quote(k)}" for k in self.unconsumed],
                [f"target key not produced: {quote(k)}" for k in self.missing],
                [f"produced key not in target: {quote(k)}" for k in self.unexpected],
                [f"shape mismatch: {quote(k)} produced {tuple(a)} expected {tuple(b)}" for k, a, b in self.shape_mismatches],
                [f"target key produced twice: {quote(k)} <- {listing(src, count=False)}" for k, src in self.duplicates]]

    def problems(self) -> list[str]:
        return [line for kind in self._kinds() for line in kind]

    def describe(self, limit: int = DESCRIBED) -> str:
        """Every problem, at most `limit` lines of each kind (then how many more)."""
        lines = []
        for kind in self._kinds():
            lines += kind[:limit] + ([f"... and {len(kind) - limit} more {kind[0].partition(':')[0]} problems"] if len(kind) > limit else [])
        return "\n".join(lines) if lines else "coverage complete"

    def as_dict(self) -> dict:
        return {
            "unconsumed": self.unconsumed,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "shape_mismatches": [[k, list(a), list(b)] for k, a, b in self.shape_mismatches],
            "duplicates": [[k, s] for k, s in self.duplicates],
            "dropped": self.dropped,
            "undeclared": self.undeclared,
        }


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Line:
    """What one transformers line adds to a plan, where that line names the target differently."""

    renames: tuple[Rename, ...] = ()
    ops: tuple[Op, ...] = ()


@dataclass(frozen=True)
class Plan:
    """`ops` run first (on original names), then each key takes the first matching rename."""

    renames: tuple[Rename, ...]
    ops: tuple[Op, ...] = ()
    # transformers major version -> what that line adds: its renames are tried before the common
    # ones (first match wins), its ops run after the common ones. Declared per line, or not at all.
    by_line: Mapping[int, Line] = field(default_factory=dict)
    # why the installed line is not covered (set by `for_line`): key coverage reports it
    undeclared: str | None = None

    def for_line(self, major: int, owner: str) -> "Plan":
        """The plan for transformers `major`: the common renames and ops with that line's. A plan
        whose `by_line` misses the line keeps the common part and says so (key coverage fails)."""
        if not self.by_line:
            return self
        line = self.by_line.get(major)
        if line is None:
            declared = ", ".join(str(m) for m in sorted(self.by_line))
            return Plan(self.renames, self.ops, undeclared=(
                f"{owner}: the plan declares renames for transformers {declared} (Plan.by_line) but not for "
                f"{major}, the installed line: declare Plan.by_line[{major}]"))
        return Plan(line.renames + self.renames, self.ops + line.ops)

    def _resolved(self) -> None:
        if self.by_line:
            raise ValueError("a plan with by_line is resolved against the installed transformers first "
                             "(converters.core.plan_of, Plan.for_line)")

    def forwards(self, state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor] | None = None):
        """Original -> transformers. `target` (tensors or meta tensors) enables coverage checks."""
        self._resolved()
        state = dict(state)
        dropped = [k for op in self.ops if isinstance(op, Drop) for k, _ in Op._each(state, op.key)]
        for op in self.ops:
            state = op.forward(state)
        out, report = _rename_all(state, self.renames, target)
        report.dropped = sorted(dropped)
        report.undeclared = [self.undeclared] if self.undeclared else []
        return out, report

    def backwards(self, state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor] | None = None):
        """Transformers -> original. Dropped keys come back only where their op can restore them."""
        self._resolved()
        out, report = _rename_all(dict(state), tuple(r.reversed() for r in self.renames), None)
        for op in reversed(self.ops):
            out = op.backward(out)
        for op in self.ops:
            if isinstance(op, Drop) and op.restore is not None and target is not None:
                for key, groups in Op._each(dict(target), op.key):
                    out[key] = op.restore(groups, out)
        if target is not None:
            _compare(out, target, report, ignore=self.unrestorable(target))
        report.undeclared = [self.undeclared] if self.undeclared else []
        return out, report

    def unrestorable(self, original: Iterable[str]) -> list[str]:
        """Original keys the plan drops and cannot rebuild: a round trip cannot cover them."""
        keys = list(original)
        return sorted(k for op in self.ops if isinstance(op, Drop) and op.restore is None for k in keys if Template(op.key).match(k) is not None)

    def key_map(self, original: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
        """Explicit map original key -> target keys, derived by running the plan on meta tensors."""
        mapping = {}
        for key, value in original.items():
            out, _ = self.forwards({key: value.to("meta")})
            mapping[key] = sorted(out)
        return mapping


def _rename_all(state: dict, renames: tuple[Rename, ...], target):
    out, sources, report, rename = {}, {}, Coverage(), _renamer(renames)
    for key, value in state.items():
        new = rename(key)
        if new is None:
            report.unconsumed.append(key)
            continue
        sources.setdefault(new, []).append(key)
        out[new] = value
    report.duplicates = [(k, src) for k, src in sources.items() if len(src) > 1]
    if target is not None:
        _compare(out, target, report)
    return out, report


def _compare(produced: Mapping, target: Mapping, report: Coverage, ignore: Iterable[str] = ()):
    ignore = set(ignore)
    report.missing = sorted(k for k in target if k not in produced and k not in ignore)
    report.unexpected = sorted(k for k in produced if k not in target)
    report.shape_mismatches = [
        (k, tuple(v.shape), tuple(target[k].shape)) for k, v in produced.items() if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]


def meta_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys and shapes only."""
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()}
