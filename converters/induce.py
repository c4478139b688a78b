"""An explicit key map compressed into the fewest templated rules of the core's vocabulary.

Input: every target key's `landing.Source` (which original key(s), and copy / reshape / transpose /
chunk / concatenation) and the original keys to drop. Output: a `Plan` whose ops (Split, its
inverse, Reshape, Transpose, Drop) and renames reproduce that map exactly, which `induce` checks
by applying the plan to the key map itself before returning it.

Compression, in three steps: numeric key segments become placeholders (`{i}`, `{j}`) where the
target repeats them in every key of a group; rules whose keys end alike become prefix renames
(ending in "."); then a set cover keeps the fewest rules, a general rule allowed only where every
key it would map wrongly is taken first by a more specific rule (a `stages.{i}.{j}.` prefix
after an exception for one tensor under it).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

from .landing import Source
from .plan import Drop, Op, Plan, Rename, Reshape, Split, Template, Transpose, _renamer
from .quote import quote

PLACEHOLDERS = "ijklmnopqr"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class InduceError(RuntimeError):
    pass


# --------------------------------------------------------------------------- templates of key groups


def _skeleton(tokens: Sequence[str]) -> tuple[str, ...]:
    return tuple("#" if t.isdigit() else t for t in tokens)


def templates(rows: Sequence[Sequence[str]]) -> list[tuple[tuple[str, ...], list[int]]]:
    """Rows of keys (the first the source, the others derived from it) -> templated rows, each
    with the indices of the rows it stands for. A numeric segment of the first key becomes a
    placeholder where every other key either repeats it at a place or does not vary there."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    split = [[key.split(".") for key in row] for row in rows]
    for n, row in enumerate(split):
        groups[tuple(_skeleton(t) for t in row)].append(n)
    out = []
    for members in groups.values():
        out += _template_group(split, members)
    return out


def _template_group(split, members: list[int]):
    first = split[members[0]]
    if len(members) == 1:
        return [(tuple(".".join(t) for t in first), members)]
    numeric = [p for p, t in enumerate(first[0]) if t.isdigit()]
    binding: dict[tuple[int, int], int] = {}  # (key number, position) -> position in the source key
    for k in range(1, len(first)):
        for q, token in enumerate(first[k]):
            if not token.isdigit():
                continue
            bound = next((p for p in numeric if all(split[m][0][p] == split[m][k][q] for m in members)), None)
            if bound is not None:
                binding[k, q] = bound
            elif len({split[m][k][q] for m in members}) > 1:  # varies with no source number: split the group
                return _split_group(split, members, lambda m: split[m][k][q])
    used = set(binding.values())
    if len(first) == 1:  # a key alone (an op's, a drop's): its varying numbers are placeholders
        used = {p for p in numeric if len({split[m][0][p] for m in members}) > 1}
    for p in numeric:
        if p not in used and len({split[m][0][p] for m in members}) > 1:
            return _split_group(split, members, lambda m: split[m][0][p])
    names = {p: "{" + PLACEHOLDERS[n] + "}" for n, p in enumerate(sorted(used))}
    row = [".".join(names.get(p, t) for p, t in enumerate(first[0]))]
    for k in range(1, len(first)):
        row.append(".".join(names[binding[k, q]] if (k, q) in binding else t for q, t in enumerate(first[k])))
    return [(tuple(row), members)]


def _split_group(split, members, value):
    parts: dict[str, list[int]] = defaultdict(list)
    for m in members:
        parts[value(m)].append(m)
    out = []
    for group in parts.values():
        out += _template_group(split, group)
    return out


def _placeholders(text: str) -> set[str]:
    return set(_PLACEHOLDER.findall(text))


# --------------------------------------------------------------------------- renames


