"""What the package installs: `converters` and the plugin as `vision_port_fixtures`, never the
top-level name `fixtures`, which PyPI's `fixtures` (testtools, OpenStack tooling) owns; test doubles
stay in tests/support. tox's tf4 environment installs PyPI's `fixtures`, so the whole suite runs
there beside it."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import distribution, entry_points, packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIST = "vision-port-harness"


def test_the_package_installs_its_own_names_only():
    owned = sorted(name for name, dists in packages_distributions().items() if DIST in dists)
    assert owned == ["converters", "vision_port_fixtures"], owned
    plugins = [ep.value for ep in entry_points(group="pytest11") if ep.dist is not None and ep.dist.name == DIST]
    assert plugins == ["vision_port_fixtures.plugin"], plugins
    installed = distribution(DIST).read_text("top_level.txt") or ""
    assert "fixtures" not in installed.split(), installed


def test_test_doubles_are_not_in_the_installed_plugin():
    import vision_port_fixtures

    shipped = {p.name for p in Path(vision_port_fixtures.__file__).parent.glob("*.py")}
    assert not shipped & {"hub.py", "memory_limit.py"}, shipped
    assert (ROOT / "tests" / "support" / "hub.py").is_file() and (ROOT / "tests" / "support" / "memory_limit.py").is_file()


def test_pypis_fixtures_and_the_plugin_load_side_by_side(tmp_path):
    """Outside the repository (no checkout on sys.path), as a user's environment imports them."""
    code = ("import fixtures, vision_port_fixtures.plugin as plugin, pathlib\n"
            "print(pathlib.Path(fixtures.__file__).resolve())\n"
            "print(hasattr(fixtures, 'Fixture'), len(plugin.PLUGINS))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    if "No module named 'fixtures'" in run.stderr:
        pytest.skip("PyPI's fixtures is not installed in this environment (tox -e tf4 installs it)")
    assert run.returncode == 0, run.stderr[-2000:]
    where, flags = run.stdout.split("\n")[:2]
    assert Path(where).parent != ROOT / "fixtures" and "site-packages" in Path(where).parts, \
        f"'fixtures' resolved to {where}, not PyPI's installed package"
    assert flags == "True 6", flags


def test_under_workers_each_group_stays_in_one_worker(tmp_path):
    """`-n 2` alone: the plugin asks pytest-xdist for `--dist loadgroup` through the arguments, which
    the workers re-parse, so every check of a case (an `xdist_group`) runs in one worker."""
    (tmp_path / "test_groups.py").write_text(
        "import os, pytest\n"
        "@pytest.mark.parametrize('i', range(6))\n"
        "@pytest.mark.xdist_group('one_case')\n"
        "def test_check(i):\n"
        "    with open('workers.txt', 'a') as f:\n"
        "        f.write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-p", "no:randomly", "-p", "no:cacheprovider", "test_groups.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ran = (tmp_path / "workers.txt").read_text().split()
    assert len(ran) == 6 and len(set(ran)) == 1, f"the group's 6 tests ran in workers {ran}"
