"""The `.npz` loader (JAX originals: numpy, allow_pickle=False) and slash-separated key templates.
Generic: the files are written here, under keys in a JAX original's style; no family is involved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converters.checkpoint import CheckpointError, NotMappable, load
from converters.plan import Plan, Rename

STATE = {"Transformer/encoderblock_0/LayerNorm_0/scale": np.arange(4, dtype=np.float32),
         "Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel": np.ones((4, 8), dtype=np.float32),
         "embedding/kernel": np.full((2, 2, 3, 4), 0.5, dtype=np.float32)}


def test_npz_loads_every_array_as_a_tensor_with_its_key_shape_and_values(tmp_path):
    path = tmp_path / "ViT-T_16.npz"
    np.savez(path, **STATE)
    state = load(path, "case_x").state
    assert list(state) == list(STATE)
    for key, array in STATE.items():
        torch.testing.assert_close(state[key], torch.from_numpy(array), rtol=0, atol=0)


def test_compressed_npz_loads_too(tmp_path):
    path = tmp_path / "compressed.npz"
    np.savez_compressed(path, **STATE)
    assert set(load(path, "case_x").state) == set(STATE)


def test_pickled_object_array_is_refused_unread_naming_case_and_file(tmp_path):
    ran = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    path = tmp_path / "hostile.npz"
    np.savez(path, **STATE, payload=np.array([RunsCode()], dtype=object))
    with pytest.raises(CheckpointError, match=r"case_x: .*hostile\.npz: refused to unpickle an object array") as e:
        load(path, "case_x")
    assert not ran.exists() and "allow_pickle=False" in str(e.value)


def test_text_arrays_and_flipped_bytes_are_refused(tmp_path):
    text = tmp_path / "text.npz"
    np.savez(text, **STATE, names=np.array(["a", "b"]))
    with pytest.raises(CheckpointError, match=r"text\.npz: entry names holds <U1 values, not numbers"):
        load(text, "case_x")
    flipped = tmp_path / "flipped.npz"
    np.savez(flipped, **STATE)
    data = bytearray(flipped.read_bytes())
    data[data.index(np.ones(1, np.float32).tobytes())] ^= 0x01  # one bit of the kernel, inside its member
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"flipped\.npz: corrupt .* does not match its CRC-32 record"):
        load(flipped, "case_x")


def test_truncated_npz_and_mapping_are_errors(tmp_path):
    path = tmp_path / "cut.npz"
    np.savez(path, **STATE)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cut\.npz: not an \.npz archive"):
        load(path, "case_x")
    np.savez(path, **STATE)
    with pytest.raises(NotMappable, match="cannot be memory-mapped"):
        load(path, "case_x", mmap=True)


def test_slash_templates_are_prefixes_and_round_trip():
    plan = Plan(renames=(Rename("Transformer/encoderblock_{i}/", "encoder.layer.{i}."),
                         Rename("embedding/kernel", "embeddings.weight")))
    state = {k: torch.from_numpy(v) for k, v in STATE.items()}
    converted, _ = plan.forwards(state)
    assert set(converted) == {"encoder.layer.0.LayerNorm_0/scale", "encoder.layer.1.MlpBlock_3/Dense_0/kernel", "embeddings.weight"}
    back, _ = plan.backwards(converted)
    assert set(back) == set(STATE)
    with pytest.raises(ValueError, match="prefix/whole-key mismatch"):
        Rename("Transformer/", "encoder")
