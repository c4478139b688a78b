"""Whether a case's conversion may be saved and pushed, from its recorded check results: the one
policy `--save` (fixtures/outputs.py), `--push` and `python -m converters.publish` (publish.py)
apply, on the same facts (validation.json records every field read here).

A check result is a `converters.record.CheckResult` (validation.json's "checks" read back with
`converters.record.checks_from_json`): `status`, and the fields this policy reads: `may_skip` (a
skip must not block: expected logits on random weights), `may_fail` (a failure judges something
other than this conversion: the audit of a published repo),
`too_large` (skipped because a forward pass does not fit in this machine's memory) and
`tensors_verified` (the streamed weights were read back tensor for tensor against the source).
"""

from __future__ import annotations

from typing import Mapping

from .record import CheckResult

PASSED = ("passed", "xfailed")


def refusal(checks: Mapping[str, CheckResult]) -> str | None:
    """None when the checks allow the save (and push); else the checks that do not, as
    "name status, ...". A model too large for a forward pass here skips its output checks; it may
    still be saved when its weights were verified tensor for tensor against the source."""
    verified = any(r.tensors_verified for r in checks.values())
    bad = [f"{name} {r.status}" for name, r in checks.items() if not allowed(r, verified)]
    return ", ".join(bad) or None


def allowed(result: CheckResult, verified: bool) -> bool:
    if result.status in PASSED or result.may_fail:
        return True
    return result.status == "skipped" and bool(result.may_skip or (verified and result.too_large))


def allowance(result: CheckResult) -> str:
    """Why the policy let a status other than a pass through, for the card's note ("" otherwise)."""
    if result.status in PASSED:
        return ""
    if result.may_fail:
        return "judges another artefact, not this conversion: does not block the save"
    if result.too_large:
        return "too large to run here: the weights were verified tensor for tensor"
    return "allowed to skip" if result.may_skip else ""
