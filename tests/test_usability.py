"""What a newcomer sees: the case listing, why random weights, one error per case, progress,
plain words for a known divergence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import converters
from converters import cards, selection
from converters.record import CaseRecord, CheckResult, checks_from_json
from vision_port_fixtures import plugin
from vision_port_fixtures.results import Results
from vision_port_fixtures.summary import summary

ROOT = Path(__file__).resolve().parents[1]
ATTO = converters.get("convnextv2_atto_1k_224")


def seed_torch_hub_cache(tmp_path: Path, case) -> Path:
    path = tmp_path / "torch" / "hub" / "checkpoints" / Path(case.url).name
    path.parent.mkdir(parents=True)
    torch.save({"model": converters.synthetic_original(case)}, path)
    return path


def test_case_status_says_cached_reachable_or_no_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    asked = []
    status = plugin.case_status(ATTO, lambda url: asked.append(url) or False)
    assert status == {"case": ATTO.id, "family": "convnextv2", "weights": "no", "checks": selection.where(ATTO).why,
                      "supported": True, "published": ATTO.published_repo}
    assert asked == [ATTO.url]
    assert plugin.case_status(ATTO, lambda url: True)["weights"] == "reachable"
    cached = seed_torch_hub_cache(tmp_path, ATTO)
    assert plugin.case_status(ATTO, lambda url: False)["weights"] == "cached"
    assert sorted(cached.parent.iterdir()) == [cached]  # nothing downloaded beside it
    huge = converters.get("convnextv2_huge_22k_512")
    assert plugin.case_status(huge, lambda url: False)["checks"].startswith("full: ")


def test_cases_option_lists_every_case_and_runs_nothing(tmp_path):
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--cases", "tests/test_conversions.py"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.split() and line.split()[0] in {c.id for c in converters.cases()}}
    assert set(rows) == {c.id for c in converters.cases()}
    assert rows[ATTO.id][1:] == ["convnextv2", "no", "default", "yes", ATTO.published_repo]
    assert rows["convnextv2_huge_22k_512"][3] == "full"
    huge = next(i for i, line in enumerate(lines) if line.startswith("convnextv2_huge_22k_512 "))
    assert lines[huge + 1].strip() == selection.where(converters.get("convnextv2_huge_22k_512")).why  # and why, below it
    assert "passed" not in result.stdout and "collected" not in result.stdout


def test_conversion_mark_selects_the_case_checks_not_harness_tests_of_that_name():
    # -k resnet50 alone also matches test_resnet.py's test_the_crop_offset_is_the_only_pixel_difference[resnet50]
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co", "-q", "tests/test_conversions.py",
           "tests/test_resnet.py", "-k", "resnet50", "-m", "conversion"]
    ids = [line for line in subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120).stdout.splitlines() if "::" in line]
    checks = (ROOT / "tests" / "test_conversions.py").read_text().count("\n@pytest.mark.check(")
    assert len(ids) == checks and all(line.startswith("tests/test_conversions.py::") and line.endswith("[resnet50]") for line in ids), ids


def test_auto_reason_once_empty_checkpoint_once_and_unused_checkpoint_warned(tmp_path):
    """One run: atto in auto mode (no cache: random weights, saying why), femto from an empty file
    (one message, not one per check), a --checkpoint for a case not selected (warned)."""
    femto = converters.get("convnextv2_femto_1k_224")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "pytest", "tests/test_conversions.py", "-p", "no:cacheprovider", "-q", "-m", "conversion",
           "-k", f"{ATTO.id} or {femto.id}", "--checkpoint", f"{femto.id}={empty}", "--checkpoint", f"resnet18={empty}",
           "--report", str(tmp_path / "r.json")]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = result.stdout
    (tmp_path / "out.txt").write_text(out)
    assert result.returncode == 1, out[-3000:]
    assert out.count("conversion summary") == 1

    report = json.loads((tmp_path / "r.json").read_text())["cases"]
    reason = report[ATTO.id]["weights_reason"]
    assert "is not cached and not reachable" in reason and f"--checkpoint {ATTO.id}=PATH" in reason
    assert out.count(f"{ATTO.id} random weights: {reason}") == 1
    assert report[femto.id]["weights_reason"] is None

    checks = report[femto.id]["checks"]
    message = checks["key_coverage"]["reason"]
    # the pixel check needs no weights, the audit check none without --audit (it skips first)
    using_it = {name: c for name, c in checks.items() if name not in ("pixel_values", "audit")}
    assert str(empty) in message and {c["status"] for c in using_it.values()} == {"error"}  # still failing, not skipped
    assert {c["reason"] for name, c in using_it.items() if name != "key_coverage"} == {
        f"{femto.id}: the original cannot be used, see key_coverage"}
    assert out.count(str(empty)) == 2 and "During handling" not in out  # the failure, and the warning below
    assert f"--checkpoint resnet18={empty}: resnet18 is not selected" in out
    assert "converting ..." not in out  # no progress under -q


class Terminal:
    def __init__(self):
        self.lines = []

    def section(self, title):
        self.lines.append(f"== {title} ==")

    def write_line(self, line, **markup):
        self.lines.append(line)


def test_a_known_pixel_divergence_is_said_plainly_with_its_measured_figure():
    resnet50 = converters.get("resnet50")
    checks = {"pixel_values": {"status": "xfailed", "max_abs_diff": 4.11, "atol": 0.0, "reason": resnet50.pixel_divergence}}
    notice = cards.divergence_notice(resnet50, {"checks": checks})
    assert "pixel values that differ from the original evaluation's by up to 4.11" in notice
    assert "weights themselves are converted exactly" in notice and f"`{resnet50.timm_tag}`" in notice
    assert cards.divergence_notice(ATTO, {"checks": checks}) is None

    results = Results()
    results.order = ["pixel_values"]
    results.cases = {"resnet50": CaseRecord("resnet", "random", checks=checks_from_json(checks)),
                     ATTO.id: CaseRecord("convnextv2", "random", checks={"pixel_values": CheckResult("passed", max_abs_diff=0.0)})}
    results.saved = {"resnet50": "/out/resnet50", ATTO.id: f"/out/{ATTO.id}"}
    tr = Terminal()
    summary(tr, results)
    row = next(line for line in tr.lines if line.startswith("resnet50 "))
    assert row.endswith("/out/resnet50 (known difference: its image processor gives other pixel values than the "
                        "original evaluation (max abs diff 4.11))")
    assert next(line for line in tr.lines if line.startswith(ATTO.id)).endswith(f"/out/{ATTO.id}")


def test_a_known_output_divergence_is_said_plainly():
    case = next(c for c in converters.cases("dinov2") if c.output_divergence)
    notice = cards.divergence_notice(case, {"checks": {"logits": {"status": "passed", "max_abs_diff": 2e-5}}})
    assert "differ from the original evaluation's" in notice and case.output_divergence in notice and "2e-05" in notice
    assert "outputs differ from the original evaluation's" in cards.divergence_summary(case, {})


class Plugins:
    def __init__(self, **plugins):
        self.plugins = plugins

    def get_plugin(self, name):
        return self.plugins.get(name)


class Capture:
    def __init__(self):
        self.disabled = 0

    def global_and_fixture_disabled(self):
        import contextlib

        self.disabled += 1
        return contextlib.nullcontext()


def test_progress_of_a_step_with_v_in_the_main_process_only():
    from types import SimpleNamespace

    from vision_port_fixtures.progress import step

    def run(verbose, worker=False):
        tr, capture = Terminal(), Capture()
        config = SimpleNamespace(option=SimpleNamespace(verbose=verbose),
                                 pluginmanager=Plugins(terminalreporter=tr, capturemanager=capture))
        if worker:
            config.workerinput = {}
        with step(config, ATTO.id, "converting"):
            pass
        return tr.lines, capture.disabled

    lines, disabled = run(1)
    assert lines[0] == f"  {ATTO.id}: converting ..." and lines[1].startswith(f"  {ATTO.id}: converting done in ")
    assert lines[1].endswith(" s") and disabled == 2  # written around pytest's capture, shown as it happens
    assert run(0) == ([], 0) and run(-1) == ([], 0) and run(2, worker=True) == ([], 0)


def test_streaming_reports_each_shard_as_it_is_written(tmp_path):
    from converters import stream

    names = []
    streamed = stream.save(ATTO, converters.synthetic_original(ATTO), tmp_path / "out", shard_bytes=8 << 20, on_shard=names.append)
    assert len(names) > 1 and names == [Path(f).name for f in streamed.files]
