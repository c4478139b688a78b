"""The checks of every conversion case, one test function each, sharing cached fixtures. Each
declares itself with `@pytest.mark.check(name)`: results, the summary and saving key on that mark.

    pytest -k convnextv2_atto --save out/
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
import torch

import converters
from converters import atomic, audit, checks, compat, memory, pixels, save
from converters.localise import block_parity, first_divergence
from vision_port_fixtures.models import float32, output
from vision_port_fixtures.plugin import case_params
from vision_port_fixtures.results import TooLarge

# Every case of the registry, in plain sight (as timm's tests/test_models.py parametrises over its
# registry), at session scope: a case's original and conversion are made once for all its checks.
pytestmark = pytest.mark.parametrize("case", case_params(), scope="session")

# Overridable so the harness's own tests can record into a scratch directory.
EXPECTED_DIR = Path(os.environ.get("VISION_PORT_EXPECTED_DIR", Path(__file__).resolve().parents[1] / "expected_logits"))


@pytest.mark.check("key_coverage")
def test_key_coverage(case, original, converted, record):
    """Every original key consumed once, every target key produced, shapes equal."""
    record.original(original)
    check = checks.key_coverage(case.id, converted[1])
    record.figures(**check.figures)
    hint = None if check.ok else converters.layout_hint(original.case, original.state)
    first, _, rest = check.message.partition("\n")  # the hint before the list of keys (the report keeps 4000 characters)
    assert check.ok, f"{first}\nhint: {hint}\n{rest}" if hint else check.message


def test_key_coverage_at_real_size(case):
    """Every case's plan at its published size in the default run, whichever run holds its forward
    checks (`converters.selection`): on the original layout's meta tensors (no memory, no weights)
    against the transformers model's, every key consumed once, every target key produced, shapes
    equal. The key_coverage check does the same on the weights loaded."""
    _, coverage = converters.convert(case, converters.original_layout(case))
    assert coverage.ok, f"{case.id}: key coverage at real size (meta tensors):\n{coverage.describe()}"


@pytest.mark.check("pixel_values", light=True)  # light: no model, so every case's runs in the default run
def test_pixel_values(case, all_images, hf_processor, source_transform, record, request):
    """The transformers processor reproduces the original evaluation preprocessing exactly, on every
    test image (synthetic sizes, photographs, grayscale, RGBA, palette, extreme shapes) as a user
    has it; the original loaders convert to RGB first. Where the modelled arithmetic predicts the
    documented centre-crop rounding (`converters.pixels`) for an image's size, that image must
    differ, and is listed; an image the installed transformers cannot take is listed by mode."""
    if case.pixel_divergence:  # measured and explained: it must still fail, else the xfail is stale
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{case.id}: {case.pixel_divergence}"))
    exact, predicted, rejected, problems = {}, {}, {}, []
    cannot_take = compat.rejected_modes(case.processor_class)
    for name, image in all_images.items():
        where = f"{name} ({image.mode}, {image.width}x{image.height})"
        theirs = source_transform(image.convert("RGB"))
        try:
            ours = hf_processor(images=image, return_tensors="pt")["pixel_values"][0]
        except Exception as e:  # a mode the processor cannot take: never dropped silently
            if image.mode in cannot_take:
                rejected[name] = image.mode
            else:
                problems.append(f"{where}: the processor rejects it: {type(e).__name__}: {str(e)[:200]}")
            continue
        if image.mode in cannot_take:
            problems.append(f"{where}: converters.compat says {case.processor_class} cannot take mode {image.mode}, but it did")
        if ours.shape != theirs.shape:
            problems.append(f"{where}: processor gives {tuple(ours.shape)}, source {tuple(theirs.shape)}")
            continue
        diff = (ours - theirs).abs().max().item()
        if case.pixel_divergence:  # the case's documented divergence: every image is held to 0 and fails
            exact[name] = diff
            continue
        try:
            causes = pixels.predict(hf_processor, source_transform, image.width, image.height)
        except pixels.NotModelled:
            causes = []  # no model of this pipeline: every image must be exact
        except pixels.UndocumentedDifference as e:
            problems.append(f"{where}: {e}")
            continue
        if causes:
            predicted[name] = diff
            if diff == 0.0:
                problems.append(f"{where}: predicted to differ ({'; '.join(causes)}) but equal")
        else:
            exact[name] = diff
    worst = max(exact.values(), default=0.0)
    notes = []
    if predicted:
        notes.append("centre-crop rounding (transformers floors, the original rounds half to even), one row or column "
                     "shifted: " + ", ".join(f"{n} {d:.3g}" for n, d in predicted.items()))
    if rejected:
        notes.append(f"transformers {compat.transformers.__version__}'s {case.processor_class} cannot take "
                     + ", ".join(f"{n} ({m})" for n, m in rejected.items()) + ": convert such images to RGB first")
    record.figures(max_abs_diff=worst, atol=0.0, images=list(all_images), predicted_divergences=predicted,
                   rejected=rejected, **({"reason": "; ".join(notes)} if notes else {}))
    assert not problems, f"{case.id}: pixel values:\n" + "\n".join(problems)
    assert worst == 0.0, f"{case.id}: pixel values differ, max abs diff {worst:.3g} > tolerance 0 (per image: {exact})"


@pytest.mark.check("logits")
def test_logits(case, original, hf_model, hf_output, oracle_model, pixels, record):
    """The converted model against an implementation we did not write, on the same pixels."""
    record.original(original)
    original.ensure_unchanged()
    with torch.inference_mode():
        reference = oracle_model(pixels)
    check = checks.outputs_close(case.id, f"{case.output} vs the oracle", hf_output, reference, case.atol)
    record.figures(**check.figures, images=int(pixels.shape[0]))
    if case.streamed or not check.ok:  # each block on the oracle's input to it: a fault shows where it is
        parity = block_parity(float32(hf_model), oracle_model, {"pixel_values": pixels[:1]}, (pixels[:1],), case.atol,
                              family=converters.family_of(case))
        record.figures(block_parity=parity.figures())
    if not check.ok:  # and the first module whose output differs, errors accumulated
        where = first_divergence(float32(hf_model), oracle_model, {"pixel_values": pixels[:1]}, (pixels[:1],), case.atol)
        record.figures(divergence=where)
        pytest.fail(f"{check.message}\n{parity.describe()}\n{where}", pytrace=False)


@pytest.mark.check("expected_logits", may_skip=True)
def test_expected_logits(case, original, hf_model, hf_processor, harness, record, request):
    """On the published weights: the COCO image's logits against expected_logits/<case>.json."""
    record.original(original)
    opts, _ = harness
    path = EXPECTED_DIR / f"{case.id}.json"
    if original.weights != "pretrained":
        if opts.update_expected:
            pytest.fail(f"{case.id}: --update-expected refused: random weights ({original.source}); {path} is unchanged", pytrace=False)
        pytest.skip("random weights: expected logits describe the published weights")
    expected = json.loads(path.read_text()) if path.is_file() else None
    recorded = (expected or {}).get("sha256")
    if opts.update_expected and not original.published and original.sha256 != recorded:
        # records describe the published weights: a local file only if it is that file, byte for byte
        pytest.fail(f"{case.id}: --update-expected refused: {original.path} is not the published file "
                    f"({case.url or 'no URL'}) and its sha256 {original.sha256[:12]} is not the recorded one "
                    f"({(recorded or 'none')[:12]}); {path} is unchanged", pytrace=False)
    if not original.published:  # a local --checkpoint file: the card says whether it is the published one
        record.figures(published_sha256=recorded)
    if not original.published and original.sha256 != recorded:
        # the record describes another file (or none is recorded); by name: the reason is published
        pytest.skip(f"{Path(original.path).name} is not the recorded original (sha256 {original.sha256[:12]}, recorded "
                    f"{(recorded or 'none')[:12]}): expected logits describe the published weights")
    if expected is None and not opts.update_expected:
        pytest.fail(f"{case.id}: no {path} for the published weights; record it with --weights pretrained "
                    "--update-expected", pytrace=False)
    coco = request.getfixturevalue("coco")
    logits = output(case, hf_model, hf_processor(images=coco, return_tensors="pt")["pixel_values"])[0].flatten()
    if opts.update_expected:  # like torchvision's accept flag: record, then check against the record
        indices = list(range(5)) + logits.topk(5).indices.tolist()
        expected = {"case": case.id, "source": original.source, "sha256": original.sha256, "image": "coco val2017 000000039769",
                    "indices": indices, "values": [round(logits[i].item(), 6) for i in indices], "atol": 1e-4,
                    "recorded_with": save.versions()}
        atomic.write_json(path, expected)
    diff = (logits[expected["indices"]] - torch.tensor(expected["values"])).abs().max().item()
    record.figures(max_abs_diff=diff, atol=expected["atol"], images=["coco"])
    assert diff <= expected["atol"], f"{case.id}: logits vs {path.name}, max abs diff {diff:.3g} > atol {expected['atol']:.1g}"


