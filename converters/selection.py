"""Where each case's forward checks run: the default run or the full run, derived from the registry.

Cases of one layout differ in widths, depths and resolution, not in what the plan does: one of them
at real size proves the plan, the processor and the model together for that layout. So the default
run (`tox -e tf5`, `tox -e tf4`) holds the forward checks of one case per layout of each family, the
cheapest; those of the other cases run in the full run (`pytest --full`: `tox -e full`, the nightly).
Every case's real-size key coverage (meta tensors) and pixel check stay in the default run, and so do
every family's mutants and property tests, which do not depend on this.

A layout is the model class and the original checkpoint's key names with their numeric indices
templated (`stages.N.N.dwconv.weight`): depths and widths do not change it, a block of another kind
(a bottleneck's `conv3`, SwiGLU's `w12`), register tokens or a head do. The cheapest case of a layout
has the fewest parameters in the checkpoint the default run makes (`Case.for_random_weights`), then
the smallest image, then comes first in its family. A case its family marks `large` (too heavy for
the default run even as its layout's only case) is never chosen: its layout then runs in full only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .case import Case
from .registry import cases, packages


@dataclass(frozen=True)
class Where:
    default: bool  # the case's forward checks run in the default run
    why: str  # one phrase: what `pytest --cases`, skip reasons and README's table say
    layout: str = ""  # the first declared case of its layout: names the layout


_INDEX = re.compile(r"(?<=[./_])\d+(?=[./]|$)|^\d+(?=[./]|$)")  # a segment, or a segment's `_N` ending (JAX: encoderblock_0)


def layout_signature(case: Case, layout: dict) -> tuple[str, frozenset[str]]:
    """(model class, the original keys with every numeric index replaced by N: an all-digit
    segment, or the digits ending a segment after "_", as JAX originals number their blocks)."""
    return case.model_class, frozenset(_INDEX.sub("N", key) for key in layout)


def plan(all_cases: list[Case]) -> dict[str, Where]:
    """case id -> Where, for `all_cases` grouped by (family, layout)."""
    from .core import original_layout

    groups: dict[tuple, list[Case]] = {}
    cost = {}
    for case in all_cases:
        layout = original_layout(case.for_random_weights())  # the checkpoint the default run makes
        cost[case.id] = (sum(t.numel() for t in layout.values()), case.image_size)  # parameters, then image side
        groups.setdefault((case.family, layout_signature(case, layout)), []).append(case)
    where = {}
    for group in groups.values():
        runnable = [c for c in group if "large" not in c.marks]
        chosen = min(runnable, key=lambda c: (*cost[c.id], group.index(c))) if runnable else None
        for case in group:
            if case is chosen:
                why = f"default: the cheapest of the {len(group)} cases of its layout" if len(group) > 1 else "default: the only case of its layout"
            elif chosen is not None:
                why = f"full: its layout runs in the default run as {chosen.id}"
            else:
                why = "full: its family marks it large, as every case of its layout"
            where[case.id] = Where(case is chosen, why, group[0].id)
    return where


@lru_cache(maxsize=None)
def _registry_plan(package_list: tuple[str, ...]) -> dict[str, Where]:
    return plan(cases())


def where(case: Case) -> Where:
    """Where the case's forward checks run, for the registry's cases (computed once per set of packages)."""
    return _registry_plan(packages())[case.id]


def table() -> str:
    """README's table of where each case's forward checks run, from the rule (`python -m converters.selection`)."""
    rows = ["| family | layout (model class) | default run | full run only |", "|---|---|---|---|"]
    groups: dict[tuple, list[Case]] = {}
    for case in cases():
        groups.setdefault((case.family, case.model_class, where(case).layout), []).append(case)
    for (family, model_class, _), group in groups.items():
        default = [f"`{c.id}`" for c in group if where(c).default]
        full = [f"`{c.id}`" + (" (large)" if "large" in c.marks else "") for c in group if not where(c).default]
        rows.append(f"| {family} | `{model_class}` | {', '.join(default) or '-'} | {', '.join(full) or '-'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
