"""Where each check runs (converters/selection.py, fixtures/plugin.py `mark_full`): the default run keeps
every case's key coverage at real size and pixel values, every family's mutants and property tests,
and the forward checks of one case per layout of each family; the full run (`--full`) collects and
runs everything; `-k <case id>` runs every check of the case it names."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from converters import core, registry, selection

ROOT = Path(__file__).resolve().parents[1]
# the generic tests that take families from the registry and must not depend on the selection
FAMILY_WIDE = ["tests/test_mutations.py", "tests/test_rename_properties.py", "tests/test_pixel_properties.py",
               "tests/test_block_parity.py"]


def rule_violations(cases, where) -> list[str]:
    """The rule, stated on its output: each layout of each family that has a case its family does not
    mark large runs exactly one case in the default run, the cheapest; nothing else runs there."""
    plan_cost = {}
    groups: dict[tuple, list] = {}
    for case in cases:
        layout = core.original_layout(case.for_random_weights())
        plan_cost[case.id] = sum(t.numel() for t in layout.values())
        groups.setdefault((case.family, selection.layout_signature(case, layout)), []).append(case)
    problems = []
    for (family, (model_class, _)), group in groups.items():
        default = [c.id for c in group if where[c.id].default]
        runnable = [c for c in group if "large" not in c.marks]
        if runnable and len(default) != 1:
            problems.append(f"{family} {model_class} layout of {[c.id for c in group]}: {len(default)} default cases {default}")
        elif runnable and plan_cost[default[0]] > min(plan_cost[c.id] for c in runnable):
            problems.append(f"{family}: {default[0]} is not the cheapest of {[c.id for c in runnable]}")
        elif not runnable and default:
            problems.append(f"{family}: large cases {default} in the default run")
    return problems


def test_every_layout_of_every_family_runs_its_cheapest_case_in_the_default_run():
    cases = registry.cases()
    where = {c.id: selection.where(c) for c in cases}
    assert not rule_violations(cases, where)
    for name, family in registry.families().items():
        assert any(where[c.id].default for c in family.cases if "large" not in c.marks), name
    # teeth: the family whose layouts have the fewest cases loses the default case of one of them
    lone = min((c for c in cases if where[c.id].default), key=lambda c: sum(d.family == c.family for d in cases))
    moved = {**where, lone.id: selection.Where(False, "full: moved out")}
    assert any(lone.id in problem for problem in rule_violations(cases, moved)), lone.id


@pytest.fixture
def layouts(monkeypatch):
    """Cases of a made-up family whose original layouts the test declares: {case id: keys (shape (n,))}."""
    declared = {}
    monkeypatch.setattr(core, "original_layout", lambda case: {
        key: __import__("torch").empty(size, device="meta") for key, size in declared[case.id].items()})
    base = registry.cases()[0]
    return declared, lambda case_id, **changes: dataclasses.replace(base, id=case_id, family="made_up", **changes)


def test_layouts_differ_by_key_names_not_by_depth_or_width(layouts):
    declared, made = layouts
    basic = {"layer1.0.conv1.weight": 9, "layer1.0.conv2.weight": 9}
    declared |= {
        "small": basic,
        "deeper_wider": {**{k: 99 for k in basic}, "layer1.1.conv1.weight": 99, "layer1.1.conv2.weight": 99},
        "bottleneck": {**basic, "layer1.0.conv3.weight": 9},  # another kind of block: conv3
        "huge_alone": {"layer1.0.swiglu.weight": 999},
        "huge_other": {"layer1.0.swiglu.weight": 999, "layer1.1.swiglu.weight": 999},
    }
    cases = [made("deeper_wider"), made("small"), made("bottleneck"), made("huge_alone", marks=("large",)),
             made("huge_other", marks=("large",))]
    where = selection.plan(cases)
    assert where["small"].default and where["bottleneck"].default
    assert not where["deeper_wider"].default and "as small" in where["deeper_wider"].why
    assert not where["huge_alone"].default and "large" in where["huge_alone"].why and not where["huge_other"].default
    assert not rule_violations(cases, where)
    # a different model class is another layout, even with the same keys
    other = made("same_keys_other_class", model_class="SomethingElse")
    declared["same_keys_other_class"] = declared["deeper_wider"]
    assert selection.plan([*cases, other])["same_keys_other_class"].default
    # equal parameters: the smaller image, then the first declared
    declared |= {"at_384": basic, "at_224": basic}
    assert selection.plan([made("at_384", config={"image_size": 384}), made("at_224", config={"image_size": 224})])["at_224"].default


PROBE = '''
import json, os
def pytest_collection_finish(session):
    found = {}
    for item in session.items:
        skip = item.get_closest_marker("skip")
        found[item.nodeid] = {"full": item.get_closest_marker("full") is not None,
                              "skip": skip.kwargs.get("reason", "") if skip else None}
    with open(os.environ["SELECTION_PROBE_OUT"], "w") as f:
        json.dump(found, f)
'''


def collected(tmp_path, *args) -> dict:
    """nodeid -> {"full", "skip"} as a pytest run with `args` collects (nothing runs)."""
    (tmp_path / "selection_probe.py").write_text(PROBE)
    out = tmp_path / f"probe-{len(list(tmp_path.iterdir()))}.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]),
               SELECTION_PROBE_OUT=str(out))
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "selection_probe", "--co", "-q",
                             "--weights", "random", "tests/test_conversions.py", *FAMILY_WIDE, *args],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def case_of(nodeid: str) -> str | None:
    return nodeid.rpartition("[")[2][:-1] if nodeid.startswith("tests/test_conversions.py::") and "[" in nodeid else None


@pytest.fixture(scope="module")
def default_and_full(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("selection")
    return collected(tmp), collected(tmp, "--full")


def test_the_default_run_keeps_coverage_pixels_mutants_properties_and_one_case_per_layout(default_and_full):
    default, _ = default_and_full
    ids = {c.id for c in registry.cases()}
    for case_id in ids:  # every case's real-size key coverage and pixel values, never left to the full run
        for test in ("test_key_coverage_at_real_size", "test_pixel_values"):
            entry = default[f"tests/test_conversions.py::{test}[{case_id}]"]
            assert not entry["full"] and "--full" not in (entry["skip"] or ""), (test, case_id)
    for nodeid, entry in default.items():
        case_id = case_of(nodeid)
        if case_id is None:  # mutants, properties, block parity: untouched
            assert not entry["full"] and entry["skip"] is None, nodeid
            continue
        where = selection.where(registry.get(case_id))
        light = nodeid.split("::")[1].startswith(("test_key_coverage_at_real_size", "test_pixel_values"))
        if where.default or light:
            assert not entry["full"] and "--full" not in (entry["skip"] or ""), nodeid
        else:  # a forward check of a case whose layout another case proves: skipped, saying where it runs
            assert entry["full"] and entry["skip"] == f"{where.why}; runs with --full (tox -e full, nightly) or -k <case id>", nodeid
    assert any(entry["full"] for entry in default.values())


def test_the_full_run_collects_and_runs_everything(default_and_full):
    default, full = default_and_full
    assert set(full) == set(default)
    assert not [nodeid for nodeid, entry in full.items() if "--full" in (entry["skip"] or "")]
    assert {n for n, e in full.items() if e["full"]} == {n for n, e in default.items() if e["full"]}  # `--full -m full`


def test_naming_a_full_only_case_runs_every_check_of_it(tmp_path):
    full_only = next(c for c in registry.cases() if not selection.where(c).default)
    named = collected(tmp_path, "-k", full_only.id)
    mine = {nodeid: entry for nodeid, entry in named.items() if case_of(nodeid) == full_only.id}
    assert len(mine) >= 8, mine  # its checks and its real-size coverage
    assert not [nodeid for nodeid, entry in mine.items() if "--full" in (entry["skip"] or "")]


def test_readmes_table_is_the_rules_output():
    """README's "Where each check runs" table is `python -m converters.selection`'s, for the registry's cases."""
    table = selection.table()
    assert table.startswith("| family | layout (model class) | default run | full run only |")
    assert table in (ROOT / "README.md").read_text(), "README's table is stale: paste `python -m converters.selection`"
    for case in registry.cases():  # every case is in it, in the column of where it runs
        row = next(line for line in table.splitlines() if f"`{case.id}`" in line)
        assert (f"`{case.id}`" in row.split(" | ")[2]) == selection.where(case).default, case.id


def test_a_save_runs_every_check_of_what_it_selects(tmp_path):
    """--save (and --push) saves only fully checked cases: the full-only checks of the selected cases
    run, whatever -k says (without it `-k <family> --save` would save nothing but the default cases)."""
    family = next(f for f in registry.families().values() if any(not selection.where(c).default for c in f.cases))
    named = collected(tmp_path, "-k", family.name, "--save", str(tmp_path / "out"))
    held_back = [nodeid for nodeid, entry in named.items() if "--full" in (entry["skip"] or "")]
    assert named and not held_back, held_back[:5]
