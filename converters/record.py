"""What a session records of a case: one type per level (a case's record holding its check
results) and one conversion each way to the JSON of `--report` and validation.json, whose schema
is unchanged: a check result is {"status", "max_abs_diff", "atol", "reason", "may_skip",
"may_fail"} plus the figures its check measured (`too_large` and `tensors_verified` among them,
which the save policy reads: `converters.policy`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

STATUSES = ("passed", "failed", "error", "skipped", "xfailed")


@dataclass
class CheckResult:
    status: str  # one of STATUSES
    reason: str | None = None  # why it skipped, failed or is an expected failure
    may_skip: bool = False  # a skip does not block the save (expected logits on random weights)
    may_fail: bool = False  # a failure judges another artefact (the audit of a published repo)
    max_abs_diff: float | None = None
    atol: float | None = None
    too_large: bool = False  # skipped: a forward pass does not fit in this machine's memory
    tensors_verified: int | None = None  # a streamed save: tensors read back against the source
    figures: dict[str, Any] = field(default_factory=dict)  # every other figure the check measured

    _NAMED = ("status", "max_abs_diff", "atol", "reason", "may_skip", "may_fail")  # always in the JSON, in this order

    def add(self, figures: Mapping[str, Any]) -> None:
        """A check's figures (`record.figures(...)` in a check test): the named ones set their field."""
        for key, value in figures.items():
            if key in _FIELDS:
                setattr(self, key, value)
            else:
                self.figures[key] = value

    def figure(self, name: str) -> Any:
        """A figure by its JSON name, named field or not (None when not measured)."""
        return getattr(self, name) if name in _FIELDS else self.figures.get(name)

    def to_json(self) -> dict:
        out = {name: getattr(self, name) for name in self._NAMED}
        if self.too_large:
            out["too_large"] = True
        if self.tensors_verified is not None:
            out["tensors_verified"] = self.tensors_verified
        return out | self.figures

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CheckResult":
        """A check result read back (validation.json of a saved folder: untrusted once on disk)."""
        if not isinstance(data, Mapping) or data.get("status") not in STATUSES:
            raise ValueError(f"not a check result (status one of {', '.join(STATUSES)})")
        result = cls(status=data["status"])
        result.add({k: v for k, v in data.items() if k != "status"})
        return result


_FIELDS = {f.name for f in fields(CheckResult)} - {"figures"}


@dataclass
class CaseRecord:
    family: str
    weights: str | None = None  # "pretrained" or "random", once a check ran
    source: str | None = None  # where the original tensors came from
    checks: dict[str, CheckResult] = field(default_factory=dict)
    seconds: float = 0.0  # every check's setup, call and teardown (the conversion included)
    check_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    weights_reason: str | None = None  # why auto mode used random weights, and the fix
    notes: list[str] = field(default_factory=list)  # what loading the original said

    def reasons(self, *statuses: str) -> list[str]:
        """The reasons of the checks with these statuses, in that order of statuses."""
        return [r.reason for status in statuses for r in self.checks.values() if r.status == status and r.reason]

    def to_json(self) -> dict:
        out = {"family": self.family, "weights": self.weights, "source": self.source,
               "checks": {name: result.to_json() for name, result in self.checks.items()},
               "seconds": self.seconds, "check_seconds": self.check_seconds, "weights_reason": self.weights_reason}
        if self.peak_rss_mb is not None:
            out["peak_rss_mb"] = self.peak_rss_mb
        if self.notes:
            out["notes"] = self.notes
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CaseRecord":
        """A case's record read back from `--report`'s "cases" (the inverse of `to_json`)."""
        named = {k: data[k] for k in ("weights", "source", "seconds", "check_seconds", "peak_rss_mb", "weights_reason", "notes") if k in data}
        return cls(data["family"], checks=checks_from_json(data.get("checks", {})), **named)


def checks_from_json(checks: Mapping[str, Any]) -> dict[str, CheckResult]:
    """validation.json's "checks" read back as typed results; a malformed one raises ValueError naming it."""
    out = {}
    for name, data in checks.items():
        try:
            out[name] = CheckResult.from_json(data)
        except ValueError as e:
            raise ValueError(f"check {name!r}: {e}") from None
    return out
