"""The family registry and the plugin built on it: families are discovered (a package of one's own
included), a broken family stops the run naming the module and the member, the plugin imports no
torch, and saving keys on the checks' marks, not on a file name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import converters
from converters import registry

ROOT = Path(__file__).resolve().parents[1]

# A family module of its own, outside the repository: one case, borrowing ConvNeXt-V2's data
# (the registry does not care what a family converts, only that it declares itself fully).
GOOD = '''
import dataclasses
from converters.family import Family
from converters.registry import _load

base = _load("converters.families", "convnextv2")
CASES = (dataclasses.replace(base.cases[0], id="{case_id}", family="{name}"),)
FAMILY = Family(name="{name}", cases=CASES, plan=base.plan, original_layout=base.original_layout,
                oracle=base.oracle, configurations=base.configurations, evaluation=base.evaluation{extra})
'''


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package of families named by $VISION_PORT_FAMILIES; write(name, text) adds a module."""
    root = tmp_path / "myfamilies"
    root.mkdir()
    (root / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(registry.EXTRA_ENV, "myfamilies")
    for name in [m for m in sys.modules if m == "myfamilies" or m.startswith("myfamilies.")]:
        monkeypatch.delitem(sys.modules, name)
    registry._registry.cache_clear()

    def write(name, text):
        # a module rewritten within the same second at the same size would load from its stale
        # bytecode (pyc validation is by mtime and size): drop the cache with the module
        shutil.rmtree(root / "__pycache__", ignore_errors=True)
        (root / f"{name}.py").write_text(textwrap.dedent(text))

    yield write
    registry._registry.cache_clear()


def test_a_family_of_ones_own_is_discovered_with_the_builtin_ones(package):
    package("mine", GOOD.format(name="mine", case_id="mine_tiny", extra=""))
    assert registry.family_names()[-1] == "mine"
    assert converters.get("mine_tiny").family == "mine"
    assert "convnextv2" in registry.families() and len(registry.families()) == len(registry.family_names())


@pytest.mark.parametrize("text, message", [
    ("import no_such_module\n", r"family module myfamilies\.broken failed to import: ModuleNotFoundError: No module named 'no_such_module'"),
    ("X = 1\n", r"family module myfamilies\.broken declares no FAMILY"),
    (GOOD.format(name="broken", case_id="broken_tiny", extra="").replace(", configurations=base.configurations", ""),
     r"myfamilies\.broken failed to import: TypeError: .*missing 1 required keyword-only argument: 'configurations'"),
    (GOOD.format(name="other", case_id="broken_tiny", extra=""), r"myfamilies\.broken: FAMILY\.name is 'other'"),
    (GOOD.format(name="broken", case_id="convnextv2_atto_1k_224", extra=""),
     r"myfamilies\.broken: case id 'convnextv2_atto_1k_224' already declared by family 'convnextv2'"),
    (GOOD.format(name="broken", case_id="broken_tiny", extra="").replace(", evaluation=base.evaluation", ""),
     r"family 'broken' \(myfamilies\.broken\): member `evaluation` is not declared"),
    (GOOD.format(name="broken", case_id="broken_tiny", extra="").replace("base.evaluation", "lambda case: None"),
     r"family 'broken' \(myfamilies\.broken\): member `evaluation` gave NoneType for case 'broken_tiny'"),
    (GOOD.format(name="broken", case_id="broken_tiny", extra=", transformers_lines=('==4.40',)"),
     r"myfamilies\.broken: FAMILY\.transformers_lines \['==4\.40'\]"),
])
def test_a_broken_family_is_an_error_naming_the_module_and_the_member(package, text, message):
    package("broken", text)
    with pytest.raises(registry.FamilyError, match=message):
        registry.families()


def test_a_broken_family_fails_collection_not_silently(tmp_path):
    """As a user meets it: pytest stops at collection with the module and the member named."""
    root = tmp_path / "myfamilies"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "broken.py").write_text(GOOD.format(name="broken", case_id="broken_tiny", extra="")
                                    .replace(", configurations=base.configurations", ""))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), **{registry.EXTRA_ENV: "myfamilies"})
    result = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_conversions.py"), "--co", "-q",
                             "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode not in (0, 5), result.stdout[-2000:]
    output = result.stdout + result.stderr
    assert "myfamilies.broken" in output and "'configurations'" in output, output[-3000:]


