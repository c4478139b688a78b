"""The harness end to end, as a user runs it (pytest in a subprocess, offline): the real pretrained
loader on a seeded cache, skips that say how to provide weights, save only what passed, never
overwrite, fail early on an unwritable output directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import converters
from converters import checkpoint
from vision_port_fixtures.images import synthetic_image

ROOT = Path(__file__).resolve().parents[1]
ATTO, FEMTO = converters.get("convnextv2_atto_1k_224"), converters.get("convnextv2_femto_1k_224")


def run_harness(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", **(env or {}))
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_conversions.py"), "-p", "no:cacheprovider", "-q", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def seed_torch_hub_cache(tmp_path: Path, case) -> Path:
    """Put a synthetic original where torch.hub.load_state_dict_from_url would have cached the real one."""
    path = tmp_path / "torch" / "hub" / "checkpoints" / Path(case.url).name
    path.parent.mkdir(parents=True)
    torch.save({"model": converters.synthetic_original(case)}, path)
    return path


def test_pretrained_mode_loads_the_cached_original_through_the_real_loader(tmp_path):
    cached = seed_torch_hub_cache(tmp_path, ATTO)
    result = run_harness(tmp_path, "-k", ATTO.id, "--weights", "pretrained", "--report", str(tmp_path / "r.json"), "--save", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout[-3000:]
    entry = json.loads((tmp_path / "r.json").read_text())["cases"][ATTO.id]
    assert entry["weights"] == "pretrained" and entry["source"] == ATTO.url
    statuses = {name: c["status"] for name, c in entry["checks"].items()}
    assert statuses == {"key_coverage": "passed", "pixel_values": "passed", "logits": "passed",
                        "expected_logits": "skipped", "round_trip": "passed", "save_reload": "passed",
                        "as_loaded": "passed", "audit": "skipped"}
    assert "COCO image not cached" in entry["checks"]["expected_logits"]["reason"]
    validation = json.loads((tmp_path / "out" / ATTO.id / "validation.json").read_text())
    assert validation["original"]["sha256"] == checkpoint.sha256(cached)
    assert validation["original"]["weights"] == "pretrained"

    # The report carries every figure of the logits check, the time and memory of the case.
    logits = entry["checks"]["logits"]
    assert 0 <= logits["max_abs_diff"] <= logits["atol"] == ATTO.atol and 0 <= logits["max_rel_diff"]
    assert 0.999999 < logits["cosine_similarity"] <= 1.000001 and logits["top5_agreement"] == 1.0
    assert entry["seconds"] > 0 and entry["peak_rss_mb"] > 100
    assert f"{ATTO.id} logits: max abs {logits['max_abs_diff']:.2e} (atol 1e-05)" in result.stdout

    # The card: source, weights mode, one table row per check with its figures, versions.
    card = (tmp_path / "out" / ATTO.id / "README.md").read_text()
    assert f"`{ATTO.url}`" in card and "Weights: **pretrained**" in card and "Random weights" not in card
    assert f"| logits | passed | {logits['max_abs_diff']:.3g} | 1e-05 |" in card
    assert "| save_reload | passed | 0 | 0 |" in card and "| round_trip | passed | 0 | 0 |" in card
    assert "| expected_logits | skipped |" in card and "synthetic_640x480" in card
    assert f"torch {torch.__version__}" in card and "transformers " in card


def test_pretrained_mode_without_weights_skips_saying_how_to_provide_them_and_fails(tmp_path):
    result = run_harness(tmp_path, "-k", ATTO.id, "--weights", "pretrained", "--report", str(tmp_path / "r.json"), "--save", str(tmp_path / "out"))
    assert result.returncode == 1, result.stdout[-3000:]  # asked for pretrained weights and a save: nothing converted
    assert "NOTHING CONVERTED" in result.stdout and "pretrained weights unavailable" in result.stdout
    assert not (tmp_path / "out" / ATTO.id).exists()
    checks = json.loads((tmp_path / "r.json").read_text())["cases"][ATTO.id]["checks"]
    assert {n for n, c in checks.items() if c["status"] != "skipped"} == {"pixel_values"}  # needs no weights
    reason = checks["logits"]["reason"]
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / Path(ATTO.url).name) in reason
    assert f"--checkpoint {ATTO.id}=PATH" in reason


def test_only_cases_that_passed_are_saved(tmp_path):
    broken = converters.synthetic_original(ATTO)
    del broken["stages.1.0.grn.gamma"]
    torch.save({"model": broken}, tmp_path / "broken.pt")
    torch.save({"model": converters.synthetic_original(FEMTO)}, tmp_path / "femto.pt")
    out = tmp_path / "out"
    result = run_harness(
        tmp_path, "-k", f"{ATTO.id} or {FEMTO.id}", "--report", str(tmp_path / "r.json"), "--save", str(out),
        "--checkpoint", f"{ATTO.id}={tmp_path / 'broken.pt'}", "--checkpoint", f"{FEMTO.id}={tmp_path / 'femto.pt'}",
    )
    assert result.returncode == 1
    report = json.loads((tmp_path / "r.json").read_text())
    atto = report["cases"][ATTO.id]["checks"]
    assert atto["key_coverage"]["status"] == "failed" and "convnextv2.encoder.stages.1.layers.0.grn.weight" in atto["key_coverage"]["reason"]
    assert atto["logits"]["status"] == "error"
    assert sorted(p.name for p in out.iterdir()) == [FEMTO.id]  # no atto folder, no staging left over
    femto = report["cases"][FEMTO.id]["checks"]
    assert femto["expected_logits"]["status"] == "skipped"
    assert "not the recorded original" in femto["expected_logits"]["reason"]
    assert report["saved"][FEMTO.id] == str(out / FEMTO.id)
    assert "not saved" in report["saved"][ATTO.id]


def test_existing_output_is_never_overwritten(tmp_path):
    existing = tmp_path / "out" / ATTO.id
    existing.mkdir(parents=True)
    (existing / "config.json").write_text("{}")
    result = run_harness(tmp_path, "-k", ATTO.id, "--weights", "random", "--save", str(tmp_path / "out"))
    assert result.returncode == 4  # usage error, before any conversion
    assert "never overwritten" in result.stderr and ATTO.id in result.stderr
    assert (existing / "config.json").read_text() == "{}"


def test_a_k_typo_selecting_no_case_names_the_closest_case_ids(tmp_path):
    result = run_harness(tmp_path, "-k", "convnext_atto", "--co")
    assert result.returncode == 5
    assert "-k 'convnext_atto' selects no conversion case; closest case ids:" in result.stdout and ATTO.id in result.stdout


def test_output_directory_under_a_file_fails_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("")
    result = run_harness(tmp_path, "-k", ATTO.id, "--save", str(tmp_path / "a_file" / "out"))
    assert result.returncode == 4 and "--save" in result.stderr and "cannot write there" in result.stderr
    assert "passed" not in result.stdout


def test_update_expected_records_then_checks_the_published_weights(tmp_path):
    """Like torchvision's accept flag: a pretrained run records expected_logits/<case>.json with the
    file's sha256; later runs check against it; a missing record is an error naming the flag."""
    cached = seed_torch_hub_cache(tmp_path, ATTO)
    coco = tmp_path / "hf" / "vision-port" / "coco_000000039769.jpg"
    coco.parent.mkdir(parents=True)
    synthetic_image(640, 480, seed=3).save(coco)
    expected_dir = tmp_path / "expected"
    expected_dir.mkdir()
    env = {"VISION_PORT_EXPECTED_DIR": str(expected_dir)}
    args = ("-k", f"{ATTO.id} and expected_logits", "--weights", "pretrained", "--report", str(tmp_path / "r.json"))

    missing = run_harness(tmp_path, *args, env=env)
    assert missing.returncode == 1 and "--update-expected" in missing.stdout

    recorded = run_harness(tmp_path, *args, "--update-expected", env=env)
    assert recorded.returncode == 0, recorded.stdout[-3000:]
    record = json.loads((expected_dir / f"{ATTO.id}.json").read_text())
    assert record["sha256"] == checkpoint.sha256(cached) and len(record["values"]) == len(record["indices"]) == 10

    record["values"][0] += 0.5  # a recorded value the weights do not give: the check must fail
    (expected_dir / f"{ATTO.id}.json").write_text(json.dumps(record))
    checked = run_harness(tmp_path, *args, env=env)
    assert checked.returncode == 1
    check = json.loads((tmp_path / "r.json").read_text())["cases"][ATTO.id]["checks"]["expected_logits"]
    assert check["status"] == "failed" and abs(check["max_abs_diff"] - 0.5) < 1e-3 and "max abs diff" in check["reason"]

    # --update-expected from a local file that is not the published one: refused, the record untouched.
    other = converters.synthetic_original(ATTO)
    other["head.bias"] += 1
    torch.save({"model": other}, tmp_path / "local.pt")
    before = (expected_dir / f"{ATTO.id}.json").read_bytes()
    refused = run_harness(tmp_path, *args, "--update-expected", "--checkpoint", f"{ATTO.id}={tmp_path / 'local.pt'}", env=env)
    assert refused.returncode == 1 and "--update-expected refused" in refused.stdout and "local.pt" in refused.stdout
    assert (expected_dir / f"{ATTO.id}.json").read_bytes() == before

    # A local --checkpoint file with no record for it: the check skips saying why, it is not an error.
    (expected_dir / f"{ATTO.id}.json").unlink()
    local = run_harness(tmp_path, *args, "--checkpoint", f"{ATTO.id}={tmp_path / 'local.pt'}", env=env)
    assert local.returncode == 0, local.stdout[-3000:]
    check = json.loads((tmp_path / "r.json").read_text())["cases"][ATTO.id]["checks"]["expected_logits"]
    assert check["status"] == "skipped" and "not the recorded original" in check["reason"] and "recorded none" in check["reason"]


