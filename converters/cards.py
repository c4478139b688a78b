"""The model card of a saved conversion: the original's terms and provenance first, what was checked
and measured (the validation record's figures as `model-index` results), how to load it exactly, and
any difference from the original evaluation."""

from __future__ import annotations

import os
import re
from typing import Mapping

from . import policy
from .record import CheckResult, checks_from_json

# Which validation figures are `model-index` results: the Hub's schema is (task, dataset, metric, value), so a
# figure fits when it is one number measured on named inputs: max abs diffs of passed checks (pixels vs the
# original preprocessing, outputs vs the oracle, the recorded logits, the round trip, the reload) and the
# oracle comparison's cosine similarity and top-5 agreement. They do not fit as benchmark scores (no
# accuracy on a test split), so `dataset_type` names the synthetic images, and results are `verified: false`.
# Not results: key coverage (a list of problems, not a number), statuses and skip reasons (text), the
# tolerances (thresholds, not measurements), times and memory (of this machine, not of the model).
REFERENCE = {"pixel_values": "the original preprocessing", "logits": "the oracle", "expected_logits": "the recorded logits",
             "round_trip": "the original state dict", "save_reload": "the model as converted"}
COCO = ("coco", "COCO val2017 image 000000039769")  # the expected_logits check's image


def _eval_results(checks: Mapping[str, CheckResult], images: list, task: str) -> list:
    from huggingface_hub import EvalResult

    synthetic = ("synthetic", "synthetic images " + ", ".join(images))
    results = []
    for name, check in checks.items():
        if check.status != "passed" or name not in REFERENCE:
            continue
        dataset_type, dataset_name = COCO if name == "expected_logits" else synthetic
        for metric in ("max_abs_diff", "cosine_similarity", "top5_agreement"):
            if check.figure(metric) is not None:
                results.append(EvalResult(
                    task_type=task, dataset_type=dataset_type, dataset_name=dataset_name, metric_type=metric,
                    metric_name=f"{name}: {metric.replace('_', ' ')} vs {REFERENCE[name]}", metric_value=check.figure(metric),
                    verified=False))
    return results


def model_card(case, validation: dict):
    """The model card: huggingface_hub ModelCardData (licence, datasets, tags, task, the validation
    figures as model-index results) and a text saying where the weights come from, on what terms,
    how to load them, how they were validated and what to cite."""
    from huggingface_hub import ModelCard, ModelCardData

    from .registry import family_of

    family = family_of(case)
    provenance = family.provenance_of(case)
    original, checks = validation["original"], checks_from_json(validation["checks"])
    random = original["weights"] != "pretrained"
    task = "image-classification" if validation["output"] == "logits" else "image-feature-extraction"
    licence = dict(license="unknown")
    if provenance is not None:
        licence = dict(license=provenance.licence, license_name=provenance.licence_name, license_link=provenance.licence_link)
    data = ModelCardData(
        **licence, library_name="transformers", pipeline_tag=task, tags=["vision", task, case.family],
        datasets=list(provenance.datasets) if provenance and provenance.datasets else None,
        base_model=provenance.base_model if provenance else None,
        model_name=case.hub_name, eval_results=_eval_results(checks, validation["images"], task) or None,
    )
    warning = ("\n> **Random weights.** This folder was converted from a synthetic checkpoint with random "
               "tensors to test the conversion; it is not a usable model.\n") if random else ""
    notice = divergence_notice(case, validation)
    divergences = f"\n{notice}\n" if notice else ""
    rows = "\n".join(
        f"| {cell(name)} | {cell(c.status)} | {_fmt(c.max_abs_diff)} | {_fmt(c.atol)} "
        f"| {cell('; '.join(filter(None, (policy.allowance(c), c.reason))))} |"
        for name, c in checks.items()
    )
    body = f"""---
{data.to_yaml()}
---

# {case.hub_name}
{warning}
{_terms(provenance)}Converted from the original checkpoint {code(_shown(original['source']))}{_sha(validation)} ({case.family}) to
`{case.model_class}` and validated by the conversion harness.
{divergences}
## Original weights

{_weights(case, provenance, original, checks)}

## Licence

{_licence(provenance)}

## Usage

{_usage(case, family, task, validation.get("repo_id"))}
{_as_loaded(validation)}

## Validation

Weights: **{original['weights']}**. Images: {', '.join(validation['images'])}.

| check | status | max abs diff | tolerance | note |
|---|---|---|---|---|
{rows}

## Versions

{', '.join(f'{k} {v}' for k, v in validation['versions'].items())}

## Citation

{_citation(provenance)}
"""
    return ModelCard(body)


