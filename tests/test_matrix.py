"""The version matrix as files: tox.ini, the nightly workflow, .ci/run and README.md agree with each
other and with the families, and the nightly's reachability probe answers fast when offline."""

from __future__ import annotations

import configparser
import re
import socket
import time
from pathlib import Path

import yaml

import converters
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
    assert ini["testenv:tf4"]["deps"].strip() == "transformers==4.57.6"
    assert ini["testenv:tf5"]["deps"].strip() == "transformers>=5,<6"
    for name in ("HF_HUB_OFFLINE = 1", "TRANSFORMERS_OFFLINE = 1", "HYPOTHESIS_PROFILE = fast"):
        assert name in ini["testenv"]["setenv"]
    assert "--weights random" in ini["testenv"]["commands"] and "-n 2" in ini["testenv"]["commands"]
    nightly = ini["testenv:nightly"]
    assert "--weights pretrained" in nightly["commands"] and "reachable(" in nightly["commands"]
    assert "HYPOTHESIS_PROFILE = thorough" in nightly["setenv"]


def test_nightly_workflow_covers_every_family_on_both_lines():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "nightly.yml").read_text())
    job = workflow["jobs"]["convert"]
    matrix = job["strategy"]["matrix"]
    assert set(matrix["family"]) == set(converters.families) | {"harness"}
    assert set(matrix["transformers"]) == {"==4.57.6", ">=5,<6"}
    assert matrix["exclude"] == [{"transformers": ">=5,<6", "family": "vit_hybrid"}]
    run = next(step["run"] for step in job["steps"] if step.get("name") == "Run")
    assert run.startswith("tox -e nightly -- -m ")
    assert "schedule" in workflow["on"] and job["env"]["TRANSFORMERS_SPEC"] == "${{ matrix.transformers }}"


def test_family_test_modules_carry_their_family_mark():
    """The nightly jobs select a family by mark: a family's own test module must carry it."""
    for family in converters.families:
        module = ROOT / "tests" / f"test_{family}.py"
        if module.exists():
            assert f"pytestmark = pytest.mark.{family}" in module.read_text(), module.name


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
