"""Hints for the common wrong file, when most of its keys are not the case's original layout:
the same layout under an extra prefix (`module.`), or the layout of another family's case. Generic:
the candidates are the registry's families and their cases' `original_layout`."""

from __future__ import annotations

from typing import Iterable

from .case import Case
from .registry import families


def _share(keys: set[str], layout: set[str]) -> float:
    """How alike two key sets are (Jaccard): 1 for the same keys, 0 for none in common."""
    return len(keys & layout) / len(keys | layout) if keys or layout else 1.0


def layout_hint(case: Case, keys: Iterable[str]) -> str | None:
    """None when most keys are the case's layout; else what the file looks like, if anything."""
    keys = {str(k) for k in keys}
    expected = set(families()[case.family].original_layout(case))
    if not keys or len(keys & expected) * 2 > len(keys):
        return None
    firsts = {k.split(".", 1)[0] for k in keys if "." in k}
    for prefix in sorted(firsts):
        stripped = {k.removeprefix(f"{prefix}.") for k in keys if k.startswith(f"{prefix}.")}
        if len(stripped & expected) * 2 > len(expected):
            return (f"the file holds {case.id}'s layout under the extra prefix {prefix + '.'!r} ({len(stripped & expected)} of "
                    f"{len(expected)} keys match once it is removed): save the state dict without it "
                    f"(e.g. {{k.removeprefix({prefix + '.'!r}): v for k, v in state.items()}})")
    share, name, best = max((_share(keys, set(f.original_layout(c))), name, c.id)
                            for name, f in families().items() for c in f.cases)
    if share < 0.5 or best == case.id:
        return f"{len(keys - expected)} of {len(keys)} keys are not {case.id}'s layout, nor that of any known case"
    return (f"the file matches the layout of {best} (family {name}, {share:.0%} of keys alike), not {case.id}'s "
            f"({_share(keys, expected):.0%}): is it the checkpoint of another model?")
