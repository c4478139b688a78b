"""ViT (JAX `.npz`): the original layout against the original code, the real `.npz` loader path,
hostile and foreign files, and the original's two quirks (tanh GELU, TensorFlow's resize)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import converters
from converters.checkpoint import CheckpointError
from converters.diagnose import check_file
from converters.families import vit
from vision_port_fixtures.images import photographs

pytestmark = pytest.mark.vit  # the nightly workflow selects families by mark

BASE = converters.get("vit_base_patch16_224")
SMALL = dataclasses.replace(BASE, config={**BASE.config, **vit.FAMILY.mutants[0].overrides})


def test_original_layout_has_the_original_models_keys():
    """Counted from google-research/vision_transformer vit_jax/models_vit.py (HEAD 2ecbc73; the same
    modules since the first release): per Encoder1DBlock LayerNorm_0, MultiHeadDotProductAttention_1
    (query, key, value, out: kernel and bias each), LayerNorm_2, MlpBlock_3 (Dense_0, Dense_1) = 16;
    outside the blocks cls, embedding (2), posembed_input, encoder_norm (2), head (2) = 8; no
    pre_logits (fine-tuned: representation_size None). ViT-B 12 blocks: 200 keys, ViT-L 24: 392."""
    counts = {c.id: len(converters.original_layout(c)) for c in converters.cases("vit")}
    assert counts == {"vit_base_patch16_224": 200, "vit_base_patch16_384": 200, "vit_base_patch32_384": 200,
                      "vit_large_patch16_224": 392, "vit_large_patch16_384": 392, "vit_large_patch32_384": 392}
    layout = converters.original_layout(converters.get("vit_base_patch32_384"))
    assert tuple(layout["embedding/kernel"].shape) == (32, 32, 3, 768)  # HWIO
    assert tuple(layout["Transformer/posembed_input/pos_embedding"].shape) == (1, 1 + 12 * 12, 768)
    attention = "Transformer/encoderblock_11/MultiHeadDotProductAttention_1/"
    assert tuple(layout[attention + "query/kernel"].shape) == (768, 12, 64)  # (D, heads, head_dim)
    assert tuple(layout[attention + "out/kernel"].shape) == (12, 64, 768)
    assert tuple(layout["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].shape) == (768, 3072)  # (in, out)


def test_a_real_npz_file_loads_through_the_real_loader_and_converts_like_the_state(tmp_path):
    """The synthetic original is the archive's state: written with np.savez, as the original saves
    its parameters, and read back by the harness's loader (numpy, allow_pickle=False)."""
    state = converters.synthetic_original(SMALL)
    path = tmp_path / "ViT-B_16-224.npz"
    np.savez(path, **{k: v.numpy() for k, v in state.items()})
    loaded = converters.load_original(SMALL, path).state
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    check_file(SMALL, path, loaded)  # the case's own layout: no complaint
    converted, report = converters.convert(SMALL, loaded)
    assert report.ok, report.describe()
    back, report = converters.revert(SMALL, converted)
    assert report.ok and all(torch.equal(back[k], state[k]) for k in state)


def test_an_npz_with_a_pickled_object_array_is_refused_naming_case_and_file(tmp_path):
    state = {k: v.numpy() for k, v in converters.synthetic_original(SMALL).items()}
    path = tmp_path / "ViT-B_16-224.npz"
    np.savez(path, **state, config=np.array([{"hidden_size": 32}], dtype=object))
    with pytest.raises(CheckpointError) as error:
        converters.load_original(SMALL, path)
    message = str(error.value)
    assert message.count(SMALL.id) == 1 and "ViT-B_16-224.npz" in message
    assert "refused to unpickle an object array" in message and "allow_pickle=False" in message


def test_another_familys_checkpoint_is_refused_naming_the_case_the_file_and_its_layout(tmp_path):
    """A DINOv2 ViT-B/14 file (torch names) given to a ViT case: one error with the case, the file and
    the layout it matches; and the reverse, this family's archive given to a DINOv2 case."""
    dinov2 = converters.get("dinov2_vitb14")
    foreign = converters.synthetic_original(dinov2)
    with pytest.raises(CheckpointError) as error:
        check_file(BASE, tmp_path / "dinov2_vitb14_pretrain.pth", foreign)
    message = str(error.value)
    assert message.startswith(f"{BASE.id}: ") and "dinov2_vitb14_pretrain.pth" in message
    assert "matches the layout of dinov2_vitb14" in message and "family dinov2" in message
    ours = converters.original_layout(BASE)
    with pytest.raises(CheckpointError, match=r"dinov2_vitb14: .*ViT-B_16-224\.npz.*matches the layout of vit_base_patch16_224"):
        check_file(dinov2, tmp_path / "ViT-B_16-224.npz", ours)
    with pytest.raises(CheckpointError, match=r"matches the layout of vit_large_patch16_224"):  # another size of ours
        check_file(BASE, tmp_path / "ViT-L_16-224.npz", converters.original_layout(converters.get("vit_large_patch16_224")))