def _terms(provenance) -> str:
    """The card's first words: the terms, so that a non-commercial licence is read before anything else."""
    if provenance is None:
        return "**Licence not declared**: this family declares no provenance, so the terms of its weights are unknown here. "
    terms = "**Non-commercial use only.** " if provenance.non_commercial else ""
    return f"{terms}{provenance.licence_statement} "


def _shown(source: str) -> str:
    """A URL or "synthetic (seed N)" as it is; a local file by its name (its path says nothing on the Hub)."""
    return os.path.basename(source) if os.path.isabs(source) else source


def _weights(case, provenance, original: dict, checks: Mapping[str, CheckResult]) -> str:
    published = {None: case.url or (f"https://huggingface.co/{provenance.base_model}" if provenance and provenance.base_model else None),
                 **case.extra_files}
    if not original.get("files"):  # synthetic: no file was read
        where = ", ".join(f"`{url}`" for url in published.values() if url) or "its original source"
        return f"{original['source']}: random tensors in the original layout. The published weights are at {where}."
    lines = ["| file | where from | sha256 |", "|---|---|---|"]
    for f in original["files"]:  # the file name only: a local path says nothing to a reader of the Hub
        url = f["source"] if str(f["source"]).startswith(("http://", "https://")) else None
        where = f"published at {code(url)}" if url else _local(published.get(f["part"]), f["sha256"] if f["part"] is None else None,
                                                                   checks["expected_logits"].figures if "expected_logits" in checks else {})
        lines.append(f"| {cell(os.path.basename(f['path']))} | {where} | `{f['sha256']}` |")
    return "\n".join(lines)


def _local(url: str | None, sha256: str | None, expected: dict) -> str:
    """A local file (`--checkpoint`), not fetched from where the weights are published: whether it
    is the published file is known only from a recorded sha256 of that file (expected_logits)."""
    said = "a local file, not fetched from " + (code(url) if url else "a published source")
    recorded = expected.get("published_sha256")
    if sha256 is None or "published_sha256" not in expected:
        return said
    if recorded is None:
        return f"{said}; no sha256 of the published file is recorded, so whether it is that file is not known"
    if recorded == sha256:
        return f"{said}; its sha256 is the recorded sha256 of the published file"
    return f"{said}; NOT the published file: its sha256 differs from the published file's (`{recorded[:12]}`)"


def _licence(provenance) -> str:
    if provenance is None:
        return "Not declared (`Family.provenance` is not set): this conversion is not pushed to the Hub."
    name = f" (`{provenance.licence_name}`, {provenance.licence_link})" if provenance.licence == "other" else ""
    return (f"`{provenance.licence}`{name}. {provenance.licence_statement} Source: {provenance.licence_source}, "
            f"in {provenance.repository}. The conversion does not change the terms of the original weights.")


def _repo_line(case, repo_id: str | None) -> str:
    if repo_id:  # pushed: the id it was pushed to
        return f'repo = "{repo_id}"  # or the path of a local copy of this folder'
    return f'repo = "ORG/{case.hub_name}"  # the Hub id this folder is pushed to, or its local path'


def _usage(case, family, task: str, repo_id: str | None = None) -> str:
    auto = "AutoModelForImageClassification" if task == "image-classification" else "AutoModel"
    if any(line.startswith(">=5") for line in family.transformers_lines):
        pil = ("# The PIL image processor, as validated: transformers 5.x loads a torchvision-based one by default,\n"
               "# 1-2 grey levels off (measured below); on 4.x pass use_fast=False instead of backend=\"pil\".\n"
               "processor = AutoImageProcessor.from_pretrained(repo, backend=\"pil\")")
    else:
        pil = (f"# {case.model_class} is in transformers {', '.join(family.transformers_lines)} only (not 5.x);\n"
               "# use_fast=False loads the PIL image processor, as validated.\n"
               "processor = AutoImageProcessor.from_pretrained(repo, use_fast=False)")
    from . import compat

    if not compat.auto_loadable(case.config_class):  # deprecated: the Auto classes do not know it
        return f"""```python
from PIL import Image
from {compat.module_of(case.config_class)} import {case.model_class}, {case.processor_class}

{_repo_line(case, repo_id)}
# transformers {', '.join(family.transformers_lines)} only; its Auto classes do not know this deprecated model type
processor = {case.processor_class}.from_pretrained(repo)
model = {case.model_class}.from_pretrained(repo)
outputs = model(**processor(images=Image.open("image.jpg").convert("RGB"), return_tensors="pt"))
print(outputs.{case.output}.shape)
```"""
    return f"""```python
from PIL import Image
from transformers import AutoImageProcessor, {auto}

{_repo_line(case, repo_id)}
{pil}
model = {auto}.from_pretrained(repo)
outputs = model(**processor(images=Image.open("image.jpg").convert("RGB"), return_tensors="pt"))
print(outputs.{case.output}.shape)
```"""


