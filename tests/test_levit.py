"""LeViT: the original layout against the original code, the index buffers the plan rebuilds
against transformers' and timm's own, the oracle's regrouping against timm's own forward, the two
heads (which the averaged logits cannot tell apart), the published repos' processor, and another
model's file given to a LeViT case."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import converters
from converters import CheckpointError, compat, diagnose
from converters.core import build_config
from converters.families import levit
from converters.plan import Rename
from tests.test_mutations import small_cases

pytestmark = pytest.mark.levit  # the nightly workflow selects families by mark

S128, L128 = converters.get("levit_128s"), converters.get("levit_128")


def test_original_layout_has_the_original_models_keys():
    """Counted from facebookresearch/LeViT levit.py (HEAD 3772b8e) built with each `specification`
    entry (`LeViT_128S()` ... `LeViT_384()`): its state dict's keys, their order, shapes, dtypes and
    the index buffers' values were equal to the declared layout (128S: 336 keys, 11 index buffers,
    52 BatchNorm counters; the others 414, 14, 64), as were 25 small configurations of the
    property strategy."""
    layouts = {c.id: converters.original_layout(c) for c in converters.cases("levit")}
    counts = {case: (len(lay), sum(k.endswith("attention_bias_idxs") for k in lay), sum(k.endswith("num_batches_tracked") for k in lay))
              for case, lay in layouts.items()}
    assert counts == {"levit_128s": (336, 11, 52), **{c: (414, 14, 64) for c in ("levit_128", "levit_192", "levit_256", "levit_384")}}
    layout = layouts["levit_128s"]
    # the flat blocks: 2 x (attention, mlp), subsample + mlp, 3 x (...), subsample + mlp, 4 x (...)
    assert [k.split(".")[1] for k in layout if k.endswith(".attention_biases") and ".m." not in k] == ["4", "12"]
    assert tuple(layout["blocks.4.attention_biases"].shape) == (8, 196)  # 128 // 16 heads over the 14x14 keys
    assert tuple(layout["blocks.4.attention_bias_idxs"].shape) == (49, 196)  # 7x7 queries
    assert tuple(layout["blocks.21.m.2.c.weight"].shape) == (384, 768) and "blocks.22.m.0.c.weight" not in layout
    assert list(layout)[:2] == ["patch_embed.0.c.weight", "patch_embed.0.bn.weight"]


def _index_buffers(named) -> list[torch.Tensor]:
    return [b for name, b in named if name.endswith("attention_bias_idxs")]


def test_rebuilt_index_buffers_equal_transformers_and_timms_own():
    """The plan drops `attention_bias_idxs` (transformers' are non-persistent) and rebuilds them on
    the way back from the geometry: in module order they must equal what transformers and timm
    compute for the same model."""
    layout = converters.original_layout(S128)
    ours = _index_buffers(layout.items())
    theirs = _index_buffers(compat.build_model(S128.model_class, build_config(S128)).named_buffers())
    timms = _index_buffers(levit.oracle(S128, converters.synthetic_original(S128)).named_buffers())
    assert len(ours) == len(theirs) == len(timms) == 11
    for n, (a, b, c) in enumerate(zip(ours, theirs, timms)):
        assert torch.equal(a, b) and torch.equal(a, c), f"index buffer {n}: {tuple(a.shape)}"
    # the comparison can fail: the same offsets with their axes exchanged give another table
    side = 14
    swapped = (ours[0] % side) * side + ours[0] // side
    assert not torch.equal(swapped, theirs[0])


def _small():
    case, side = small_cases(levit.FAMILY)[0]
    return case, converters.synthetic_original(case), torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))


def test_the_oracle_is_timms_own_forward_and_refuses_another_order():
    """The oracle splits timm's blocks into the original's residual units: its outputs equal timm's
    unmodified LevitDistilled bit for bit. Its by-position load refuses an original whose tensors
    come in another module order (one error naming the shapes that differ)."""
    case, original, pixels = _small()
    with torch.inference_mode():
        assert torch.equal(levit.oracle(case, original)(pixels), levit.timm_levit(case, original)(pixels))
    reordered = {"head.l.weight": original["head.l.weight"], **original}
    with pytest.raises(ValueError, match="shapes that differ in module order"):
        levit.oracle(case, reordered)


def test_each_head_lands_in_its_own_classifier():
    """levit.py's eval output is (head + head_dist) / 2, as transformers' `logits` and timm's: the
    same, so no divergence to declare; but an average cannot tell the heads apart, so each of
    transformers' `cls_logits` and `distillation_logits` must equal timm's `head` and `head_dist`
    on the pooled features. A plan that exchanges the heads passes the averaged logits and fails here."""
    case, original, pixels = _small()
    timm = levit.oracle(case, original)
    plan, target = converters.plan_of(case), converters.target_layout(case)
    exchanged = tuple(Rename(f"{head}.{a}.", f"{other}.{b}.") for head, other in (("head", "classifier_distill"),
                      ("head_dist", "classifier")) for a, b in (("bn", "batch_norm"), ("l", "linear")))
    swapped = dataclasses.replace(plan, renames=exchanged + plan.renames)  # first match wins
    with torch.inference_mode():
        pooled = timm.forward_head(timm.forward_features(pixels), pre_logits=True)
        head, head_dist = timm.head(pooled), timm.head_dist(pooled)
        ours, wrong = (converters.build_model(case, p.forwards(original, target=target)[0])(pixel_values=pixels)
                       for p in (plan, swapped))
    assert torch.equal(ours.cls_logits, head) and torch.equal(ours.distillation_logits, head_dist)
    assert torch.equal(ours.logits, (head + head_dist) / 2) and torch.equal(ours.logits, timm(pixels))
    assert torch.equal(wrong.logits, ours.logits)  # what the logits check sees
    assert not torch.allclose(wrong.cls_logits, head, atol=case.atol)


def test_the_original_evaluations_fused_batchnorm_moves_outputs_by_rounding_only():
    """main.py evaluates with `fuse=args.eval`: levit.py folds each BatchNorm into the conv / linear
    next to it (Conv2d_BN, Linear_BN, BN_Linear `.fuse`; timm's ConvNorm, LinearNorm, NormLinear
    keep the same formulas). The declared difference: the unfused model transformers computes
    differs from the fused one by rounding, well under 1e-5 of the logits' magnitude (measured with
    levit.py itself: about 1.5e-6 at every published size)."""
    from timm.models.levit import ConvNorm, LinearNorm, NormLinear

    case, original, pixels = _small()
    model = levit.oracle(case, original)
    with torch.inference_mode():
        unfused = model(pixels)
        for name, module in list(model.named_modules()):
            if isinstance(module, (ConvNorm, LinearNorm, NormLinear)):
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, module.fuse())
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        fused = model(pixels)
    relative = (fused - unfused).abs().max().item() / unfused.abs().max().item()
    assert relative < 1e-5, f"fused vs unfused: {relative:.3g} of the logits' magnitude"


def test_the_original_evaluation_is_short_side_256_and_a_224_crop():
    """datasets.py build_transform(is_train=False): Resize(int((256 / 224) * 224), interpolation=3)
    then CenterCrop(224), ImageNet mean/std."""
    evaluation = levit.evaluation
    assert evaluation.resize == 256 and evaluation.crop_size == 224 and evaluation.interpolation == "bicubic"
    assert "datasets.py build_transform" in evaluation.source


def _images() -> dict:
    """scikit-image's photographs and two noise images of other sizes and aspect ratios (PIL, RGB)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    noise = {f"noise_{w}x{h}": Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((640, 480), (333, 500))}
    return {name: Image.fromarray(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee", "rocket")} | noise


def test_the_published_processor_gives_the_same_pixels():
    """The published repos hold LevitImageProcessor (shortest_edge 224, which it scales by 256/224
    to 256, then a 224 crop): on photographs and noise images of other sizes it gives the
    case's processor's pixels bit for bit; told the resize size itself (256) it would not."""
    ours = converters.image_processor(S128)
    published = compat.image_processor_class("LevitImageProcessor")()
    misread = compat.image_processor_class("LevitImageProcessor")(size={"shortest_edge": 256})
    images = _images()
    pixels = lambda processor, image: processor(images=image, return_tensors="pt")["pixel_values"]  # noqa: E731
    for name, image in images.items():
        assert torch.equal(pixels(published, image), pixels(ours, image)), name
    assert not torch.equal(pixels(misread, images["chelsea"]), pixels(ours, images["chelsea"]))  # a 292 px short side


def test_another_models_file_is_one_error_naming_the_case_the_file_and_its_layout():
    """A LeViT-128 file given to levit_128s, another family's file given to levit_128s, and a
    levit_128s file given to another family's case: one error each at load (`diagnose.check_file`,
    which the plugin runs on every loaded file), naming the case, the file and what the file's
    layout matches."""
    other = next(c for c in converters.cases() if c.family != "levit" and not c.streamed and not c.extra_files)

    def error(case, state, name):
        with pytest.raises(CheckpointError) as caught:
            diagnose.check_file(case, name, state)
        message = str(caught.value)
        assert message.startswith(f"{case.id}: {name}: ") and "\n" not in message, message
        return message

    layout = lambda case: dict(converters.original_layout(case))  # noqa: E731  (keys and shapes: all it reads)
    message = error(S128, layout(L128), "LeViT-128-b88c2750.pth")
    assert "matches the layout of levit_128 (family levit, 100% of keys and shapes alike)" in message, message
    message = error(S128, layout(other), "other.pth")
    assert f"matches the layout of {other.id} (family {other.family}, 100% of keys and shapes alike)" in message, message
    message = error(other, layout(S128), "LeViT-128S-96703c44.pth")
    assert "matches the layout of levit_128s (family levit, 100% of keys and shapes alike)" in message, message
