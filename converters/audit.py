"""Audit a conversion already published on the Hub against our conversion of its original.

A published repo was converted once, checked loosely, and then left while transformers moved
under it. `audit` compares it with what this harness makes of the original, file by file:

- config fields that change outputs (labels and bookkeeping are not compared);
- the weights, tensor for tensor after our plan: keys, shapes, dtype, max abs diff;
- the preprocessor config, field by field, and the pixel values it gives on the photographs
  (the installed line's default backend and PIL) against the original evaluation;
- outputs on the photographs: the published model on the original evaluation's pixels against
  the original (the oracle), and the folder as users load it (`checks.as_loaded`).

Every finding has a verdict: `same`; `drift: <field>` when the published file omits a field and
the installed library's default for it is not the original's (the file did not change, the
library did); `wrong: <what>` when the published files themselves disagree with the original.
Audits only read: nothing is pushed or changed remotely.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import compat
from .cards import code as _code
from .checkpoint import CheckpointError, NotMappable, load
from .checks import as_loaded, outputs_close
from .metrics import max_abs_diff
from .quote import error_text, listing, quote

SAME = "same"
CONFIG_FILE, PROCESSOR_FILE = "config.json", "preprocessor_config.json"
SAFETENSORS, PICKLE = "*.safetensors", "pytorch_model*.bin"
FETCHED = (CONFIG_FILE, PROCESSOR_FILE, SAFETENSORS, "*.safetensors.index.json")
FETCHED_PICKLE = (PICKLE, "pytorch_model.bin.index.json")  # only for a repo without safetensors, as transformers reads it
# Entries mapping the Auto classes or pipelines to Python files in the repo: a finding of their own
# (`wrong: custom code (auto_map)`); the audit never imports or runs them (trust_remote_code=False).
CUSTOM_CODE = ("auto_map", "custom_pipelines")
# Config entries that do not change outputs: bookkeeping, label names, what a forward returns.
CONFIG_IGNORED = frozenset({
    "transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype", "id2label", "label2id",
    "output_hidden_states", "output_attentions", "return_dict", "use_return_dict", "problem_type", "_commit_hash",
    "chunk_size_feed_forward", "is_encoder_decoder", "initializer_range", "_attn_implementation_autoset", *CUSTOM_CODE,
})
PROCESSOR_IGNORED = frozenset({"image_processor_type", "feature_extractor_type", "processor_class", "_processor_class",
                               "backend", *CUSTOM_CODE})
SHOWN = 5  # tensor names listed in one finding
# A JSON file of the repo read at most this large: the largest config this harness writes is 70 KB
# (1000 label names); a hostile one of many MB, or the zero device, is refused unread.
MAX_JSON_BYTES = 4 * 2**20
# A model is built from the published config only if its float32 parameters and buffers take at most
# this many times the bytes of the repo's weight files (half-precision files: 2x): a 1 KB config
# must not build a 16 GB model.
MAX_MODEL_TO_WEIGHTS = 2


class AuditError(RuntimeError):
    """A repo or folder that cannot be audited: one line naming it and the reason."""

    def __init__(self, repo: str, reason: str):
        super().__init__(f"{repo}: {reason}")
        self.repo, self.reason = repo, reason


@dataclass
class Finding:
    area: str  # config, weights, preprocessor, pixels, outputs
    subject: str  # the field, tensor or path the verdict is about
    verdict: str  # "same", "drift: <field>" or "wrong: <what>"
    detail: str = ""


@dataclass
class Audit:
    case_id: str
    repo: str
    folder: str
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def local(self) -> bool:
        return Path(self.repo).expanduser().is_dir()

    @property
    def name(self) -> str:
        """A Hub repo's id; a local folder's base name (its path is this machine's business, not the
        business of a reader of the audit file)."""
        return Path(self.repo).expanduser().resolve().name if self.local else self.repo

    @property
    def shown(self) -> str:
        """The repo as the audit file's title names it."""
        return f"{_code(self.name)} (a local folder)" if self.local else _code(self.name)

    @property
    def ok(self) -> bool:
        return all(f.verdict == SAME for f in self.findings)

    def verdicts(self) -> list[str]:
        return [f.verdict for f in self.findings if f.verdict != SAME]

    def line(self) -> str:
        """One line for the summary: the counts and every verdict that is not `same`."""
        bad = list(dict.fromkeys(self.verdicts()))
        same = sum(f.verdict == SAME for f in self.findings)
        return f"audit of {self.repo}: {same} same" + (f", {'; '.join(bad)}" if bad else "")

    def as_dict(self) -> dict:
        return {"repo": self.repo, "folder": self.folder, "ok": self.ok, "notes": self.notes,
                "findings": [asdict(f) for f in self.findings]}


