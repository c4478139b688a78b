"""Plugin wiring. The harness plugin (options, case parametrisation, session finish) lives in the
repository folder `fixtures/`, installed as the package `vision_port_fixtures` (pyproject.toml: the
top-level name `fixtures` is PyPI's), and is registered by the package's `pytest11` entry point,
because pytest-xdist workers parse options such as `--save DIR` before they find a conftest.py. A
checkout that is not pip-installed imports the folder under that name from here."""

import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

PACKAGE, PLUGIN = "vision_port_fixtures", "vision_port_fixtures.plugin"

if not any(ep.value == PLUGIN for ep in entry_points(group="pytest11")):
    if importlib.util.find_spec(PACKAGE) is None:
        folder = Path(__file__).parent / "fixtures"
        spec = importlib.util.spec_from_file_location(PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)])
        sys.modules[PACKAGE] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[PACKAGE])
    pytest_plugins = [PLUGIN]
