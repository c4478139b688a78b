"""The version matrix as files: tox.ini, the nightly workflow, .ci/run and README.md agree with each
other and with the families, and the nightly's reachability probe answers fast when offline."""

from __future__ import annotations

import configparser
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

from converters import registry
from converters.family import TRANSFORMERS_LINES
from converters.sources import reachable

ROOT = Path(__file__).resolve().parents[1]


def tox() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "tox.ini")
    return parser


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"\*\*Tests\*\*.*?\n\n    (.+?)\n", readme, re.S).group(1)
    assert command in (ROOT / ".ci" / "run").read_text()
    assert "tox -e tf5,tf4" in command


def test_tox_offline_envs_pin_both_transformers_lines():
    ini = tox()
    # tf4 also installs PyPI's `fixtures` (the top-level name the plugin must not take: test_packaging.py)
    assert ini["testenv:tf4"]["deps"].split() == ["transformers==4.57.6", "fixtures"]
    assert ini["testenv:tf5"]["deps"].strip() == "transformers>=5,<6"
    for name in ("HF_HUB_OFFLINE = 1", "TRANSFORMERS_OFFLINE = 1", "HYPOTHESIS_PROFILE = fast"):
        assert name in ini["testenv"]["setenv"]
    assert "--weights random" in ini["testenv"]["commands"] and "-n 2" in ini["testenv"]["commands"]
    nightly = ini["testenv:nightly"]
    assert "--weights pretrained --full" in nightly["commands"] and "python -m converters.sources" in nightly["commands"]
    assert "HYPOTHESIS_PROFILE = thorough" in nightly["setenv"]
    assert "--full" not in ini["testenv"]["commands"]  # the default run (tf5, tf4) leaves the full run's checks out


def test_tox_full_env_is_the_full_run_offline_on_random_weights():
    """`tox -e full`: every check of every case (the plugin's --full), offline (the base env's setenv),
    random weights, on the line TRANSFORMERS_SPEC picks; the nightly runs it per (family, line)."""
    ini = tox()
    full = ini["testenv:full"]
    assert full["commands"].strip() == "pytest -n 2 --weights random --full {posargs}"
    assert "setenv" not in full and "HF_HUB_OFFLINE = 1" in ini["testenv"]["setenv"]
    assert full["deps"].strip() == "transformers{env:TRANSFORMERS_SPEC:>=5,<6}" and "TRANSFORMERS_SPEC" in full["passenv"]
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "nightly.yml").read_text())
    job = workflow["jobs"]["full"]
    assert job["needs"] == "families" and job["strategy"]["matrix"] == workflow["jobs"]["convert"]["strategy"]["matrix"]
    assert job["env"] == workflow["jobs"]["convert"]["env"]
    run = next(step["run"] for step in job["steps"] if step.get("name") == "Run")
    assert run.startswith('tox -e full -- -m "$MARKERS"')