def test_the_original_gelu_is_the_tanh_approximation_in_the_case_and_the_oracle():
    """vit_jax's MlpBlock calls Flax's nn.gelu, i.e. jax.nn.gelu with approximate=True (its default):
    0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))). The cases' activation (gelu_pytorch_tanh) and the
    oracle's (timm's gelu_tanh) compute it; exact GELU, which the published repos' configs and timm's
    defaults use, is up to 5e-4 away from it (random-weight logits hardly move: this test pins it)."""
    from timm.layers import get_act_layer
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    original = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))
    ours, oracles = ACT2FN[BASE.config["hidden_act"]](x), get_act_layer("gelu_tanh")()(x)
    assert (ours - original).abs().max() < 1e-12 and (oracles - original).abs().max() < 1e-12
    assert (ACT2FN["gelu"](x) - original).abs().max() > 1e-4
    assert BASE.config["layer_norm_eps"] == 1e-6  # Flax's LayerNorm epsilon; transformers' default is 1e-12
    assert all(c.config["hidden_act"] == "gelu_pytorch_tanh" for c in converters.cases("vit"))


def test_the_original_evaluation_warps_bilinear_to_minus_one_one():
    """vit_jax/input_pipeline.py, mode 'test': tf.image.resize to [crop_size, crop_size] (no crop), then
    (x - 127.5) / 127.5."""
    for case in converters.cases("vit"):
        declared = vit.evaluation(case)
        assert declared.warp and declared.resize == (case.image_size, case.image_size)
        assert declared.interpolation == "bilinear" and declared.mean == declared.std == (0.5, 0.5, 0.5)
    grey = torch.tensor([0.0, 127.5, 255.0]) / 255
    assert torch.allclose((grey - 0.5) / 0.5, torch.tensor([-1.0, 0.0, 1.0]))


def test_tensorflows_resize_differs_from_the_declared_pil_bilinear_when_shrinking():
    """tf.image.resize (bilinear, antialias=False, half-pixel centres: torch's interpolate with
    align_corners=False, on float pixels) does not antialias; PIL's bilinear, which the declaration's
    reference and the transformers processor use, does. Measured on the photographs at 224."""
    reference = vit.evaluation(BASE).transform()
    worst = 0.0
    for image in photographs().values():
        rgb = image.convert("RGB")
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        tf_like = torch.nn.functional.interpolate(pixels, size=(224, 224), mode="bilinear", align_corners=False,
                                                  antialias=False)
        tf_like = (tf_like[0] - 127.5) / 127.5
        worst = max(worst, (tf_like - reference(rgb)).abs().max().item())
    assert round(worst, 2) == 0.81, worst  # not rounding: the filters differ
    assert all("up to 0.81" in c.output_divergence for c in converters.cases("vit"))  # what the cases declare


def test_converted_tensors_are_laid_out_afresh_and_compute_as_reloaded():
    """The plan transposes most tensors; `Transpose` gives contiguous tensors, so the converted model
    computes exactly as the one save_pretrained / from_pretrained gives back (a transposed view takes
    other CPU kernels: 1.5e-6 on ViT-B before the fix) and safetensors can write them as they are."""
    converted, _ = converters.convert(SMALL, converters.synthetic_original(SMALL))
    assert all(tensor.is_contiguous() for tensor in converted.values())
    fresh = {k: v.clone(memory_format=torch.contiguous_format) for k, v in converted.items()}
    pixels = torch.randn(2, 3, SMALL.image_size, SMALL.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = [converters.build_model(SMALL, s)(pixel_values=pixels).logits for s in (converted, fresh)]
    assert torch.equal(*outputs)


def test_the_draft_refuses_the_family_naming_the_arrangements_it_cannot_write():
    """The plan composes operations per tensor (HWIO -> OIHW: three transposes; per-head kernels:
    a reshape, then a transpose), which `converters.draft` does not read back: it refuses, naming
    the entries and their shapes, rather than calling the pairing ambiguous. The plan is written by
    hand and proved by the harness."""
    from converters import draft
    from converters.pairing import PairingError

    small = draft.small_case(BASE)
    with pytest.raises(PairingError) as error:
        draft.compare(small)
    message = str(error.value)
    assert "target entries are arrangements of one original tensor" in message and "ambiguous" not in message
    assert "patch_embeddings.projection.weight (32, 3, 8, 8): an arrangement of embedding/kernel" in message, message