@pytest.mark.check("round_trip")
def test_round_trip(case, original, converted, record):
    """The plan run backwards gives the original checkpoint back, bit for bit."""
    record.original(original)
    original.ensure_unchanged()  # it reads every tensor: memory-mapped ones too
    check = checks.round_trip(case.id, converters.plan_of(original.case), converted[0], original.state)
    record.figures(**check.figures)
    assert check.ok, check.message


@pytest.mark.check("save_reload")
def test_save_reload(case, original, hf_processor, pixels, images, saved_folder, record, request):
    """What save_pretrained wrote reloads with from_pretrained to the same tensors, outputs and pixels."""
    record.original(original)
    folder, staged = saved_folder
    record.figures(**staged)
    reloaded_pixels = type(hf_processor).from_pretrained(folder)(images=list(images.values()), return_tensors="pt")["pixel_values"]
    assert torch.equal(reloaded_pixels, pixels), f"{case.id}: the saved preprocessor config gives other pixel values"
    too_large = memory.too_large(original.case, len(images))
    if too_large:  # the verified weights stand; no output was compared, and the record says so
        record.figures(max_abs_diff=None, atol=None, reason=f"weights verified tensor for tensor, outputs not compared: {too_large}")
        return
    original.ensure_unchanged()

    # dtype="auto": the saved dtype (fp16, bf16 originals stay so), not float32
    reloaded, info = compat.get_class(original.case.model_class).from_pretrained(folder, output_loading_info=True, dtype="auto")
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"} | ({"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {})
    assert not problems, f"{case.id}: reloading {folder} reported {problems}"
    saved = request.getfixturevalue("hf_model").state_dict()
    reloaded_state = reloaded.state_dict()
    changed = sorted(f"{k} ({saved[k].dtype} -> {reloaded_state[k].dtype})" if k in reloaded_state else k for k in saved
                     if k not in reloaded_state or saved[k].dtype != reloaded_state[k].dtype or not torch.equal(saved[k], reloaded_state[k]))
    assert not changed, f"{case.id}: tensors changed by save/reload: {', '.join(changed)}"
    expected = request.getfixturevalue("hf_output")
    check = checks.outputs_close(case.id, "reloaded model's output", output(case, reloaded.eval(), pixels), expected, 0.0)
    memory_mapped = {}
    if not check.ok and memory.weight_bytes(original.case) < memory.available_bytes() / 2:
        # from_pretrained memory-maps safetensors, whose tensors sit at 16-byte (not 64-byte) offsets,
        # and single-threaded CPU kernels then take other paths (RegNet, one thread: 5.7e-6). The same
        # bytes in aligned memory must give the outputs exactly; both figures are reported. (Weights
        # that do not fit in memory twice over are not copied: the memory-mapped figure must be exact.)
        memory_mapped = {"memory_mapped_max_abs_diff": check.figures.get("max_abs_diff")}
        for tensor in itertools.chain(reloaded.parameters(), reloaded.buffers()):
            tensor.data = tensor.data.clone()
        check = checks.outputs_close(case.id, "reloaded model's output", output(case, reloaded, pixels), expected, 0.0)
    record.figures(**check.figures, **memory_mapped)
    assert check.ok, f"{check.message} (outputs must be exact)"


