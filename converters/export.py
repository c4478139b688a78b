"""What a validated conversion leaves behind: the folder, its validation record and model card.

Folders are written under a staging name next to their destination and renamed into place, so a
reader (or a crash) never sees a half-written output, and an existing output is never replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import re
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from . import policy


class OutputExists(FileExistsError):
    pass


def versions() -> dict[str, str]:
    import huggingface_hub
    import numpy
    import PIL
    import safetensors
    import timm
    import torch
    import transformers

    mods = dict(torch=torch, timm=timm, transformers=transformers, huggingface_hub=huggingface_hub,
                safetensors=safetensors, numpy=numpy, pillow=PIL)
    return {"python": platform.python_version()} | {name: m.__version__ for name, m in mods.items()}


_HELD: dict[str, int] = {}  # staging folder -> the open descriptor holding its lock (this process's live stagings)


def staging_dir(parent: Path, name: str) -> Path:
    """A fresh directory on the destination's file system (so the final rename is atomic), locked
    (flock on the folder) for as long as this process works in it: that lock, not a PID that another
    PID namespace (a container sharing the folder) cannot see, tells a live staging from a stale one."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".staging-{name}-{os.getpid()}-", dir=parent))
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new and ours: nobody else can hold it
    except OSError:  # a file system without flock on directories: no lock, and no run can take one to remove it
        pass
    _HELD[str(folder)] = fd
    return folder