def compress(pairs: Mapping[str, str]) -> tuple[Rename, ...]:
    """Whole-key pairs source -> target (every key present when the renames run) -> the fewest
    rules found that map each source to its target."""
    keys = list(pairs)
    candidates: dict[tuple[str, str], None] = {}
    rows = templates([(k, t) for k, t in pairs.items()])
    literal = [((k, t), [n]) for n, (k, t) in enumerate(pairs.items())]
    for (source, target), _ in rows + literal:
        a, b = source.split("."), target.split(".")
        candidates[source, target] = None
        for cut in range(1, min(len(a), len(b))):
            if a[-cut] != b[-cut] or a[-cut:] != b[-cut:]:
                break
            prefix_a, prefix_b = ".".join(a[:-cut]) + ".", ".".join(b[:-cut]) + "."
            if _placeholders(prefix_a) == _placeholders(prefix_b):
                candidates[prefix_a, prefix_b] = None
    scored = []
    for source, target in candidates:
        rule = Rename(source, target)
        good, bad = set(), set()
        head = source.split("{", 1)[0]
        for key in keys:
            if not key.startswith(head):
                continue
            groups = Template(source).match(key)
            if groups is None:
                continue
            (good if Template(target).format(groups) == pairs[key] else bad).add(key)
        scored.append((rule, frozenset(good), frozenset(bad)))
    chosen = _cover(keys, scored)
    renames = _order(chosen, keys)
    rename = _renamer(renames)
    wrong = [k for k in keys if rename(k) != pairs[k]]
    if wrong:  # never expected: the cover only keeps rules it checked
        raise InduceError(f"compressed renames map {len(wrong)} keys wrongly, first {quote(wrong[0])}")
    return renames


def _cover(keys: list[str], scored):
    """Greedy set cover by rules that map no key wrongly, then general rules whose wrongly mapped
    keys are all taken by a kept exception-free rule, when that removes more rules than it adds."""
    uncovered, chosen = set(keys), []
    clean = [s for s in scored if not s[2]]
    order = {k: n for n, k in enumerate(keys)}
    while uncovered:
        best = max(clean, key=lambda s: (len(s[1] & uncovered), -len(s[0].source), -min((order[k] for k in s[1]), default=0)))
        if not best[1] & uncovered:
            raise InduceError(f"no rule maps {quote(sorted(uncovered)[0])}")
        chosen.append(best)
        uncovered -= best[1]
    while True:
        gain, pick = 0, None
        for rule, good, bad in scored:
            if not bad or any(rule == c[0] for c in chosen):
                continue
            removable = [c for c in chosen if c[1] <= good and not c[2] and not (c[1] & _bad_of(chosen))]
            kept_clean = set().union(*[c[1] for c in chosen if not c[2] and c not in removable])
            if not bad <= kept_clean:
                continue
            if len(removable) - 1 > gain:
                gain, pick = len(removable) - 1, (rule, good, bad, removable)
        if pick is None:
            return chosen
        rule, good, bad, removable = pick
        chosen = [c for c in chosen if c not in removable] + [(rule, good, bad)]


def _bad_of(chosen) -> set:
    return set().union(*[c[2] for c in chosen])


def _order(chosen, keys: list[str]) -> tuple[Rename, ...]:
    """Exception-free rules first (in the order of the keys they take), then general rules,
    the most specific first."""
    first = {k: n for n, k in enumerate(keys)}
    clean = sorted((c for c in chosen if not c[2]), key=lambda c: min(first[k] for k in c[1]))
    general = sorted((c for c in chosen if c[2]), key=lambda c: len(c[1]) + len(c[2]))
    return tuple(c[0] for c in clean + general)


# --------------------------------------------------------------------------- ops


def _part_names(key: str, targets: Sequence[str], taken: set[str]) -> tuple[str, ...]:
    """Names for the chunks of `key`, in the original namespace: its module's name replaced by
    the segment that tells the targets apart (qkv -> query, key, value), else numbered."""
    tokens = key.split(".")
    split = [t.split(".") for t in targets]
    differ = [q for q in range(len(split[0])) if len({len(s) for s in split}) == 1 and len({s[q] for s in split}) > 1]
    if len(tokens) >= 2 and len(differ) == 1:
        names = tuple(".".join(tokens[:-2] + [s[differ[0]], tokens[-1]]) for s in split)
    else:
        names = ()
    if len(set(names)) != len(targets) or set(names) & taken:
        base = tokens[:-2] + [tokens[-2] if len(tokens) >= 2 else ""]
        names = tuple(".".join(base[:-1] + [f"{base[-1]}_part{n}", tokens[-1]]) for n in range(len(targets)))
    return names