@pytest.mark.check("as_loaded")
def test_as_loaded(case, original, saved_folder, oracle_model, record, harness, request):
    """The saved folder loaded the way users load it (AutoConfig, AutoImageProcessor with defaults
    and backend="pil" on 5.x, the task's Auto model class, pipeline() for classifiers) on the
    photographs, against the original evaluation (its preprocessing of the RGB image + the oracle):
    `converters.checks.as_loaded`, whose tolerances say what was measured."""
    from vision_port_fixtures.images import photographs

    record.original(original)
    if case.pixel_divergence:  # the pixel check's documented divergence reaches what users load too
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{case.id}: {case.pixel_divergence}"))
    if not compat.auto_loadable(case.config_class):  # measured: must still fail, else the xfail is stale
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            f"{case.id}: transformers {compat.transformers.__version__}'s AutoConfig does not know the deprecated "
            f"{case.config_class}: users load it by class (the card says how)")))
    too_large = memory.too_large(original.case, AS_LOADED_PHOTOGRAPHS)  # the photographs go through in one batch
    if too_large:
        raise TooLarge(f"outputs not compared: {too_large}")
    original.ensure_unchanged()
    folder, _ = saved_folder
    photos = dict(list(photographs().items())[:AS_LOADED_PHOTOGRAPHS])
    pictures = {} if harness[0].html else None  # --html: what each path made of each photograph, as PNGs
    check = checks.as_loaded(original.case, folder, oracle_model, converters.source_transform(case), photos, pictures)
    record.figures(**check.figures)
    if pictures:
        record.pictures(pictures)
    assert check.ok, check.message


