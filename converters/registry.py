"""The family registry: families are discovered, never listed by hand.

Every module of the `converters.families` package (and of each package named, comma-separated,
in $VISION_PORT_FAMILIES: a user's own families outside this repository) declares one
`FAMILY = Family(...)`. `family_names()` lists them without importing anything heavy (the pytest
plugin registers their marks from it); `families()` imports them all, once. A module that fails
to import, declares no FAMILY, misses a required member, names itself differently from its
module or repeats a case id is a `FamilyError` naming the module and the member: never a skip.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import pkgutil
from functools import lru_cache

from .case import Case
from .evaluation import DECLARED as EVALUATIONS
from .family import PROVENANCE_FIELDS, TRANSFORMERS_LINES, Family
from .licences import HUB_LICENCES, SOURCE as LICENCES_SOURCE

BUILTIN = "converters.families"
EXTRA_ENV = "VISION_PORT_FAMILIES"


class FamilyError(RuntimeError):
    pass


def packages() -> tuple[str, ...]:
    extra = [p.strip() for p in os.environ.get(EXTRA_ENV, "").split(",") if p.strip()]
    return (BUILTIN, *extra)


def _modules(package: str) -> list[str]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FamilyError(f"{package}: no such package of families (${EXTRA_ENV}={os.environ.get(EXTRA_ENV, '')!r})")
    return sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations) if not m.name.startswith("_"))


def family_names() -> list[str]:
    """Every family's name, from the module names alone (nothing is imported)."""
    return [name for package in packages() for name in _modules(package)]


def _load(package: str, name: str) -> Family:
    where = f"{package}.{name}"
    try:
        module = importlib.import_module(where)
    except Exception as e:  # a broken family is an error of the whole run, not a missing family
        raise FamilyError(f"family module {where} failed to import: {type(e).__name__}: {e}") from e
    family = getattr(module, "FAMILY", None)
    if not isinstance(family, Family):
        raise FamilyError(f"family module {where} declares no FAMILY = Family(...) (found {type(family).__name__})")
    if family.name != name:
        raise FamilyError(f"family module {where}: FAMILY.name is {family.name!r}, expected the module name {name!r}")
    if not family.cases:
        raise FamilyError(f"family module {where}: FAMILY.cases is empty")
    for case in family.cases:
        if not isinstance(case, Case) or case.family != name:
            raise FamilyError(f"family module {where}: FAMILY.cases holds {getattr(case, 'id', case)!r} of family "
                              f"{getattr(case, 'family', None)!r}, expected Case objects of family {name!r}")
    unknown = [line for line in family.transformers_lines if line not in TRANSFORMERS_LINES]
    if unknown:
        raise FamilyError(f"family module {where}: FAMILY.transformers_lines {unknown} not in {list(TRANSFORMERS_LINES)}")
    _check_provenance(where, family)
    _check_evaluation(where, family)
    return family


def _check_evaluation(where: str, family: Family) -> None:
    """Every case has a declared original evaluation: there is no default, so a family whose
    original is not timm cannot be checked against timm's transform by omission."""
    if family.evaluation is None:
        raise FamilyError(f"family {family.name!r} ({where}): member `evaluation` is not declared: declare the "
                          "original evaluation as converters.evaluation.Evaluation(...) (resize rule, crop, "
                          "interpolation, mean/std, source = the original repository, file and function), "
                          "or evaluation=timm_evaluation if the original is timm")
    for case in family.cases:
        try:
            declared = family.evaluation_of(case)
        except Exception as e:
            raise FamilyError(f"family {family.name!r} ({where}): member `evaluation` failed for case {case.id!r}: "
                              f"{type(e).__name__}: {e}") from e
        if not isinstance(declared, EVALUATIONS):
            raise FamilyError(f"family {family.name!r} ({where}): member `evaluation` gave {type(declared).__name__} "
                              f"for case {case.id!r}, expected an Evaluation (or timm_evaluation)")


