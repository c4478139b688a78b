"""Pictures for the HTML report (`converters.html_report`): what two preprocessing paths made of a
photograph with their difference as a heat map in grey levels, and per-block parity as a chart.

What a check keeps for the page is PNG bytes (base64 text: it travels in pytest-xdist reports),
never tensors: a 224-px photograph is 60-130 KB. matplotlib (the `test` extra) is imported only
when a picture is drawn, and through its object API on the Agg canvas (no pyplot, no global state).
"""

from __future__ import annotations

import base64
import io
import math
import os

# The difference map is kept losslessly to 1/64 of a grey level in a 16-bit PNG (up to 1023 levels).
LEVEL_STEPS = 64


def _png(array) -> str:
    """Kept until the page is drawn (then re-encoded in its figure): fast compression over size."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _array(png: str):
    import numpy as np
    from PIL import Image

    return np.array(Image.open(io.BytesIO(base64.b64decode(png))))


def pixel_images(reference, candidate, mean, std) -> dict:
    """One photograph through the original evaluation (`reference`) and a transformers processor
    (`candidate`), both normalised (C, H, W) tensors: each image as the model sees it, back in 8-bit
    RGB, and per pixel the worst channel's difference in grey levels of the 8-bit input (the
    figure `checks.grey_levels` gives for the whole batch). Images of other shapes: no map."""
    import numpy as np

    # numpy, one thread: torch's thread hand-offs cost more than this arithmetic on a busy machine
    mean = np.asarray(mean, dtype=np.float64).reshape(-1, 1, 1)
    std = np.asarray(std, dtype=np.float64).reshape(-1, 1, 1)
    reference, candidate = (t.detach().cpu().numpy().astype(np.float64) for t in (reference, candidate))

    def rgb(t):
        return np.ascontiguousarray(np.clip(np.rint((t * std + mean) * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0))

    record = {"original": _png(rgb(reference)), "transformers": _png(rgb(candidate)), "levels": None, "max_levels": None}
    if reference.shape == candidate.shape:
        levels = (np.abs(candidate - reference) * std * 255).max(axis=0)
        steps = np.clip(np.rint(levels * LEVEL_STEPS), 0, 2 ** 16 - 1).astype(np.uint16)
        record |= {"levels": _png(steps), "max_levels": round(float(levels.max()), 3)}
    return record


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


# Labels carry names from a run (module names, photographs, processor classes): drawn as they are,
# never parsed as mathtext (`$x$`, or an unbalanced `$` that would raise).
PLAIN = {"parse_math": False}


def _encoded(figure) -> bytes:
    """The figure as a 256-colour palette PNG: drawn on the Agg canvas and encoded once (a pixel
    figure: 80 KB, 290 KB in full colour; the photographs barely change, the heat map's scale and
    the charts' lines not at all)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgb = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
    out = io.BytesIO()
    rgb.quantize(256, method=Image.Quantize.FASTOCTREE).save(out, format="PNG")
    return out.getvalue()


def pixel_figure(record: dict, title: str, limit: float | None = None) -> bytes:
    """A PNG: the original evaluation's image, the transformers processor's, and the heat map of
    their difference in grey levels (its colour bar; 0 is black)."""
    figure = _figure(10.5, 3.9)
    axes = figure.subplots(1, 3)
    for ax, key, label in ((axes[0], "original", "original evaluation"), (axes[1], "transformers", "transformers processor")):
        image = _array(record[key])
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"{label} ({image.shape[1]}x{image.shape[0]})", fontsize=9, **PLAIN)
    if record.get("levels"):
        levels = _array(record["levels"]).astype("float64") / LEVEL_STEPS
        top = max(1.0, float(levels.max()))
        shown = axes[2].imshow(levels, cmap="inferno", vmin=0.0, vmax=top, interpolation="nearest")
        figure.colorbar(shown, ax=axes[2], shrink=0.85, label="grey levels")
        said = f"max {record['max_levels']:g} grey levels" + (f" (limit {limit:g})" if limit is not None else "")
        axes[2].set_title(f"difference: {said}", fontsize=9, color="firebrick" if limit is not None and record["max_levels"] > limit else "black",
                          **PLAIN)
    else:
        axes[2].text(0.5, 0.5, "no difference map:\nthe images' shapes differ", ha="center", va="center", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(title, fontsize=10, **PLAIN)
    return _encoded(figure)


def _common_prefix(names: list[str]) -> str:
    """The dotted module path every name starts with ("model.encoder.stages.")."""
    if len(names) < 2:
        return ""
    parts = [n.split(".") for n in names]
    shared = os.path.commonprefix(parts)  # on lists: the leading segments all share
    shared = shared[:min(len(p) for p in parts) - 1]  # keep each name's last segment
    return ".".join(shared) + "." if shared else ""


def parity_chart(parity: dict, atol: float | None, title: str) -> bytes:
    """A PNG: each block's max abs diff (log scale) when run on the oracle's input to it, in
    module order, with each block's tolerance (max(atol, rtol x its output)) and atol as lines;
    the first block over tolerance and the worst one (relative to its output) marked."""
    from .quote import quote

    blocks = parity.get("blocks") or []
    names = [quote(b[0], 80) for b in blocks]
    diffs = [float(b[1]) if b[1] is not None else math.inf for b in blocks]  # None: non-finite in the JSON
    tolerances = [t if t is not None else atol for t in (parity.get("tolerances") or [atol] * len(blocks))]
    first, worst = (quote(parity[k], 80) if parity.get(k) else None for k in ("first_block_over", "worst_block"))
    positive = [d for d in diffs + tolerances + [atol] if d is not None and 0 < d < math.inf]
    floor = min(positive, default=1e-8) / 100  # where an exact 0 is drawn on a log scale
    ceiling = max(positive, default=1.0) * 10  # and a NaN or infinite one
    shown = [d if 0 < d < math.inf else floor if d == 0 else ceiling for d in diffs]
    over = [n == first or not d < math.inf or (t is not None and d > t) for n, d, t in zip(names, diffs, tolerances)]
    figure = _figure(10.5, 4.2)
    ax = figure.subplots()
    x = list(range(len(names)))
    ax.set_yscale("log")
    ax.plot(x, shown, color="0.6", linewidth=0.8, zorder=1)
    ax.scatter([i for i in x if not over[i]], [shown[i] for i in x if not over[i]], s=18, color="tab:blue", zorder=2,
               label="block within tolerance")
    ax.scatter([i for i in x if over[i]], [shown[i] for i in x if over[i]], s=26, color="tab:red", zorder=3,
               label="block over tolerance")
    if any(t is not None for t in tolerances):
        ax.step(x, [t if t is not None else float("nan") for t in tolerances], where="mid", color="tab:orange",
                linewidth=1.2, label="tolerance: max(atol, rtol x |block output|)")
    if atol:
        ax.axhline(atol, color="tab:green", linestyle="--", linewidth=1, label=f"atol {atol:.1g}")
    marks = [(first, "first over tolerance" + (" and worst" if worst == first else ""), "tab:red", (14, -4))]
    if worst != first:
        marks.append((worst, "worst (relative to its output)", "black", (14, -22)))
    for name, label, colour, offset in marks:
        if name in names:
            i = names.index(name)
            ax.scatter([i], [shown[i]], s=160, facecolors="none", edgecolors=colour, linewidths=1.6, zorder=4)
            ax.annotate(f"{label}: {name}", (i, shown[i]), xytext=offset, textcoords="offset points", fontsize=8,
                        color=colour, ha="left" if i < len(names) * 0.6 else "right",
                        arrowprops={"arrowstyle": "-", "color": colour}, **PLAIN)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 30)  # room above the highest point for its label and the legend
    step = max(1, len(names) // 40)  # at most ~40 labels, without the prefix all share
    prefix = _common_prefix(names)
    labels = [names[i][len(prefix):] for i in x[::step]]
    ax.set_xticks(x[::step], [n if len(n) <= 40 else n[:37] + "..." for n in labels], rotation=90, fontsize=7, **PLAIN)
    ax.set_xlabel(f"blocks of {prefix.rstrip('.')}, in module order" if prefix else "blocks, in module order", fontsize=8, **PLAIN)
    ax.set_ylabel("max abs diff (0 drawn at the bottom)" if any(d == 0 for d in diffs) else "max abs diff")
    ax.set_title(title, fontsize=10, **PLAIN)
    ax.legend(fontsize=7, loc="best")
    ax.grid(True, axis="y", which="major", alpha=0.3)
    return _encoded(figure)