@pytest.mark.check("audit", may_skip=True, may_fail=True)
def test_audit(case, harness, record, request):
    """--audit: the case's published transformers repo (or `--audit-repo CASE=REPO_OR_DIR`) against
    our conversion of the original the harness loaded, as saved (`converters.audit`): config,
    weights, preprocessor and pixels, outputs on the photographs. Read only. A failure judges the
    published repo, not this conversion: it does not block `--save`."""
    from vision_port_fixtures.images import photographs

    opts, _ = harness
    if not opts.audit:
        pytest.skip("audit not asked for (--audit)")
    repo = opts.audit_repos.get(case.id, case.published_repo)
    if repo is None:
        pytest.skip(f"{case.id} declares no published repo (Case.published_repo): pass --audit-repo {case.id}=REPO_OR_DIR")
    record.figures(repo=repo)
    try:
        folder = audit.resolve(repo)
    except audit.AuditError as e:  # one line, and the other cases go on
        record.figures(error=str(e))
        pytest.fail(f"{case.id}: audit of {e}", pytrace=False)
    original = request.getfixturevalue("original")
    record.original(original)
    ours, _ = request.getfixturevalue("saved_folder")
    too_large = memory.too_large(original.case, AS_LOADED_PHOTOGRAPHS)  # as in test_as_loaded
    photos = dict(list(photographs().items())[:AS_LOADED_PHOTOGRAPHS])
    try:
        result = audit.audit(original.case, repo, folder, ours, None if too_large else request.getfixturevalue("oracle_model"),
                             converters.source_transform(case), photos, original.describe(public=True))
    except audit.AuditError as e:
        record.figures(error=str(e))
        pytest.fail(f"{case.id}: audit of {e}", pytrace=False)
    path = audit.write(result, opts.audit_dir / f"{case.id}.audit.md")
    record.figures(**result.as_dict(), line=result.line(), verdicts=result.verdicts(), audit_file=str(path))
    if not result.ok:
        pytest.fail(f"{case.id}: {result.line()} (see {path})", pytrace=False)


# astronaut and chelsea: sizes no pipeline here crops with the rounding divergence (the pixel check
# covers every image). Each photograph costs three forwards (oracle, default, PIL): convnextv2_huge
# at 384 px took 205 s of one worker with three photographs, so two.
AS_LOADED_PHOTOGRAPHS = 2
