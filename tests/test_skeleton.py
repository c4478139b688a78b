"""`python -m converters.skeleton NAME` writes a family that imports and whose checks fail loudly,
naming the member to fill in, until each is written: never a vacuous pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import converters
from converters import registry, skeleton
from tests.test_registry import ROOT, package  # noqa: F401  (the fixture: a package of families of one's own)

EVALUATION = ('evaluation = Evaluation(source="owner/repo eval.py build_transform", crop_size=224, warp=True, '
              'mean=IMAGENET_MEAN, std=IMAGENET_STD)\n')


def test_the_command_writes_both_files_and_refuses_to_overwrite_or_a_bad_name(tmp_path):
    run = lambda *args: subprocess.run([sys.executable, "-m", "converters.skeleton", *args], cwd=ROOT,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    done = run("toy", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    module, tests = tmp_path / "converters" / "families" / "toy.py", tmp_path / "tests" / "test_toy.py"
    assert "FAMILY = Family.declared_in(" in module.read_text() and "pytestmark = pytest.mark.toy" in tests.read_text()
    again = run("toy", "--out", str(tmp_path))
    assert again.returncode != 0 and "already exist; nothing written" in again.stderr
    assert run("Bad-Name", "--out", str(tmp_path / "other")).returncode != 0 and not (tmp_path / "other").exists()


def _write(package, tmp_path, text: str) -> Path:
    """The family module in the package of families, its skeleton test module beside it."""
    package("toy", text)
    tests = tmp_path / "test_toy.py"
    tests.write_text(skeleton.TESTS.format(name="toy"))
    return tests


def test_until_filled_in_the_registry_names_the_evaluation_then_each_check_names_its_member(package, tmp_path, monkeypatch):
    _write(package, tmp_path, skeleton.MODULE.format(name="toy", hub="toy"))
    with pytest.raises(registry.FamilyError, match=r"member `evaluation` failed for case 'toy_base': FillThisIn: fill this in: evaluation"):
        registry.families()

    registry._registry.cache_clear()
    monkeypatch.delitem(sys.modules, "myfamilies.toy")
    text = skeleton.MODULE.format(name="toy", hub="toy")
    start = text.index("evaluation = fill_this_in(")
    tests = _write(package, tmp_path, text[:start] + EVALUATION + text[text.index("# Case -> Plan"):])
    case = converters.get("toy_base")
    for call, member in ((lambda: converters.original_layout(case), "original_layout"),
                         (lambda: converters.convert(case, {}), "plan"),
                         (lambda: converters.oracle(case, {}), "oracle"),
                         (lambda: registry.get_family("toy").configurations(case, True), "configurations")):
        with pytest.raises(skeleton.FillThisIn, match=f"fill this in: {member}: "):
            call()
    own = subprocess.run([sys.executable, "-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert own.returncode == 1 and "fill this in: the original state dicts' key counts" in own.stdout, own.stdout[-2000:]