def test_importing_the_plugin_imports_neither_torch_nor_transformers():
    """The pytest11 entry point loads the plugin into every pytest run of the environment."""
    modules = ", ".join(f"vision_port_fixtures.{m}" for m in ("plugin", "session", "originals", "models", "images", "processors", "oracles"))
    code = (f"import sys, {modules}, converters.registry\n"
            "names = vision_port_fixtures.plugin.family_names()\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'timm', 'numpy') if m in sys.modules)\n"
            "print(heavy, len(names))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("]")[0] + "]" == "[]", result.stdout


def test_saving_keys_on_the_check_marks_whatever_the_test_file_is_called(tmp_path):
    renamed = tmp_path / "test_my_checks.py"
    shutil.copy(ROOT / "tests" / "test_conversions.py", renamed)
    out, report = tmp_path / "out", tmp_path / "report.json"
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1",
               VISION_PORT_EXPECTED_DIR=str(ROOT / "expected_logits"))
    result = subprocess.run([sys.executable, "-m", "pytest", str(renamed), "-q", "-p", "no:cacheprovider", "-k",
                             "convnextv2_atto_1k_224", "--weights", "random", "--save", str(out), "--report", str(report)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert json.loads(report.read_text())["saved"]["convnextv2_atto_1k_224"] == str(out / "convnextv2_atto_1k_224")
    checks = json.loads((out / "convnextv2_atto_1k_224" / "validation.json").read_text())["checks"]
    assert list(checks) == ["key_coverage", "pixel_values", "logits", "expected_logits", "round_trip", "save_reload", "as_loaded", "audit"]


def test_every_facade_name_is_one_thing_after_every_submodule_is_imported():
    """Importing `converters.x` sets the package attribute `x` to the module: a facade function
    of that name (once `family`) became a module and raised TypeError when called. No facade name
    may be a submodule's, and each still resolves to its function once all submodules are loaded."""
    import importlib
    import pkgutil
    import types

    submodules = [m.name for m in pkgutil.walk_packages(converters.__path__, "converters.")]
    for name in submodules:
        importlib.import_module(name)
    short = {name.split(".")[1] for name in submodules}
    assert not short & set(converters.__all__), f"facade names that are also submodules: {sorted(short & set(converters.__all__))}"
    modules = [name for name in converters.__all__ if isinstance(getattr(converters, name), types.ModuleType)]
    assert not modules, f"facade names resolving to modules: {modules}"
    first = registry.family_names()[0]
    assert converters.get_family(first).name == first


LINES = '''
import dataclasses
from converters.family import Family
from converters.plan import Line
from converters.registry import _load

base = _load("converters.families", "convnextv2")
CASES = (dataclasses.replace(base.cases[0], id="lines_tiny", family="lines"),)
FAMILY = Family(name="lines", cases=CASES, original_layout=base.original_layout, oracle=base.oracle,
                configurations=base.configurations, evaluation=base.evaluation,
                plan=lambda case: dataclasses.replace(base.plan(case), by_line={{{line}: Line()}}))
'''


def test_a_plan_whose_lines_miss_the_installed_one_fails_key_coverage_naming_family_member_and_line(package):
    from converters import checks, compat

    package("lines", LINES.format(line=compat.MAJOR - 1))
    case = converters.get("lines_tiny")
    _, coverage = converters.convert(case, converters.synthetic_original(case))
    check = checks.key_coverage(case.id, coverage)
    assert not check.ok
    first = check.message.splitlines()[1]
    assert first.startswith(f"family 'lines' (Family.plan), case 'lines_tiny', transformers {compat.VERSION}: "), first
    assert f"declares renames for transformers {compat.MAJOR - 1} (Plan.by_line) but not for {compat.MAJOR}" in first
    assert f"declare Plan.by_line[{compat.MAJOR}]" in first
    with pytest.raises(ValueError, match="resolved against the installed transformers first"):
        registry.get_family("lines").plan(case).forwards({})  # an unresolved plan is never applied
    registry._registry.cache_clear()
    del sys.modules["myfamilies.lines"]
    package("lines", LINES.format(line=compat.MAJOR))  # the same plan with the installed line declared
    _, coverage = converters.convert(case, converters.synthetic_original(case))
    assert coverage.ok, coverage.describe()


def test_a_family_takes_its_name_and_the_members_its_module_defines_once():
    from converters.family import Family

    def plan(case):
        return None

    namespace = {"__name__": "converters.families.somefamily", "plan": plan, "original_layout": plan, "oracle": plan,
                 "configurations": plan, "evaluation": plan, "helper": plan}
    family = Family.declared_in(namespace, cases=())
    assert family.name == "somefamily" and family.plan is plan and family.evaluation is plan
    with pytest.raises(TypeError, match="somefamily: plan defined in the module and given to Family.declared_in"):
        Family.declared_in(namespace, cases=(), plan=plan)
