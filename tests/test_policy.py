"""One save and push policy (`converters.policy`), deciding on recorded fields, never on message
text: `--save` (Results.publishable) and `--push` (publish.evidence, from validation.json) agree.
The end-to-end `--audit --push` run is in test_audit.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from converters import policy, publish
from converters.memory import TOO_LARGE
from converters.record import checks_from_json
from vision_port_fixtures.results import Results, TooLarge
from vision_port_fixtures.session import HarnessSession

CASE = "some_case"


def passed(**fields) -> dict:
    return {"status": "passed", "may_skip": False, "may_fail": False} | fields


@pytest.mark.parametrize("checks, refused", [
    ({"logits": passed(), "audit": passed(status="failed", may_fail=True)}, None),
    ({"logits": passed(), "audit": passed(status="error", may_fail=True)}, None),
    ({"logits": passed(status="xfailed"), "expected_logits": passed(status="skipped", may_skip=True)}, None),
    ({"logits": passed(status="failed"), "audit": passed(status="failed", may_fail=True)}, "logits failed"),
    ({"logits": passed(status="skipped")}, "logits skipped"),
    # too large for a forward pass: allowed only when the streamed weights were verified
    ({"logits": passed(status="skipped", too_large=True), "save_reload": passed(tensors_verified=12)}, None),
    ({"logits": passed(status="skipped", too_large=True), "save_reload": passed()}, "logits skipped"),
    # the reason's text decides nothing: only the recorded field does
    ({"logits": passed(status="skipped", reason=f"x: {TOO_LARGE}"), "save_reload": passed(tensors_verified=12)}, "logits skipped"),
])
def test_save_and_push_decide_alike(checks, refused, tmp_path):
    typed = checks_from_json(checks)
    assert policy.refusal(typed) == refused
    assert {name: result.to_json() for name, result in typed.items()} == {
        name: {"max_abs_diff": None, "atol": None, "reason": None} | result for name, result in checks.items()}  # one JSON, both ways
    results = Results()
    for name, result in checks.items():
        results.declare({"case": CASE, "check": name, "may_skip": result["may_skip"], "may_fail": result["may_fail"]})
    results.entry(CASE, "family").checks = typed
    assert results.publishable(CASE) == (refused and f"not saved: {refused}")
    (tmp_path / "validation.json").write_text(json.dumps({"checks": checks, "original": {"weights": "pretrained", "source": "x"}}))
    if refused:
        with pytest.raises(publish.PushRefused, match=f"did not pass validation \\({refused}\\)"):
            publish.evidence(tmp_path)
    else:
        assert publish.evidence(tmp_path)["checks"] == checks


def test_a_too_large_skip_is_recorded_as_a_field_of_its_check():
    """A TooLarge skip (raised once by the session-scoped hf_model fixture, re-raised for every
    check needing it) becomes `too_large: true` in the check's result; any other skip does not."""
    session = HarnessSession.__new__(HarnessSession)
    results = Results()
    found = {"case": CASE, "family": "family", "check": "logits", "may_skip": False, "may_fail": False}
    for error, expected in ((TooLarge(f"{CASE}: {TOO_LARGE}"), True), (pytest.skip.Exception("other"), False)):
        hook = session.pytest_runtest_makereport(None, SimpleNamespace(when="setup", excinfo=SimpleNamespace(value=error)))
        next(hook)
        report = SimpleNamespace(when="setup", passed=False, skipped=True, duration=0.1, longrepr=("f", 1, f"Skipped: {error}"),
                                 user_properties=[("harness_check", found)])
        with pytest.raises(StopIteration) as done:
            hook.send(report)
        results.record(done.value.value)
        assert results.cases[CASE].checks["logits"].too_large is expected
        assert results.to_json()[CASE]["checks"]["logits"].get("too_large") is (expected or None)
        results.cases.clear()


def test_a_malformed_check_record_is_refused_naming_the_check(tmp_path):
    (tmp_path / "validation.json").write_text(json.dumps({"checks": {"logits": {"status": "great"}},
                                                          "original": {"weights": "pretrained", "source": "x"}}))
    with pytest.raises(publish.PushRefused, match=r"holds no valid check results \(check 'logits': not a check result"):
        publish.evidence(tmp_path)


def test_a_case_record_makes_the_reports_json_and_reads_it_back():
    from converters.record import CaseRecord, CheckResult

    record = CaseRecord("family", "random", "synthetic", seconds=1.5, check_seconds={"logits": 1.5}, notes=["n"],
                        checks={"logits": CheckResult("passed", max_abs_diff=1e-6, atol=1e-5, figures={"cosine_similarity": 1.0}),
                                "expected_logits": CheckResult("skipped", "random weights", may_skip=True)})
    data = json.loads(json.dumps(record.to_json()))
    assert data["checks"]["logits"] == {"status": "passed", "max_abs_diff": 1e-6, "atol": 1e-5, "reason": None, "may_skip": False,
                                        "may_fail": False, "cosine_similarity": 1.0}
    assert CaseRecord.from_json(data) == record