def test_nightly_matrix_is_generated_from_the_registry():
    """The workflow's first job prints the matrix with `python -m converters.registry --matrix`: that
    command's output is the registry's matrix, and it covers every family on each transformers line
    it declares, plus the harness's tests."""
    printed = subprocess.run([sys.executable, "-m", "converters.registry", "--matrix"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert printed.count("\n") == 1, "GITHUB_OUTPUT takes one line"
    generated = json.loads(printed)
    assert generated == registry.nightly_matrix()
    jobs = {(job["family"], job["transformers"]) for job in generated["include"]}
    expected = {(name, line) for name, f in registry.families().items() for line in f.transformers_lines}
    assert jobs == expected | {("harness", line) for line in TRANSFORMERS_LINES}
    # exclusions are the families' own declarations, e.g. a model class removed in 5.x
    for name, f in registry.families().items():
        for line in set(TRANSFORMERS_LINES) - set(f.transformers_lines):
            assert compat_skips_on(line, f), f"{name} is left out of {line} but its cases run there"


def compat_skips_on(line: str, family) -> bool:
    """A family left out of the installed line must be one whose cases skip there."""
    from converters import compat

    installed = "==4.57.6" if compat.MAJOR < 5 else ">=5,<6"
    return line != installed or all(compat.unsupported(c) for c in family.cases)


def test_nightly_workflow_names_no_family_and_reads_the_generated_matrix():
    text = (ROOT / ".github" / "workflows" / "nightly.yml").read_text()
    workflow = yaml.safe_load(text)
    job = workflow["jobs"]["convert"]
    assert job["strategy"]["matrix"] == "${{ fromJSON(needs.families.outputs.matrix) }}"
    families_job = workflow["jobs"]["families"]
    assert families_job["steps"][-1]["run"] == 'echo "matrix=$(python -m converters.registry --matrix)" >> "$GITHUB_OUTPUT"'
    assert families_job["outputs"]["matrix"] == "${{ steps.%s.outputs.matrix }}" % families_job["steps"][-1]["id"]
    named = [name for name in registry.family_names() if re.search(rf"\b{name}\b", text)]
    assert not named, f"the workflow names families {named}: take them from the registry"
    run = next(step["run"] for step in job["steps"] if step.get("name") == "Run")
    assert run.startswith("tox -e nightly -- -m ") and job["env"]["MARKERS"] == "${{ matrix.markers }}"
    assert "schedule" in workflow["on"] and job["env"]["TRANSFORMERS_SPEC"] == "${{ matrix.transformers }}"


def test_family_test_modules_carry_their_family_mark():
    """The nightly jobs select a family by mark: a family's own test module must carry it."""
    for name in registry.family_names():
        module = ROOT / "tests" / f"test_{name}.py"
        if module.exists():
            assert f"pytestmark = pytest.mark.{name}" in module.read_text(), module.name


def test_reachability_probe_answers_fast_when_offline(monkeypatch):
    with socket.socket() as s:  # a loopback port nothing listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.perf_counter()
    assert reachable(f"http://127.0.0.1:{port}/x", timeout=5) is False
    assert time.perf_counter() - started < 2
    with socket.socket() as server:  # and a listening one is reachable: the probe can say yes
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert reachable(f"http://127.0.0.1:{server.getsockname()[1]}/x", timeout=5) is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert reachable("https://huggingface.co", timeout=5) is False


def test_the_nightly_probes_every_host_the_registry_names_and_stops_offline():
    """`python -m converters.sources` (the nightly's first command): every host of every case's files."""
    from converters import sources
    from converters.registry import cases

    urls = [u for c in cases() for u in (c.url, *c.extra_files.values()) if u]
    assert set(sources.hosts(cases())) >= {"https://" + u.split("/")[2] for u in urls}
    assert sources.hosts([]) == [] and sources.HUB in sources.hosts([SimpleNamespace(url=None, extra_files={})])
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "converters.sources"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "cannot reach: " in done.stderr and sources.HUB in done.stderr, done.stderr


def test_nightly_audits_every_published_case_on_its_lines_and_uploads_the_files():
    """Each (family, line) job runs with --audit, so every case declaring a published repo is audited on
    every transformers line its family runs on, and the <case>.audit.md files (next to the report) are
    uploaded whatever the outcome."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "nightly.yml").read_text())
    steps = workflow["jobs"]["convert"]["steps"]
    run = next(step["run"] for step in steps if step.get("name") == "Run")
    assert " --audit " in f"{run} " and "--report" in run
    upload = next(step for step in steps if step.get("name") == "Audit files")
    assert upload["if"] == "always()" and upload["with"]["path"] == "*.audit.md"
    assert "matrix.family" in upload["with"]["name"] and "job-index" in upload["with"]["name"]
    jobs = {(job["family"], job["transformers"]) for job in registry.nightly_matrix()["include"]}
    published = [case for case in registry.cases() if case.published_repo]
    assert published, "no case declares a published repo"
    for case in published:
        for line in registry.family_of(case).transformers_lines:
            assert (case.family, line) in jobs, f"{case.id} ({case.published_repo}) is not audited on {line}"
