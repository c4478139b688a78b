"""Bad original files: every problem listed, errors naming the case and the file, no code run."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import converters
from converters import CheckpointError
from converters.plan import Plan, Rename

CASE = converters.get("convnextv2_atto_1k_224")


@pytest.fixture(scope="module")
def original():
    return converters.synthetic_original(CASE)


def test_missing_extra_and_misshaped_keys_are_all_listed(original):
    broken = dict(original)
    del broken["stages.2.5.pwconv1.weight"], broken["head.bias"]
    broken["stages.0.0.extra.weight"] = torch.zeros(3)
    broken["norm.weight"] = torch.zeros(7)
    _, coverage = converters.convert(CASE, broken)
    problems = coverage.problems()
    assert not coverage.ok
    assert "target key not produced: convnextv2.encoder.stages.2.layers.5.pwconv1.weight" in problems
    assert "target key not produced: classifier.bias" in problems
    assert "produced key not in target: convnextv2.encoder.stages.0.layers.0.extra.weight" in problems
    assert "shape mismatch: convnextv2.layernorm.weight produced (7,) expected (320,)" in problems
    assert len(problems) == 4


def test_unknown_key_is_not_consumed(original):
    _, coverage = converters.convert(CASE, dict(original, **{"pos_embed": torch.zeros(1)}))
    assert coverage.unconsumed == ["pos_embed"]


def test_two_sources_on_one_target_are_reported():
    _, coverage = Plan((Rename("a.", "x."), Rename("b.", "x."))).forwards({"a.w": torch.zeros(1), "b.w": torch.zeros(1)})
    assert coverage.duplicates == [("x.w", ["a.w", "b.w"])]
    assert "target key produced twice: x.w <- a.w, b.w" in coverage.problems()


def _error(path) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        converters.load_original(CASE, path)
    assert CASE.id in str(info.value) and str(path) in str(info.value)
    return info.value


def test_truncated_file_names_case_and_path(tmp_path, original):
    path = tmp_path / "convnextv2_atto_1k_224_ema.pt"
    torch.save({"model": original}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _error(path).reason


def test_non_checkpoint_empty_file_and_directory(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    assert "not a torch checkpoint" in _error(text).reason
    empty = tmp_path / "empty.pt"
    empty.touch()
    assert _error(empty).reason == "empty file"
    assert "is a directory" in _error(tmp_path).reason


def test_truncated_safetensors(tmp_path, original):
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in original.items()}, str(path))
    path.write_bytes(path.read_bytes()[:1000])
    assert "not a readable safetensors file" in _error(path).reason


class _RunsCode:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, original):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": original, "payload": _RunsCode(marker)}, path)
    error = _error(path)
    assert "refused to unpickle" in error.reason and ("posix.system" in error.reason or "os.system" in error.reason)
    assert not marker.exists()


def test_plain_pickle_is_refused(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"model": {"a": 1}}))
    assert not zipfile.is_zipfile(path)
    _error(path)  # legacy format, not a tensor file: refused with case and path


def test_wrong_wrapper_entry_is_explained(tmp_path, original):
    path = tmp_path / "wrapped.pt"
    torch.save({"state": original, "epoch": 3}, path)
    error = _error(path)
    assert "entries that are not tensors" in error.reason and "['model']" in error.reason


def test_model_ema_policy(tmp_path, original):
    """Weights come from "model"; another entry such as "model_ema" is ignored and named."""
    path = tmp_path / "with_ema.pt"
    ema = {k: v + 1 for k, v in original.items()}
    torch.save({"model": original, "model_ema": ema, "epoch": 7}, path)
    loaded = converters.load_original(CASE, path)
    assert loaded.unwrapped == "model" and loaded.ignored == ["epoch", "model_ema"]
    assert all(torch.equal(loaded.state[k], original[k]) for k in original)