def _as_loaded(validation: dict) -> str:
    """One sentence with what the as_loaded check measured: the default processor's effect, and the PIL path's."""
    checked = checks_from_json(validation["checks"]).get("as_loaded")
    figures = checked.figures if checked else {}
    paths = {p: figures[p] for p in ("default", "pil") if isinstance(figures.get(p), dict) and "max_abs_diff" in figures[p]}
    if "default" not in paths:
        return ""

    def said(f):
        top1 = f", top-1 agreement {f['top1_agreement']:.0%}" if f.get("top1_agreement") is not None else ""
        levels = f"{f['grey_levels']:g} grey level{'' if f['grey_levels'] == 1 else 's'}"
        return (f"`{f['processor_class']}` gives pixels {levels} from the original evaluation's "
                f"and outputs within {f['max_abs_diff']:.2g} (cosine {f['cosine_similarity']:.6f}{top1})")

    text = f"Measured on photographs when this folder was validated: by default {said(paths['default'])}"
    if "pil" in paths:
        text += f"; with `backend=\"pil\"` {said(paths['pil'])}"
    return text + ".\n"


def _citation(provenance) -> str:
    if provenance is None:
        return "Not declared."
    lines = [f"- {title}, [arXiv:{arxiv}](https://arxiv.org/abs/{arxiv})" for arxiv, title in provenance.papers.items()]
    data = [*provenance.datasets, *provenance.unlisted_data]
    return "\n".join(lines) + f"\n\nOriginal repository: {provenance.repository}. Training data: {'; '.join(data)}."


def cell(text: str) -> str:
    """Text for one cell of a markdown table: a `|`, a backtick or a newline would break the table."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("\r", "").replace("\n", "<br>")


def code(text: str) -> str:
    """Inline code holding any text on one line: its fence is longer than any run of backticks in it."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _sha(validation: dict) -> str:
    sha256 = validation["original"].get("sha256")
    return f" (sha256 `{sha256}`)" if sha256 else ""


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3g}"


def divergence_summary(case, checks: Mapping[str, CheckResult]) -> str | None:
    """One plain line for the terminal summary when a case is converted with a known difference
    from the original evaluation (`Case.pixel_divergence`, `Case.output_divergence`)."""
    said = []
    if case.pixel_divergence:
        worst = checks["pixel_values"].max_abs_diff if "pixel_values" in checks else None
        said.append("its image processor gives other pixel values than the original evaluation"
                    + (f" (max abs diff {worst:.3g})" if worst is not None else ""))
    if case.output_divergence:
        said.append("its outputs differ from the original evaluation's by design (see the card)")
    return f"known difference: {'; '.join(said)}" if said else None


def divergence_notice(case, validation: dict) -> str | None:
    """The plain-language paragraph for the top of the model card of a case converted with a known
    difference from the original evaluation: what differs, by how much (measured), what to do."""
    checks = checks_from_json(validation.get("checks", {}))
    paragraphs = []
    if case.pixel_divergence:
        worst = checks["pixel_values"].max_abs_diff if "pixel_values" in checks else None
        measured = f"by up to {worst:.3g} (max abs diff of normalised pixel values on the test images)" if worst is not None else "slightly"
        from .registry import family_of

        original = family_of(case).evaluation_of(case).described
        paragraphs.append(
            f"> **Known difference: preprocessing.** The image processor saved here gives pixel values that differ "
            f"from the original evaluation's {measured}, so predictions can differ slightly from the published "
            f"accuracy figures. The weights themselves are converted exactly. Cause: {case.pixel_divergence}. "
            f"To reproduce the original evaluation, preprocess images with {original} and pass the tensor as "
            "`pixel_values`.")
    if case.output_divergence:
        figure = checks["logits"].max_abs_diff if "logits" in checks else None
        against = f" (max abs diff {figure:.3g} against that implementation)" if figure is not None else ""
        paragraphs.append(
            f"> **Known difference: outputs.** The weights are converted exactly and the outputs match an "
            f"independent implementation that makes the same choice as transformers{against}, but they differ from "
            f"the original evaluation's: {case.output_divergence}. Where exact agreement with the original "
            "evaluation matters, run the original code or an input size at which they agree.")
    return "\n>\n".join(paragraphs) if paragraphs else None