# --------------------------------------------------------------------------- fetching


def resolve(repo_or_dir: str, *, endpoint: str | None = None, token: str | None = None,
            cache_dir: str | Path | None = None) -> Path:
    """A local folder as it is, or a Hub repo through `snapshot_download` (its cache, HF_HUB_OFFLINE
    and token sources honoured; only configs and weights are fetched). AuditError when it cannot be
    had or holds no weights."""
    local = Path(repo_or_dir).expanduser()
    if local.is_dir():
        folder = local
    elif local.exists() or repo_or_dir.startswith((".", "/", "~")):
        raise AuditError(repo_or_dir, "not a folder")
    else:
        folder = _download(repo_or_dir, endpoint, token, cache_dir)
    if not weight_files(folder):
        present = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        raise AuditError(repo_or_dir, f"holds no safetensors or pickle (pytorch_model.bin) weights "
                                      f"(fetched: {', '.join(present) or 'nothing'})")
    return folder


def _download(repo_id: str, endpoint, token, cache_dir) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=list(FETCHED), endpoint=endpoint, token=token,
                                        cache_dir=cache_dir))
        if not any(folder.glob(SAFETENSORS)):  # many repos hold both formats: the pickle copy is fetched only if needed
            folder = Path(snapshot_download(repo_id, allow_patterns=list(FETCHED_PICKLE), endpoint=endpoint, token=token,
                                            cache_dir=cache_dir))
        return folder
    except GatedRepoError:  # before RepositoryNotFoundError, its base class
        reason = "gated: accept its conditions on the Hub and give a token with access (HF_TOKEN or `hf auth login`)"
    except RepositoryNotFoundError:
        reason = "no such repo, or it is private and no token with access was given (HF_TOKEN or `hf auth login`)"
    except RevisionNotFoundError:
        reason = "its main revision does not exist"
    except LocalEntryNotFoundError:
        reason = "not in the huggingface_hub cache, and the Hub cannot be reached (offline: HF_HUB_OFFLINE=1, or no network)"
    except HFValidationError:
        reason = "neither an existing folder nor a Hub repo id (ORG/NAME)"
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        reason = f"the Hub answered HTTP {status}: {str(e).splitlines()[0][:200]}"
    except OSError as e:
        reason = f"cannot be fetched: {e}"
    raise AuditError(repo_id, reason)


def weight_files(folder: Path) -> list[Path]:
    """The weights as transformers picks them: safetensors when present, else pickle files."""
    return sorted(folder.glob(SAFETENSORS)) or sorted(folder.glob(PICKLE))


# --------------------------------------------------------------------------- what of a folder is read


def _roots(folder: Path) -> list[Path]:
    """Where the files of `folder` may resolve to: into it; for a huggingface_hub download
    (<cache>/models--ORG--NAME/snapshots/<rev>/, whose files link to ../../blobs/<hash>) also into
    that repo's blobs folder."""
    real = folder.resolve()
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return [real, real.parent.parent / "blobs"]
    return [real]