def test_half_precision_originals_convert_keep_their_dtype_and_mixed_dtypes_are_reported_by_key(tmp_path):
    """fp16 and bf16 originals: forward checks on float32 copies of both models, the saved artifact
    (weights and config) in the original dtype, reloaded bit for bit; a file of mixed dtypes names its keys."""
    from safetensors.torch import load_file

    half = {k: v.half() for k, v in converters.synthetic_original(ATTO).items()}
    torch.save({"model": half}, tmp_path / "fp16.pt")
    mixed = {k: v.bfloat16() for k, v in converters.synthetic_original(FEMTO).items()}
    mixed["head.bias"] = mixed["head.bias"].float()
    torch.save({"model": mixed}, tmp_path / "mixed.pt")
    out = tmp_path / "out"
    result = run_harness(
        tmp_path, "-k", f"{ATTO.id} or {FEMTO.id}", "--report", str(tmp_path / "r.json"), "--save", str(out),
        "--checkpoint", f"{ATTO.id}={tmp_path / 'fp16.pt'}", "--checkpoint", f"{FEMTO.id}={tmp_path / 'mixed.pt'}",
    )
    report = json.loads((tmp_path / "r.json").read_text())
    atto = report["cases"][ATTO.id]["checks"]
    assert {n: c["status"] for n, c in atto.items()} == {"key_coverage": "passed", "pixel_values": "passed", "logits": "passed",
        "expected_logits": "skipped", "round_trip": "passed", "save_reload": "passed", "as_loaded": "passed",
        "audit": "skipped"}, result.stdout[-3000:]
    assert atto["logits"]["max_abs_diff"] <= ATTO.atol and atto["save_reload"]["max_abs_diff"] == 0.0
    config = json.loads((out / ATTO.id / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float16"  # 4.x names the field torch_dtype
    saved = load_file(out / ATTO.id / "model.safetensors")
    assert {t.dtype for t in saved.values() if t.is_floating_point()} == {torch.float16}
    # mixed: reported by key at load, and transformers' reload casts the odd key to the config's dtype
    femto = report["cases"][FEMTO.id]
    assert any(n.startswith("mixed dtypes: bfloat16 (") and n.endswith("; float32 (1 keys: head.bias)") for n in femto["notes"]), femto
    assert femto["checks"]["logits"]["status"] == femto["checks"]["round_trip"]["status"] == "passed"
    assert "classifier.bias (torch.float32 -> torch.bfloat16)" in femto["checks"]["save_reload"]["reason"]
    assert result.returncode == 1 and not (out / FEMTO.id).exists()


def test_a_case_temporary_save_is_removed_when_its_checks_are_done(tmp_path):
    """Without --save, every case's save/reload folder is a full model (convnextv2_huge: 2.6 GB); kept to
    the end, one default run held 7.5 GB of them and filled a CI disk."""
    basetemp = tmp_path / "basetemp"  # a given basetemp is never cleaned by pytest itself
    result = run_harness(tmp_path, "-k", f"{ATTO.id} or {FEMTO.id}", "--weights", "random", "--basetemp", str(basetemp),
                         "--report", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stdout[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    for case in (ATTO, FEMTO):  # the folder was written and read back before it went
        assert report["cases"][case.id]["checks"]["save_reload"]["status"] == "passed"
        assert report["cases"][case.id]["checks"]["as_loaded"]["status"] == "passed"
    left = sorted(str(p.relative_to(basetemp)) for p in basetemp.rglob("*") if p.is_file())
    assert left == [], f"left under --basetemp after the run: {left}"