def _release(folder: Path) -> None:
    fd = _HELD.pop(str(folder), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the lock


def remove_stale_staging(parent: Path) -> list[Path]:
    """Staging folders left by a killed run (no process holds their lock): never outputs, only
    clutter. A folder is removed only while this process holds its lock: a live run keeps its own."""
    removed = []
    for folder in parent.glob(".staging-*") if parent.is_dir() else ():
        if str(folder) in _HELD or not folder.is_dir() or folder.is_symlink():
            continue
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live run works in it (or no lock can be had here: kept, to be safe)
            os.close(fd)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(folder)
    return removed


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM (what CI runners and `timeout` send) raises KeyboardInterrupt, as SIGINT does, so the
    code that removes a staging folder on an interrupt runs for it too. Main thread only; an
    application's own SIGTERM handler is left alone."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def write_json(path: Path, data) -> None:
    """Written whole or not at all (`write_text`)."""
    write_text(path, json.dumps(strict_json(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Written whole or not at all: a failure (ENOSPC, a directory in the way) leaves no temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def strict_json(value):
    """NaN and Infinity are not JSON: a non-finite figure becomes null, and the mapping holding it
    says under "non_finite" what it was."""
    if isinstance(value, dict):
        non_finite = {k: repr(v) for k, v in value.items() if isinstance(v, float) and not math.isfinite(v)}
        out = {k: None if k in non_finite else strict_json(v) for k, v in value.items()}
        return out | ({"non_finite": non_finite} if non_finite else {})
    if isinstance(value, (list, tuple)):
        return [None if isinstance(v, float) and not math.isfinite(v) else strict_json(v) for v in value]
    return value


def without_paths(data, paths):
    """`data` (JSON-like) with every local file path in it, wherever it is quoted (a skip reason, a
    note), replaced by the file's name: what is published says nothing of the machine it came from."""
    text = json.dumps(data)
    for path in sorted({str(p) for p in paths if p}, key=len, reverse=True):
        text = text.replace(json.dumps(path)[1:-1], json.dumps(os.path.basename(path))[1:-1])
    return json.loads(text)


def publish(staging: Path, final: Path) -> Path:
    """Rename a complete staging folder into place; never replace an existing output."""
    if final.exists():
        raise OutputExists(f"{final} exists and is not overwritten: remove it or choose another --save directory")
    _share_like_umask(staging)
    os.rename(staging, final)  # atomic on one file system; fails rather than replacing a non-empty dir
    _release(staging)
    return final


def _share_like_umask(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only modes; outputs get the user's usual ones."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def stage(case, folder: Path, processor, model=None, original=None, source_path=None, on_shard=None) -> dict:
    """Write the weights, config and preprocessor config of a conversion into `folder` (a staging
    folder): `model.save_pretrained`, or for a streamed case the original tensors converted shard
    by shard and verified (`converters.stream.save`). Returns figures for the record."""
    figures = {}
    if case.streamed:
        from .stream import save

        streamed = save(case, original, folder, source_path=source_path, on_shard=on_shard)
        figures = {"tensors_verified": streamed.tensors, "shards": len(streamed.files)}
    else:
        model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return figures


def finish_save(case, staging: Path, destination: Path, validation: dict) -> Path:
    """Complete a staged folder (weights and preprocessor in it) with validation.json and the model
    card, then rename it into place atomically. The one way the harness saves a case: session
    finish and the tests that kill a save midway both call it."""
    write_json(staging / "validation.json", validation)
    model_card(case, validation).save(staging / "README.md")
    return publish(staging, destination)


class LoadError(RuntimeError):
    """A saved folder the Auto classes cannot load as its case declares; names the file and field."""


def error_text(e: BaseException, limit: int = 600) -> str:
    """An exception for a message: its type and its text on one line, quoted (`converters.quote`):
    bounded with a visible mark, never cut into a word that reads as something else."""
    from .quote import quote

    return f"{type(e).__name__}: {quote(' '.join(str(e).split()), limit)}"


@dataclass
class AsLoaded:
    config: object
    processor: object  # AutoImageProcessor.from_pretrained(folder): the installed line's default
    processors: dict  # "default" and, on 5.x, "pil" (backend="pil")
    model: object
    pipeline: object | None  # pipeline("image-classification", model=folder) for classifiers


def load_as_users_do(folder: Path, case) -> AsLoaded:
    """A saved folder loaded with defaults only, as users load a Hub repo: AutoConfig,
    AutoImageProcessor (and backend="pil" on 5.x), the task's Auto model class, pipeline(). Never
    the repo's own code: `trust_remote_code=False` (the default, None, asks on the terminal when a
    repo maps a class to its Python files, and runs them on `y`)."""
    import transformers

    from . import compat

    folder = Path(folder)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as e:
        raise LoadError(f"{case.id}: {folder / 'config.json'}: AutoConfig cannot load it (field model_type): "
                        f"{error_text(e)}") from None
    if type(config).__name__ != case.config_class:
        raise LoadError(f"{case.id}: {folder / 'config.json'}: model_type {config.model_type!r} loads "
                        f"{type(config).__name__}, the case declares {case.config_class}")
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(folder, trust_remote_code=False)
    except Exception as e:
        raise LoadError(f"{case.id}: {folder / 'preprocessor_config.json'}: AutoImageProcessor cannot load it: "
                        f"{error_text(e)}") from None
    loaded_class = type(processor).__name__.removesuffix("Pil").removesuffix("Fast")
    if loaded_class != case.processor_class:
        raise LoadError(f"{case.id}: {folder / 'preprocessor_config.json'}: field image_processor_type loads "
                        f"{type(processor).__name__}, the case declares {case.processor_class}")
    processors = {"default": processor}
    if compat.MAJOR >= 5:
        processors["pil"] = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil", trust_remote_code=False)
    auto = transformers.AutoModelForImageClassification if case.output == "logits" else transformers.AutoModel
    model = auto.from_pretrained(folder, trust_remote_code=False).eval()
    if type(model).__name__ != case.model_class:
        raise LoadError(f"{case.id}: {folder / 'config.json'}: {auto.__name__} loads {type(model).__name__}, "
                        f"the case declares {case.model_class}")
    pipe = (transformers.pipeline("image-classification", model=str(folder), trust_remote_code=False)
            if case.output == "logits" else None)
    return AsLoaded(config, processor, processors, model, pipe)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    _release(staging)


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


def _eval_results(case, validation: dict, task: str) -> list:
    from huggingface_hub import EvalResult

    synthetic = ("synthetic", "synthetic images " + ", ".join(validation["images"]))
    results = []
    for name, check in validation["checks"].items():
        if check["status"] != "passed" or name not in REFERENCE:
            continue
        dataset_type, dataset_name = COCO if name == "expected_logits" else synthetic
        for metric in ("max_abs_diff", "cosine_similarity", "top5_agreement"):
            if check.get(metric) is not None:
                results.append(EvalResult(
                    task_type=task, dataset_type=dataset_type, dataset_name=dataset_name, metric_type=metric,
                    metric_name=f"{name}: {metric.replace('_', ' ')} vs {REFERENCE[name]}", metric_value=check[metric],
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
    original = validation["original"]
    random = original["weights"] != "pretrained"
    task = "image-classification" if validation["output"] == "logits" else "image-feature-extraction"
    licence = dict(license="unknown")
    if provenance is not None:
        licence = dict(license=provenance.licence, license_name=provenance.licence_name, license_link=provenance.licence_link)
    data = ModelCardData(
        **licence, library_name="transformers", pipeline_tag=task, tags=["vision", task, case.family],
        datasets=list(provenance.datasets) if provenance and provenance.datasets else None,
        base_model=provenance.base_model if provenance else None,
        model_name=case.hub_name, eval_results=_eval_results(case, validation, task) or None,
    )
    warning = ("\n> **Random weights.** This folder was converted from a synthetic checkpoint with random "
               "tensors to test the conversion; it is not a usable model.\n") if random else ""
    notice = divergence_notice(case, validation)
    divergences = f"\n{notice}\n" if notice else ""
    rows = "\n".join(
        f"| {_cell(name)} | {_cell(c['status'])} | {_fmt(c.get('max_abs_diff'))} | {_fmt(c.get('atol'))} "
        f"| {_cell('; '.join(filter(None, (policy.allowance(c), c.get('reason')))))} |"
        for name, c in validation["checks"].items()
    )
    body = f"""---
{data.to_yaml()}
---

# {case.hub_name}
{warning}
{_terms(provenance)}Converted from the original checkpoint {_code(_shown(original['source']))}{_sha(validation)} ({case.family}) to
`{case.model_class}` and validated by the conversion harness.
{divergences}
## Original weights

{_weights(case, provenance, original, validation["checks"])}

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


def _weights(case, provenance, original: dict, checks: dict) -> str:
    published = {None: case.url or (f"https://huggingface.co/{provenance.base_model}" if provenance and provenance.base_model else None),
                 **case.extra_files}
    if not original.get("files"):  # synthetic: no file was read
        where = ", ".join(f"`{url}`" for url in published.values() if url) or "its original source"
        return f"{original['source']}: random tensors in the original layout. The published weights are at {where}."
    lines = ["| file | where from | sha256 |", "|---|---|---|"]
    for f in original["files"]:  # the file name only: a local path says nothing to a reader of the Hub
        url = f["source"] if str(f["source"]).startswith(("http://", "https://")) else None
        where = f"published at {_code(url)}" if url else _local(published.get(f["part"]), f["sha256"] if f["part"] is None else None,
                                                                   checks.get("expected_logits", {}))
        lines.append(f"| {_cell(os.path.basename(f['path']))} | {where} | `{f['sha256']}` |")
    return "\n".join(lines)


def _local(url: str | None, sha256: str | None, expected: dict) -> str:
    """A local file (`--checkpoint`), not fetched from where the weights are published: whether it
    is the published file is known only from a recorded sha256 of that file (expected_logits)."""
    said = "a local file, not fetched from " + (_code(url) if url else "a published source")
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
    figures = validation["checks"].get("as_loaded", {})
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


def _cell(text: str) -> str:
    """Text for one cell of a markdown table: a `|`, a backtick or a newline would break the table."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("\r", "").replace("\n", "<br>")


def _code(text: str) -> str:
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


def divergence_summary(case, checks: dict) -> str | None:
    """One plain line for the terminal summary when a case is converted with a known difference
    from the original evaluation (`Case.pixel_divergence`, `Case.output_divergence`)."""
    said = []
    if case.pixel_divergence:
        worst = checks.get("pixel_values", {}).get("max_abs_diff")
        said.append("its image processor gives other pixel values than the original evaluation"
                    + (f" (max abs diff {worst:.3g})" if worst is not None else ""))
    if case.output_divergence:
        said.append("its outputs differ from the original evaluation's by design (see the card)")
    return f"known difference: {'; '.join(said)}" if said else None


def divergence_notice(case, validation: dict) -> str | None:
    """The plain-language paragraph for the top of the model card of a case converted with a known
    difference from the original evaluation: what differs, by how much (measured), what to do."""
    checks = validation.get("checks", {})
    paragraphs = []
    if case.pixel_divergence:
        pixel = checks.get("pixel_values", {})
        worst = pixel.get("max_abs_diff")
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
        logits = checks.get("logits", {})
        figure = logits.get("max_abs_diff")
        against = f" (max abs diff {figure:.3g} against that implementation)" if figure is not None else ""
        paragraphs.append(
            f"> **Known difference: outputs.** The weights are converted exactly and the outputs match an "
            f"independent implementation that makes the same choice as transformers{against}, but they differ from "
            f"the original evaluation's: {case.output_divergence}. Where exact agreement with the original "
            "evaluation matters, run the original code or an input size at which they agree.")
    return "\n>\n".join(paragraphs) if paragraphs else None