def _kind(mode: int) -> str:
    return next((kind for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                                        (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")) if test(mode)), "a special file")


def refusal(path: Path, roots: list[Path]) -> str | None:
    """Why a file of the repo is not read (None: it may be): it resolves outside the repo folder (a
    symbolic link, kept by `git clone`, to a secret or a device), is not a regular file (a FIFO
    blocks its reader forever), or is JSON larger than MAX_JSON_BYTES. Decided from the file's
    metadata: nothing of it is read."""
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(root) for root in roots):
        return "a symbolic link resolving outside the repo folder: not read"
    try:
        st = os.stat(real)
    except OSError as e:
        return f"cannot be opened ({e.strerror}): not read"
    if not stat.S_ISREG(st.st_mode):
        return f"{_kind(st.st_mode)}, not a regular file: not read"
    if path.name.endswith(".json") and st.st_size > MAX_JSON_BYTES:
        return f"{st.st_size} bytes, more than the {MAX_JSON_BYTES} a JSON file of a repo may take here: not read"
    return None


def vet(folder: Path, view: Path) -> list[Finding]:
    """Link into the empty folder `view` every file of `folder` the audit reads (configs, weights as
    transformers picks them, their index) that may be read (`refusal`), by its real path; a
    refused file is a finding. Everything the audit and transformers read comes from `view`: no
    other file of the repo (a Python file, an adapter config) is there to be read."""
    names = sorted(entry.name for entry in os.scandir(folder))
    patterns = FETCHED if fnmatch.filter(names, SAFETENSORS) else FETCHED + FETCHED_PICKLE
    roots, refused = _roots(folder), []
    for name in (n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)):
        why = refusal(folder / name, roots)
        if why is None:
            os.symlink(os.path.realpath(folder / name), view / name)
        else:
            area = {CONFIG_FILE: "config", PROCESSOR_FILE: "preprocessor"}.get(name, "weights")
            refused.append(Finding(area, quote(name), f"wrong: refused {quote(name)}", why))
    return refused


def load_weights(folder: Path, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's weight files; pickle files with `weights_only=True` (memory-mapped
    when the file allows it), like every original."""
    state = {}
    for path in weight_files(folder):
        try:
            try:
                state |= load(path, what, mmap=path.suffix == ".bin").state
            except NotMappable:  # not a refused or corrupt file (those are not read twice)
                if path.suffix != ".bin":
                    raise
                state |= load(path, what).state  # the legacy (non-zip) format, or a file system without mmap
        except CheckpointError as e:
            raise AuditError(what, str(e)) from None
    return state


# --------------------------------------------------------------------------- comparing


def _plain(value):
    """JSON's view of a value (tuples as lists, enums as numbers) so that loaded and saved agree."""
    return json.loads(json.dumps(value, default=str))


def _read_json(folder: Path, name: str, repo: str) -> dict:
    """A JSON object, read without blocking (a FIFO swapped in after `vet` is refused, not waited
    on) and at most MAX_JSON_BYTES of it."""
    try:
        fd = os.open(folder / name, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise AuditError(repo, f"has no {name}") from None
    except OSError as e:
        raise AuditError(repo, f"{name} cannot be opened ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AuditError(repo, f"{name} is {_kind(os.fstat(fd).st_mode)}, not a regular file: not read")
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise AuditError(repo, f"{name} is larger than {MAX_JSON_BYTES} bytes: not read")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise AuditError(repo, f"{name} is not readable JSON ({error_text(e)})") from None
    if not isinstance(value, dict):
        raise AuditError(repo, f"{name} holds a JSON {type(value).__name__}, not an object")
    return value


def compare_fields(area: str, file: str, raw: dict, theirs: dict, ours: dict, ours_raw: dict,
                   ignored: frozenset) -> list[Finding]:
    """Field by field, as the library loads both files (omitted fields take its defaults): a field
    the file sets otherwise is `wrong`, one it omits whose default is not the original's is `drift`,
    one it omits whose default agrees is `same` and named (it moves when the default does)."""
    import transformers

    findings = []
    for name in sorted((set(theirs) | set(ours)) - ignored):
        published, original = _plain(theirs.get(name)), _plain(ours.get(name))
        if published != original:
            if name in raw:
                findings.append(Finding(area, quote(name), f"wrong: {quote(name)}",
                                        f"{file} says {quote(repr(published))}, the original {original!r}"))
            else:
                findings.append(Finding(area, name, f"drift: {name}", f"omitted from {file}: transformers "
                                        f"{transformers.__version__}'s default is {quote(repr(published))}, the original {original!r}"))
        elif name not in raw and name in ours_raw:
            findings.append(Finding(area, name, SAME, f"omitted from {file}: the library default {published!r} "
                                    "is the original's today"))
    return findings or [Finding(area, file, SAME, "every field that changes outputs agrees")]


def custom_code_findings(area: str, file: str, raw: dict) -> list[Finding]:
    """`auto_map` (or `custom_pipelines`): the repo asks users to run its own Python files. The audit
    names them and never imports them (`trust_remote_code=False` wherever it loads)."""
    return [Finding(area, key, f"wrong: custom code ({key})",
                    f"{file} maps {listing(f'{k}: {v}' for k, v in raw[key].items()) if isinstance(raw[key], dict) else quote(raw[key])} "
                    "to code in the repo: not imported or run")
            for key in CUSTOM_CODE if key in raw]


def _integers(value) -> bool:
    """An integer or a list of integers: what sizes a model (depths, widths, label counts)."""
    values = value if isinstance(value, list) else [value]
    return bool(values) and all(type(v) is int for v in values)


def sizing_findings(raw: dict, mine: dict) -> list[Finding]:
    """The published config's integer fields (sizes, counts, depths, labels) against the original's,
    read from the file before anything is made of it: `num_labels: 10**9` alone makes transformers
    build a billion label names, `depths` of 20000 a 16 GB model."""
    findings = []
    labels = len(raw["id2label"]) if isinstance(raw.get("id2label"), dict) else raw.get("num_labels")
    if labels is not None and labels != len(mine.get("id2label") or {}):
        findings.append(Finding("config", "num_labels", "wrong: num_labels",
                                f"{CONFIG_FILE} gives {quote(labels)} labels, the original {len(mine.get('id2label') or {})}"))
    for name in sorted(set(raw) & set(mine) - CONFIG_IGNORED - {"num_labels"}):
        if (_integers(raw[name]) or _integers(mine[name])) and _plain(raw[name]) != _plain(mine[name]):
            findings.append(Finding("config", name, f"wrong: {name}", f"{CONFIG_FILE} says {quote(raw[name])}, the original {mine[name]!r}"))
    return findings


def config_findings(case, published: Path, ours: Path, repo: str) -> tuple[list[Finding], str | None]:
    """The config's findings, and why no model may be built from it (None: one may): a model_type
    other than the case's, or integer fields sizing another model than the original's."""
    cls = compat.get_class(case.config_class)
    raw, ours_raw = _read_json(published, CONFIG_FILE, repo), _read_json(ours, CONFIG_FILE, "our conversion")
    findings = custom_code_findings("config", CONFIG_FILE, raw)
    if raw.get("model_type") != ours_raw.get("model_type"):
        return findings + [Finding("config", "model_type", "wrong: model_type",
                                   f"{CONFIG_FILE} says {quote(raw.get('model_type'))}, the case's {case.config_class} is "
                                   f"{ours_raw.get('model_type')!r}")], "its model_type is not the case's"
    mine = cls.from_pretrained(ours).to_dict()
    sizing = sizing_findings(raw, mine)
    if sizing:
        return findings + sizing, f"{', '.join(f.subject for f in sizing)} in {CONFIG_FILE} size another model than the original"
    theirs = cls.from_pretrained(published).to_dict()
    findings += compare_fields("config", CONFIG_FILE, raw, theirs, mine, ours_raw, CONFIG_IGNORED)
    if len(theirs.get("id2label") or {}) != len(mine.get("id2label") or {}):
        findings.append(Finding("config", "num_labels", "wrong: num_labels",
                                f"{len(theirs.get('id2label') or {})} labels, the original {len(mine.get('id2label') or {})}"))
    return findings, None


def size_findings(case, published: Path) -> tuple[list[Finding], str | None]:
    """The model the published config makes, built on the meta device (no memory), against the
    bytes of the repo's weight files: a config that implies more than MAX_MODEL_TO_WEIGHTS times
    what the weights hold is a finding, and the model is never materialised."""
    config = compat.get_class(case.config_class).from_pretrained(published)
    model = compat.build_model(case.model_class, config, device="meta")
    implied = sum(t.numel() for t in model.state_dict().values()) * 4  # float32, as the audit runs it
    held = sum(p.stat().st_size for p in weight_files(published))
    if implied <= MAX_MODEL_TO_WEIGHTS * held:
        return [], None
    return [Finding("weights", "size", "wrong: weights smaller than the config implies",
                    f"{CONFIG_FILE} makes a model of {implied / 2**20:.1f} MiB in float32, the weight files hold "
                    f"{held / 2**20:.1f} MiB")], "its weights are far smaller than its config implies"


def preprocessor_findings(case, published: Path, ours: Path, repo: str) -> list[Finding]:
    cls = compat.image_processor_class(case.processor_class)  # PIL: the fields, not a backend's copy
    if not (published / PROCESSOR_FILE).is_file():
        return [Finding("preprocessor", PROCESSOR_FILE, f"wrong: no {PROCESSOR_FILE}",
                        "users loading the repo get no image processor, or another one's defaults")]
    raw, ours_raw = _read_json(published, PROCESSOR_FILE, repo), _read_json(ours, PROCESSOR_FILE, "our conversion")
    theirs, mine = cls.from_pretrained(published).to_dict(), cls.from_pretrained(ours).to_dict()
    return (custom_code_findings("preprocessor", PROCESSOR_FILE, raw)
            + compare_fields("preprocessor", PROCESSOR_FILE, raw, theirs, mine, ours_raw, PROCESSOR_IGNORED))


def _names(keys) -> str:
    keys = list(keys)
    return ", ".join(quote(k) for k in keys[:SHOWN]) + (f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")


def weights_findings(published: Path, ours: Path, repo: str) -> list[Finding]:
    """Tensor for tensor: our conversion as saved (after our plan) against the published files."""
    theirs, mine = load_weights(published, repo), load_weights(ours, "our conversion")
    missing = [k for k in mine if k not in theirs]
    unexpected = [k for k in theirs if k not in mine]
    findings = []
    for key in list(missing):  # a missing key whose tensor sits, unchanged, under a new name
        new = next((u for u in unexpected if theirs[u].shape == mine[key].shape and theirs[u].dtype == mine[key].dtype
                    and torch.equal(theirs[u], mine[key])), None)
        if new is not None:
            missing.remove(key)
            unexpected.remove(new)
            findings.append(Finding("weights", key, f"wrong: key renamed {key} -> {quote(new)}", "same tensor under another name"))
    if missing:
        findings.append(Finding("weights", _names(missing), f"wrong: missing {_names(missing)}",
                                f"{len(missing)} tensors of the conversion are not in the published weights"))
    if unexpected:
        findings.append(Finding("weights", _names(unexpected), f"wrong: unexpected {_names(unexpected)}",
                                f"{len(unexpected)} published tensors are not in the conversion"))
    shapes, dtypes, values = [], [], {}
    for key in (k for k in mine if k in theirs):
        a, b = theirs[key], mine[key]
        if a.shape != b.shape:
            shapes.append(f"{quote(key)} {tuple(a.shape)} vs {tuple(b.shape)}")
            continue
        diff = max_abs_diff(a, b)
        if a.dtype != b.dtype and torch.equal(a, b.to(a.dtype)):  # stored in another precision, nothing else
            dtypes.append(f"{key} {a.dtype} vs {b.dtype}".replace("torch.", ""))
        elif a.dtype != b.dtype or diff != 0.0:
            values[key] = diff
    if shapes:
        findings.append(Finding("weights", _names(k.split()[0] for k in shapes), f"wrong: shape {_names(k.split()[0] for k in shapes)}",
                                "; ".join(shapes[:SHOWN])))
    if dtypes:
        findings.append(Finding("weights", "dtype", "drift: dtype", f"stored in another precision, values equal after the cast: {_names(dtypes)}"))
    if values:
        ranked = sorted(values, key=values.get, reverse=True)
        findings.append(Finding("weights", _names(ranked), f"wrong: tensor {_names(ranked)}",
                                f"{len(values)} of {len(mine)} tensors differ, max abs diff "
                                + ", ".join(f"{k} {values[k]:.3g}" for k in ranked[:SHOWN])))
    return findings or [Finding("weights", f"{len(mine)} tensors", SAME, "keys, shapes, dtypes and values equal (max abs diff 0)")]


def output_findings(case, published: Path, oracle, source_transform, photographs: dict, pixels_verdict) -> list[Finding]:
    """The published model on the original evaluation's pixels against the original; then the
    folder as users load it (`checks.as_loaded`), per processor backend: pixels and outputs."""
    findings = []
    images = list(photographs.values())
    reference_pixels = torch.stack([source_transform(image.convert("RGB")) for image in images])
    with torch.inference_mode():
        reference = oracle(reference_pixels)
        try:
            model = compat.get_class(case.model_class).from_pretrained(published).eval().float()
            outputs = getattr(model(pixel_values=reference_pixels), case.output)
        except Exception as e:  # a shape the model cannot take, an unreadable config: the finding says it
            outputs, failure = None, f"the published model does not load or run: {error_text(e)}"
    if outputs is None:
        findings.append(Finding("outputs", "model", "wrong: outputs", failure))
    else:
        check = outputs_close(case.id, "published model on the original evaluation's pixels", outputs, reference, case.atol)
        figure = check.figures.get("max_abs_diff")
        said = f"max abs diff {figure:.3g} (atol {case.atol:.0e}) on {', '.join(photographs)}" if figure is not None else check.message
        findings.append(Finding("outputs", "model", SAME if check.ok else "wrong: outputs", said))
    try:
        loaded = as_loaded(case, published, oracle, source_transform, photographs)
    except Exception as e:  # as_loaded names load errors it knows; anything else is still a finding
        return findings + [Finding("outputs", "as loaded", "wrong: as loaded", error_text(e))]
    paths = [p for p in ("default", "pil") if isinstance(loaded.figures.get(p), dict)]
    if not paths:  # the folder does not load as the case declares: the message names file and field
        return findings + [Finding("outputs", "as loaded", "wrong: as loaded", loaded.message.splitlines()[-1])]
    for path in paths:
        f = loaded.figures[path]
        name = f"{path} backend ({f['processor_class']})"
        within = f["grey_levels"] <= f["grey_levels_limit"]
        findings.append(Finding("pixels", name, SAME if within else pixels_verdict,
                                f"{f['grey_levels']:g} grey levels from the original evaluation (limit {f['grey_levels_limit']:g})"))
        if "max_abs_diff" in f:  # compared (pixels within the limit): the check's own tolerances
            ok = ((f["atol"] is None or f["max_abs_diff"] <= f["atol"])
                  and (f["min_cosine"] is None or f["cosine_similarity"] >= f["min_cosine"]))
            findings.append(Finding("outputs", name, SAME if ok else "wrong: outputs as loaded",
                                    f"max abs diff {f['max_abs_diff']:.3g}, cosine {f['cosine_similarity']:.6f}"
                                    + (f", top-1 agreement {f['top1_agreement']:.0%}" if f.get("top1_agreement") is not None else "")))
    if "pipeline top-1" in loaded.message:
        findings.append(Finding("outputs", "pipeline", "wrong: pipeline", loaded.message.splitlines()[-1]))
    return findings


def audit(case, repo: str, published: Path, ours: Path, oracle=None, source_transform=None, photographs=None,
          original: dict | None = None) -> Audit:
    """Compare the published `folder` (from `resolve`) with our conversion saved in `ours` (config,
    weights, preprocessor as save_pretrained writes them). `oracle` (pixels -> output, the original
    loaded in an implementation we did not write), `source_transform` (the original evaluation)
    and `photographs` (name -> PIL image) give the pixel and output findings; without an oracle
    they are left out and a note says so.

    A hostile repo changes nothing: only the files `vet` lets through are read (through a folder of
    links to them), no code of the repo is run, and no model is built from a config that sizes
    another model than the original's or more than its weights hold."""
    result = Audit(case.id, repo, str(published))
    if original is not None:
        result.notes.append(f"original: {original.get('source')} ({original.get('weights')} weights)")
        if original.get("weights") != "pretrained":
            result.notes.append("our conversion used random weights: the weights and outputs findings compare "
                                "the published tensors with those, not with the published original")
    view = Path(tempfile.mkdtemp(prefix="audit-"))
    try:
        _compare(result, case, repo, view, vet(published, view), ours, oracle, source_transform, photographs)
    except AuditError as e:  # it names the file it read: the published folder's, not the link to it
        raise AuditError(e.repo, e.reason.replace(str(view), str(published))) from None
    finally:
        shutil.rmtree(view, ignore_errors=True)
    for f in result.findings:  # transformers' messages name the folder it read: the links' one, a temporary path
        f.subject, f.detail = (text.replace(str(view), result.name) for text in (f.subject, f.detail))
    return result


def _compare(result: Audit, case, repo: str, view: Path, refused: list[Finding], ours: Path, oracle, source_transform, photographs):
    result.findings += refused
    if CONFIG_FILE in {f.subject for f in refused}:
        unbuilt = f"{CONFIG_FILE} refused"
    else:
        config, unbuilt = config_findings(case, view, ours, repo)
        result.findings += config
    if weight_files(view):
        result.findings += weights_findings(view, ours, repo)
        if unbuilt is None:
            size, unbuilt = size_findings(case, view)
            result.findings += size
    else:
        unbuilt = unbuilt or "its weights are refused"
    pre = [] if PROCESSOR_FILE in {f.subject for f in refused} else preprocessor_findings(case, view, ours, repo)
    result.findings += pre
    if oracle is None:
        result.notes.append("pixels and outputs not compared (no forward pass: the model is too large here)")
        return
    if unbuilt:
        result.notes.append(f"pixels and outputs not compared: the published model is not built ({unbuilt})")
        return
    # pixel values beyond the measured tolerance: the preprocessor fields that explain them
    wrong = [f.subject for f in pre if f.verdict.startswith("wrong")]
    drift = [f.subject for f in pre if f.verdict.startswith("drift")]
    pixels_verdict = (f"wrong: pixel values ({', '.join(wrong)})" if wrong else f"drift: {', '.join(drift)}" if drift
                      else "wrong: pixel values")
    result.findings += output_findings(case, view, oracle, source_transform, photographs, pixels_verdict)


# --------------------------------------------------------------------------- the audit file


def markdown(result: Audit) -> str:
    """A short audit that could be posted on the repo's discussion page."""
    from .cards import cell as _cell
    from .save import versions

    bad = [f for f in result.findings if f.verdict != SAME]
    head = ("Every finding is `same`: the published files reproduce the original." if not bad else
            f"{len(bad)} of {len(result.findings)} findings are not `same`: "
            + "; ".join(f"`{v}`" for v in dict.fromkeys(f.verdict for f in bad)) + ".")
    rows = "\n".join(f"| {_cell(f.area)} | {_cell(f.subject)} | {_cell(f.verdict)} | {_cell(f.detail)} |" for f in result.findings)
    notes = "".join(f"- {n}\n" for n in result.notes)
    stack = ", ".join(f"{k} {v}" for k, v in versions().items())
    text = f"""# Audit of {result.shown}

Checked against a conversion of its original checkpoint by the vision-port harness (case
`{result.case_id}`): config fields that change outputs, the weights tensor for tensor, the
preprocessor config and its pixel values against the original evaluation (the installed
transformers' default backend and PIL), and outputs on photographs.
`drift: <field>`: the file omits the field and this transformers' default is not the original's;
`wrong: <what>`: the published files disagree with the original.

**{head}**

| area | subject | verdict | detail |
|---|---|---|---|
{rows}

{notes}
Audited {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with {stack}.
"""
    # A post names no path of this machine: the folder audited (a local one, or the huggingface_hub cache)
    paths = {p for p in (result.folder, os.path.realpath(result.folder), result.repo) if os.path.isabs(p) and p != os.sep}
    for path in sorted(paths, key=len, reverse=True):
        text = text.replace(path, result.name)
    return text


def write(result: Audit, path: Path) -> Path:
    from .atomic import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, markdown(result))
    return path
