"""The one object a conversion family declares: everything the core, the harness and the generic
tests need to convert, check and vary its cases.

A family is one module in `converters/families/` (or in a package named by $VISION_PORT_FAMILIES)
that defines `FAMILY = Family.declared_in(globals(), ...)`: its `name` is the module's name, and
the members the module defines under their own names (`plan`, `oracle`, ...) are taken from it.
Required members are the conversion itself (cases, plan, original layout, oracle), for the property tests a strategy of
valid configurations, and the original evaluation (`evaluation`: None only so the registry can
name it when missing); every other member has a default, documented beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .case import Case
from .evaluation import Evaluation, TimmEvaluation

if TYPE_CHECKING:  # the registry lists families without importing torch
    from .plan import Plan

# the two transformers lines of the version matrix (tox.ini, the nightly workflow)
TRANSFORMERS_LINES = ("==4.57.6", ">=5,<6")


@dataclass(frozen=True)
class Small:
    """A small configuration of one layout, for mutation tests: a forward costs milliseconds.
    `case_id` names the published case it starts from (its random-weights stand-in), `overrides`
    change its config, `image_size` is the side of the random image batch."""

    case_id: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    image_size: int = 64


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """Where a family's weights come from and on what terms, as the original repository states
    them: the model card's licence, citation and training data are built from it. Every field but
    the optional ones must be set (the registry says which is not); a case that differs overrides
    fields through `Case.provenance`."""

    licence: str = ""  # a Hub licence id (converters.licences.HUB_LICENCES); "other" for custom terms
    licence_statement: str = ""  # the weights' terms in one sentence, for the card
    licence_source: str = ""  # where the original states them: repository and file (section)
    repository: str = ""  # the original repository's URL
    papers: Mapping[str, str] = field(default_factory=dict)  # arXiv id -> title (the Hub links arXiv ids)
    datasets: tuple[str, ...] = ()  # training data as Hub dataset ids, in training order (card metadata)
    unlisted_data: tuple[str, ...] = ()  # training data the Hub holds no dataset of, by name
    licence_name: str | None = None  # licence "other": an id for the terms (required then)
    licence_link: str | None = None  # licence "other": the URL of their text (required then)
    non_commercial: bool = False  # the terms forbid commercial use: the card says so first
    base_model: str | None = None  # the Hub repo the original weights are published in, if any

    REQUIRED = ("licence", "licence_statement", "licence_source", "repository", "papers")

    def missing(self) -> list[str]:
        """The fields that must be set and are not."""
        missing = [name for name in self.REQUIRED if not getattr(self, name)]
        if not (self.datasets or self.unlisted_data):
            missing.append("datasets (or unlisted_data)")
        if self.licence == "other":
            missing += [name for name in ("licence_name", "licence_link") if not getattr(self, name)]
        return missing


PROVENANCE_FIELDS = frozenset(f.name for f in fields(Provenance))


@dataclass(frozen=True, kw_only=True, eq=False)  # identity: one object per family
class Family:
    name: str  # the module's name, and the pytest mark of its cases and its test module
    cases: tuple[Case, ...]
    # Case -> the declarative, reversible conversion (original keys -> transformers keys)
    plan: Callable[[Case], "Plan"]
    # Case -> the original checkpoint's keys and shapes on the meta device (real tensors for
    # buffers the original computes, such as index tables)
    original_layout: Callable[[Case], dict]
    # (Case, original state) -> pixels -> output: an implementation we did not write
    oracle: Callable[[Case, Mapping], Callable]
    # (Case, tiny) -> a hypothesis strategy of config overrides valid for the case's layout;
    # tiny=True where real tensors are made (keep them small). Import hypothesis inside it.
    configurations: Callable[[Case, bool], Any]

    # Entries of the checkpoint file that hold the weights, tried in order (dotted paths allowed)
    unwrap: tuple[str, ...] = ()
    # Classes `torch.load(weights_only=True)` may construct for this family's files
    allow: tuple[type, ...] = ()
    # The original evaluation preprocessing, declared as data (converters.evaluation): an
    # `Evaluation` read from the original repository's evaluation code, or Case -> one; or
    # `timm_evaluation` when the original is timm itself. Required: no default (the registry says so).
    evaluation: Evaluation | Callable[[Case], Evaluation | TimmEvaluation] | None = None
    # (Case, download) -> the real original file. Default: `case.url` through torch.hub's cache
    # (`converters.sources.original_file`). Cases with `extra_files` resolve those by URL too.
    original_file: Callable[[Case, bool], Path] | None = None
    # (oracle block tensor, converted block tensor) -> the oracle tensor in the converted model's
    # layout, or None: how this family's blocks line up for per-block parity where the core's
    # derived rules (equal shapes, permutations, (B, H, W, C) or (B, C, H, W) maps vs (B, H*W, C)
    # sequences; `converters.localise`) do not. Default: the derived rules alone.
    block_alignment: Callable[[Any, Any], Any] | None = None
    # Small configurations for mutants. Default: the smallest published case at its own size.
    mutants: tuple[Small, ...] = ()
    # Property-test examples for dear families: {tiny: (fast, thorough)}. Default: the profile's.
    examples: Mapping[bool, tuple[int, int]] = field(default_factory=dict)
    # The transformers lines (TRANSFORMERS_LINES) the nightly runs this family on.
    transformers_lines: tuple[str, ...] = TRANSFORMERS_LINES
    # The nightly needs a runner with large disk for the original files (RegNet SEER: two of
    # ~40 GB); the workflow then runs it on the runner named by its LARGE_DISK_RUNNER variable.
    nightly_large_disk: bool = False
    # Licence, papers, repository and training data of the original weights (the model card's).
    # None: not declared; such a family converts and saves (its card says so) but is never pushed.
    provenance: Provenance | None = None

    @classmethod
    def declared_in(cls, namespace: Mapping[str, Any], **members) -> "Family":
        """The family a module declares, at its end: `FAMILY = Family.declared_in(globals(), cases=...)`.
        Its name is the module's; every member the module defines under the member's own name
        (`def plan(case)`, `def original_layout(case)`, `def oracle(...)`, `def configurations(...)`,
        `def evaluation(case)`, ...) is taken from it; the others are given as `members`. A member both
        defined and given is an error: one declaration per member."""
        defined = {f.name: namespace[f.name] for f in fields(cls) if f.name != "name" and f.name in namespace}
        twice = sorted(set(defined) & set(members))
        if twice:
            raise TypeError(f"{namespace['__name__']}: {', '.join(twice)} defined in the module and given to Family.declared_in")
        return cls(name=namespace["__name__"].rpartition(".")[2], **defined, **members)

    def case_ids(self) -> list[str]:
        return [c.id for c in self.cases]

    def evaluation_of(self, case: Case) -> Evaluation | TimmEvaluation | None:
        """The case's declared original evaluation (None: not declared)."""
        if self.evaluation is None or isinstance(self.evaluation, Evaluation):
            return self.evaluation
        return self.evaluation(case)

    def provenance_of(self, case: Case) -> Provenance | None:
        """The family's provenance with the case's overrides (`Case.provenance`) applied."""
        if self.provenance is None:
            return None
        return replace(self.provenance, **case.provenance)
