"""The common wrong file, told at load: the same layout under an extra prefix (`module.`), another
size's or another family's layout, non-float weights. Generic: the candidates are the registry's
families and their cases' `original_layout`."""

from __future__ import annotations

from typing import Iterable, Mapping

from .case import Case
from .checkpoint import CheckpointError
from .quote import listing
from .registry import families


def _pairs(keys) -> set:
    """(key, shape) of a state dict (shape None for bare key names): two layouts agree on a pair."""
    if isinstance(keys, Mapping):
        return {(str(k), tuple(v.shape) if hasattr(v, "shape") else None) for k, v in keys.items()}
    return {(str(k), None) for k in keys}


def _layout(case: Case, shapes: bool) -> set:
    layout = families()[case.family].original_layout(case)
    return _pairs(layout) if shapes else _pairs(list(layout))


def _share(pairs: set, layout: set) -> float:
    """How alike two layouts are (Jaccard): 1 for the same keys (and shapes), 0 for none in common."""
    return len(pairs & layout) / len(pairs | layout) if pairs or layout else 1.0


def layout_hint(case: Case, keys: Iterable[str] | Mapping) -> str | None:
    """None when the file's keys (with their shapes, given a state dict) are the case's layout, or
    mostly are and no known case's layout is more alike (a few keys off: the key coverage check
    lists them); else what the file looks like, if anything. A sibling family's file can share
    most of its keys with the case (Swin-style blocks) and still be another known case's exactly."""
    pairs = _pairs(keys)
    shapes = any(shape is not None for _, shape in pairs)
    what = "keys and shapes" if shapes else "keys"
    expected = _layout(case, shapes)
    mostly = len(pairs & expected) * 2 > len(pairs)
    if not pairs or pairs == expected:
        return None
    firsts = {k.split(".", 1)[0] for k, _ in pairs if "." in k}
    for prefix in sorted(firsts) if not mostly else ():
        stripped = {(k.removeprefix(f"{prefix}."), s) for k, s in pairs if k.startswith(f"{prefix}.")}
        if len(stripped & expected) * 2 > len(expected):
            return (f"the file holds {case.id}'s layout under the extra prefix {prefix + '.'!r} ({len(stripped & expected)} of "
                    f"{len(expected)} keys match once it is removed): save the state dict without it "
                    f"(e.g. {{k.removeprefix({prefix + '.'!r}): v for k, v in state.items()}})")
    # the case's own family first (another size is the commonest mistake), then every family
    others = [(case.family, families()[case.family])] + [(n, f) for n, f in families().items() if n != case.family]
    # the scan stops at an exact match only: a partial one (sibling families share most key names,
    # a few block entries apart) may be bettered by a later family
    scored = []
    for name, family in others:
        scored += [(_share(pairs, _layout(c, shapes)), name, c.id) for c in family.cases]
        if max(scored)[0] == 1.0:
            break
    share, name, _ = max(scored)
    best = [c for s, n, c in scored if s == share and c != case.id]
    if mostly and (not best or share <= _share(pairs, expected)):
        return None
    if share < 0.5 or not best:
        return f"{len(pairs - expected)} of {len(pairs)} {what} are not {case.id}'s layout, nor that of any known case"
    more = f" (or {listing(best[1:], limit=3)})" if len(best) > 1 else ""
    return (f"the file matches the layout of {best[0]}{more} (family {name}, {share:.0%} of {what} alike), not {case.id}'s "
            f"({_share(pairs, expected):.0%}): is it the checkpoint of another model?")


def _twin(case: Case, pairs: set) -> Case | None:
    """Another registry case whose layout is exactly the file's keys and shapes (its own family's
    cases first, then every family's, in the registry's order), or None."""
    others = [families()[case.family]] + [f for n, f in families().items() if n != case.family]
    return next((c for family in others for c in family.cases if c.id != case.id and _layout(c, True) == pairs), None)


def check_file(case: Case, path, state: Mapping) -> None:
    """Refuse, in one error naming the case and the file, tensors that are not the case's original
    layout (most keys or shapes another's: a sibling size's file, another family's, an extra
    prefix; or exactly another case's layout, e.g. a sibling family's file sharing most key names)
    and weights that are not floating point (integers, complex; an integer buffer the layout
    declares, such as BatchNorm's num_batches_tracked, is allowed). A file that is the case's
    layout but for a few keys, and no other case's, loads: the key coverage check lists those."""
    pairs = _pairs(state)
    expected = families()[case.family].original_layout(case)
    matching = pairs & _pairs(expected)
    keys = {k for k, _ in pairs}
    reshaped = sorted(k for k, s in pairs if k in expected and (k, s) not in matching)
    extra = sorted(keys - set(expected))
    counts = (f"{len(matching)} of its {len(pairs)} tensors match {case.id}'s {len(expected)} by key and shape "
              f"({len(extra)} keys not in that layout, {len(reshaped)} of another shape, "
              f"{len(set(expected) - keys)} of its keys absent)")
    first = (f"first keys not in it: {listing(extra, limit=5, count=False)}" if extra
             else f"first of another shape: {listing(reshaped, limit=5, count=False)}")
    if len(matching) * 2 <= len(pairs):
        hint = layout_hint(case, state)
        raise CheckpointError(case.id, path, f"not {case.id}'s original layout: {hint}; {counts}; {first}")
    # Another case's file differs both ways (tensors the layout lacks or reshapes, and layout keys it
    # lacks); a file that only adds or only lacks keys is the case's own, extended or cut, and the
    # scan (every registry layout) is skipped. A case of several files checks each part against its
    # whole layout: only one-file cases can be told another case's file by an exact match.
    both_ways = reshaped or (extra and set(expected) - keys)
    twin = _twin(case, pairs) if both_ways and not case.extra_files else None
    if twin is not None:
        raise CheckpointError(case.id, path, f"not {case.id}'s original layout: the file is exactly the layout of {twin.id} "
                                             f"(family {twin.family}, every key and shape alike): is it that model's checkpoint? "
                                             f"{counts}; {first}")
    declared = {k for k, v in expected.items() if not v.is_floating_point()}  # integer buffers of the layout
    not_float = [f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in state.items()
                 if not v.is_floating_point() and (v.is_complex() or k not in declared)]
    if not_float:
        raise CheckpointError(case.id, path, f"weights that are not floating point: {listing(not_float, limit=5)}: "
                              f"the original's are float (integer only for buffers its layout declares, such as counters and index tables)")
