"""The preprocessing arithmetic of both sides, modelled on the image size: which resize, crop,
rescale and normalisation each pipeline applies, so that two pipelines with the same modelled
geometry must agree bit for bit, and a difference has a documented cause or is a misconfiguration.

Written from the libraries' sources (torchvision's transforms as timm and the original evaluation
code use them; transformers' image processors):
- resize: torchvision `Resize(int)` and transformers `shortest_edge` both give the short side the
  requested size and the long side `int(size * long / short)`; `Resize((h, w))` and
  `{"height", "width"}` resize to exactly that; transformers' ConvNeXt processor first resizes
  the short side to `int(shortest_edge / crop_pct)` below 384 and warps to a square from 384 on;
- centre crop: torchvision's `CenterCrop` (timm) offsets by `int(round((H - c) / 2))`, rounding
  half to even (5.5 -> 6); transformers crops at `(H - c) // 2`. They disagree exactly when the
  leftover `H - c` is 4k + 3 (the one documented cause);
- the resampling filter and the normalisation constants of both sides.
"""

from __future__ import annotations

import torch
from torchvision import transforms as tv
from torchvision.transforms.functional import pil_modes_mapping


class UndocumentedDifference(AssertionError):
    """The pipelines differ by more than a documented cause: a misconfigured processor."""


class NotModelled(Exception):
    """A preprocessing step whose arithmetic this test does not model."""


# --------------------------------------------------------------------------- the source side


def _tv_shortest_edge(height, width, size):
    # torchvision.transforms.functional._compute_resized_output_size, size given for the short side
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def source_geometry(transform, height: int, width: int) -> list[tuple]:
    steps = []
    for t in getattr(transform, "transforms", [transform]):
        if isinstance(t, tv.Resize):
            if t.max_size is not None:
                raise NotModelled(f"{t!r}: max_size")
            size = [t.size] if isinstance(t.size, int) else list(t.size)
            height, width = _tv_shortest_edge(height, width, size[0]) if len(size) == 1 else tuple(size)
            steps.append(("resize", (height, width), int(pil_modes_mapping[t.interpolation])))
        elif isinstance(t, tv.CenterCrop):
            ch, cw = t.size
            if ch > height or cw > width:
                raise NotModelled(f"{t!r} on a {height}x{width} image pads")
            top, left = int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0))  # half to even
            steps.append(("crop", (top, left, ch, cw)))
            height, width = ch, cw
        elif isinstance(t, tv.ToTensor) or type(t).__name__ == "MaybeToTensor":  # timm's subclass
            steps.append(("rescale", _f32(1 / 255)))
        elif isinstance(t, tv.Normalize):
            steps.append(("normalize", _f32(*t.mean), _f32(*t.std)))
        else:
            raise NotModelled(f"source step {t!r}")
    return _canonical(steps)


# --------------------------------------------------------------------------- the transformers side


def _hf_resize(height, width, size) -> tuple[int, int]:
    if size.get("shortest_edge") and not size.get("longest_edge"):
        # transformers.image_transforms.get_resize_output_image_size(default_to_square=False)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if size.get("height") and size.get("width") and len([v for v in size.values() if v]) == 2:
        return size["height"], size["width"]
    raise NotModelled(f"resize to {size}")


def _hf_crop(height, width, ch, cw) -> tuple:
    if ch > height or cw > width:
        raise NotModelled(f"centre crop {ch}x{cw} of a {height}x{width} image pads")
    return ("crop", ((height - ch) // 2, (width - cw) // 2, ch, cw))  # floor


# do_convert_rgb changes nothing for the RGB images generated here
MODELLED_STEPS = {"do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"}


def hf_geometry(processor, height: int, width: int) -> list[tuple]:
    config = processor.to_dict()
    # Modelled from the processor's config keys (do_resize, size, do_center_crop, crop_size, ...);
    # ConvNeXt's processor has a resize of its own (crop_pct), modelled by its class.
    kind = config.get("image_processor_type", type(processor).__name__).removesuffix("Pil")
    unknown = sorted(k for k, v in config.items() if k.startswith("do_") and v and k not in MODELLED_STEPS)
    if unknown:
        raise NotModelled(f"processor {kind} steps {unknown}")
    if config.get("do_pad"):
        raise NotModelled(f"{kind} with do_pad")
    size = {k: v for k, v in dict(config.get("size") or {}).items() if v}
    steps, resample = [], int(config["resample"])
    if config.get("do_resize"):
        if kind == "ConvNextImageProcessor" and size.get("shortest_edge", 384) < 384:
            # its own resize: short side to shortest_edge / crop_pct, then a centre crop
            edge = size["shortest_edge"]
            height, width = _hf_resize(height, width, {"shortest_edge": int(edge / config["crop_pct"])})
            steps += [("resize", (height, width), resample), _hf_crop(height, width, edge, edge)]
            height, width = edge, edge
        elif kind == "ConvNextImageProcessor":  # from 384 on: warp to a square, no crop
            height = width = size["shortest_edge"]
            steps.append(("resize", (height, width), resample))
        else:
            height, width = _hf_resize(height, width, size)
            steps.append(("resize", (height, width), resample))
    if config.get("do_center_crop"):
        crop = config["crop_size"]
        steps.append(_hf_crop(height, width, crop["height"], crop["width"]))
    if config.get("do_rescale"):
        steps.append(("rescale", _f32(config["rescale_factor"])))
    if config.get("do_normalize"):
        steps.append(("normalize", _f32(*config["image_mean"]), _f32(*config["image_std"])))
    return _canonical(steps)


# --------------------------------------------------------------------------- prediction


def _f32(*values) -> tuple:
    return tuple(torch.tensor(values, dtype=torch.float32).tolist())


def _canonical(steps: list[tuple]) -> list[tuple]:
    """Drop steps that do nothing: a crop that keeps the whole image."""
    out, size = [], None
    for step in steps:
        if step[0] == "resize":
            size = step[1]
        if step[0] == "crop":
            top, left, h, w = step[1]
            if (top, left) == (0, 0) and (h, w) == size:
                continue
            size = (h, w)
        out.append(step)
    return out


def predicted_causes(source: list[tuple], hf: list[tuple]) -> list[str]:
    """The documented causes that make the two pipelines differ; empty when they must agree bit
    for bit. The one documented cause is the centre-crop offset rounding (same crop size, other
    offset); any other difference (resize, filter, mean/std, steps) is a misconfigured processor,
    not a prediction, and fails here."""
    if source == hf:
        return []
    kinds = lambda steps: [s[0] for s in steps]  # noqa: E731
    if kinds(source) != kinds(hf):
        raise UndocumentedDifference(f"undocumented difference: source steps {source}, transformers steps {hf}")
    causes, undocumented = [], []
    for a, b in zip(source, hf):
        if a == b:
            continue
        if a[0] == "crop" and a[1][2:] == b[1][2:]:
            causes.append(f"centre-crop offset: source (top, left) {a[1][:2]} (round half to even), transformers {b[1][:2]} (floor)")
        else:
            undocumented.append(f"{a[0]}: source {a[1:]} vs transformers {b[1:]}")
    if undocumented:
        raise UndocumentedDifference("undocumented difference (a misconfigured processor?): " + "; ".join(undocumented))
    return causes


def predict(processor, transform, width: int, height: int) -> list[str]:
    """The documented causes for which the two pipelines differ on a width x height image (empty:
    they must agree bit for bit); raises UndocumentedDifference or NotModelled."""
    return predicted_causes(source_geometry(transform, height, width), hf_geometry(processor, height, width))
