"""Plugin wiring. The harness plugin (options, case parametrisation, session finish) lives in
`fixtures/plugin.py` and is registered by the package's `pytest11` entry point, because
pytest-xdist workers parse options such as `--save DIR` before they find a conftest.py; a
checkout that is not pip-installed loads it from here."""

from importlib.metadata import entry_points

if not any(ep.value == "fixtures.plugin" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["fixtures.plugin"]
