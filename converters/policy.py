"""Whether a case's conversion may be saved and pushed, from its recorded check results: the one
policy `--save` (fixtures/session.py), `--push` and `python -m converters.publish` (publish.py)
apply, on the same facts (validation.json records every field read here).

A check result is the dict of `--report` / validation.json: `status`, and the fields this policy
reads: `may_skip` (a skip must not block: expected logits on random weights), `may_fail` (a
failure judges something other than this conversion: the audit of a published repo),
`too_large` (skipped because a forward pass does not fit in this machine's memory) and
`tensors_verified` (the streamed weights were read back tensor for tensor against the source).
"""

from __future__ import annotations

PASSED = ("passed", "xfailed")


def refusal(checks: dict) -> str | None:
    """None when the checks allow the save (and push); else the checks that do not, as
    "name status, ...". A model too large for a forward pass here skips its output checks; it may
    still be saved when its weights were verified tensor for tensor against the source."""
    verified = any(r.get("tensors_verified") for r in checks.values())
    bad = [f"{name} {r['status']}" for name, r in checks.items() if not allowed(r, verified)]
    return ", ".join(bad) or None


def allowed(result: dict, verified: bool) -> bool:
    if result["status"] in PASSED or result.get("may_fail"):
        return True
    return result["status"] == "skipped" and bool(result.get("may_skip") or (verified and result.get("too_large")))


def allowance(result: dict) -> str:
    """Why the policy let a status other than a pass through, for the card's note ("" otherwise)."""
    if result["status"] in PASSED:
        return ""
    if result.get("may_fail"):
        return "judges another artefact, not this conversion: does not block the save"
    if result.get("too_large"):
        return "too large to run here: the weights were verified tensor for tensor"
    return "allowed to skip" if result.get("may_skip") else ""