def _check_provenance(where: str, family: Family) -> None:
    """A declared provenance is complete and its licence a Hub id, for the family and every case;
    an undeclared one (None) is allowed here and refused by --push."""
    for case in family.cases:
        unknown = sorted(set(case.provenance) - PROVENANCE_FIELDS)
        if unknown:
            raise FamilyError(f"family {family.name!r} ({where}): case {case.id!r} overrides unknown provenance "
                              f"field(s) {unknown}; fields: {sorted(PROVENANCE_FIELDS)}")
        if case.provenance and family.provenance is None:
            raise FamilyError(f"family {family.name!r} ({where}): case {case.id!r} overrides provenance fields "
                              "but FAMILY.provenance is not declared")
        provenance = family.provenance_of(case)
        if provenance is None:
            continue
        what = f"family {family.name!r} ({where}), case {case.id!r}"
        missing = provenance.missing()
        if missing:
            raise FamilyError(f"{what}: provenance field(s) not set: {', '.join(missing)}")
        if provenance.licence not in HUB_LICENCES:
            raise FamilyError(f"{what}: licence {provenance.licence!r} is not a Hub licence id (see {LICENCES_SOURCE}); "
                              "custom terms are licence='other' with licence_name and licence_link")
        if provenance.licence.startswith("cc-by-nc") and not provenance.non_commercial:
            raise FamilyError(f"{what}: licence {provenance.licence!r} is non-commercial: set non_commercial=True")


def unlicensed(cases) -> list[str]:
    """Case ids among `cases` whose family declares no provenance (no licence): never pushed."""
    return [case.id for case in cases if family_of(case).provenance_of(case) is None]


@lru_cache(maxsize=None)
def _registry(package_list: tuple[str, ...]) -> dict[str, Family]:
    found: dict[str, Family] = {}
    owner: dict[str, str] = {}
    for package in package_list:
        for name in _modules(package):
            if name in found:
                raise FamilyError(f"family {name!r} is declared twice ({package}.{name})")
            family = _load(package, name)
            for case in family.cases:
                if case.id in owner:
                    raise FamilyError(f"family module {package}.{name}: case id {case.id!r} already declared by "
                                      f"family {owner[case.id]!r}")
                owner[case.id] = name
            found[name] = family
    return found


def families() -> dict[str, Family]:
    """name -> Family, every family imported and validated."""
    return _registry(packages())


def get_family(name: str) -> Family:
    found = families()
    if name not in found:
        raise KeyError(f"unknown family {name!r}; families: {', '.join(found)}")
    return found[name]


def family_of(case: Case) -> Family:
    return get_family(case.family)


def cases(family_name: str | None = None) -> list[Case]:
    return [c for name, f in families().items() if family_name in (None, name) for c in f.cases]


def get(case_id: str) -> Case:
    by_id = {c.id: c for c in cases()}
    if case_id not in by_id:
        close = difflib.get_close_matches(case_id, by_id, n=3)
        raise KeyError(f"unknown case {case_id!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    return by_id[case_id]


# --------------------------------------------------------------------------- the nightly matrix

def nightly_matrix() -> dict:
    """The nightly workflow's job matrix: one job per (family, transformers line) the family runs
    on, plus the harness's own tests on each line. The workflow's first job prints it
    (`python -m converters.registry --matrix`), so nothing committed lists the families."""
    include = [
        {"family": name, "transformers": line, "markers": f"{name} and (large or not large)",
         "large_disk": f.nightly_large_disk}
        for name, f in families().items() for line in f.transformers_lines
    ]
    include += [{"family": "harness", "transformers": line, "markers": "not family", "large_disk": False} for line in TRANSFORMERS_LINES]
    return {"include": include}


def _main(argv=None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m converters.registry", description="families, cases and the nightly matrix")
    parser.add_argument("--matrix", action="store_true", help="print the nightly job matrix as one line of JSON")
    args = parser.parse_args(argv)
    if args.matrix:
        print(json.dumps(nightly_matrix(), separators=(",", ":")))
    else:
        for name, f in families().items():
            print(f"{name}: {', '.join(f.case_ids())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