def _fused_name(keys: Sequence[str], target: str, taken: set[str]) -> str:
    common = os.path.commonprefix([k.split(".") for k in keys])  # leading segments all share
    tail = target.split(".")[-2:]
    name = ".".join(common + tail)
    return name if name not in taken else name + "_fused"


def induce(sources: Mapping[str, Source], original: Mapping[str, tuple], drops: Iterable[str] = ()) -> Plan:
    """A plan whose forward gives every target key from its source (see the module docstring);
    `original` maps the original keys to their shapes."""
    shapes = dict(original)
    original = list(original)
    taken = set(original)
    renames: dict[str, str] = {}
    chunks: dict[str, dict[int, tuple[str, Source]]] = defaultdict(dict)
    instances: list[tuple[str, tuple, object]] = []  # (kind, keys row, parameters)
    for target, source in sources.items():
        key = source.keys[0]
        if source.kind in ("copy", "reshape", "transpose"):
            renames[key] = target
            if source.kind == "reshape":
                instances.append(("reshape", (key,), (source.shape, shapes[key])))
            elif source.kind == "transpose":
                instances.append(("transpose", (key,), source.dims))
        elif source.kind == "chunk":
            chunks[key][source.part] = (target, source)
        elif source.kind == "concat":
            fused = _fused_name(source.keys, target, taken)
            taken.add(fused)
            instances.append(("concat", (fused, *source.keys), source.dim))
            renames[fused] = target
    for key, parts in chunks.items():
        count = next(iter(parts.values()))[1].parts
        if sorted(parts) != list(range(count)):
            raise InduceError(f"{quote(key)}: only chunks {sorted(parts)} of {count} land in the target")
        targets = [parts[n][0] for n in range(count)]
        names = _part_names(key, targets, taken)
        taken |= set(names)
        instances.append(("split", (key, *names), parts[0][1].dim))
        renames.update(zip(names, targets))
    ops = _ops(instances, original)
    ops += _drops(list(drops), original)
    plan = Plan(renames=compress(renames), ops=tuple(ops))
    return plan


def _ops(instances, original: list[str]) -> list[Op]:
    """Templated ops where a template takes exactly its instances' keys, literal ones otherwise."""
    by_kind: dict[tuple, list] = defaultdict(list)
    for kind, row, parameter in instances:
        by_kind[kind, parameter].append(row)
    ops: list[Op] = []
    for (kind, parameter), rows in by_kind.items():
        at = 1 if kind == "concat" else 0  # the original key of the row (a concatenation's first part)
        for templated, members in templates(rows):
            matched = sorted(k for k in original if Template(templated[at]).match(k) is not None)
            if matched != sorted(rows[m][at] for m in members):
                ops += [_op(kind, rows[m], parameter) for m in members]
            else:
                ops.append(_op(kind, templated, parameter))
    return ops


def _op(kind: str, row: Sequence[str], parameter) -> Op:
    if kind == "split":
        return Split(row[0], tuple(row[1:]), parameter)
    if kind == "concat":
        return Split(row[0], tuple(row[1:]), parameter).reversed()
    if kind == "transpose":
        return Transpose(row[0], parameter)
    return Reshape(row[0], *parameter)


def _drops(keys: list[str], original: list[str]) -> list[Op]:
    """The shortest prefixes (or templates) that take only dropped keys."""
    if not keys:
        return []
    dropped = set(keys)
    rules = []
    for (template,), _ in templates([(k,) for k in keys]):
        tokens = template.split(".")
        best = template
        for cut in range(1, len(tokens)):
            prefix = ".".join(tokens[:-cut]) + "."
            matched = {k for k in original if Template(prefix).match(k) is not None}
            if matched and matched <= dropped:
                best = prefix
        if best not in [r.key for r in rules]:
            rules.append(Drop(best))
    return rules
