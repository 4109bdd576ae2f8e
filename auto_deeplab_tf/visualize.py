"""Pictures of the search state for TensorBoard: softmax(alpha) and the beta trellis."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from auto_deeplab_tf import search_space


def _font():
    return ImageFont.load_default()


def _colour(value: float) -> tuple[int, int, int]:
    """White (0) to dark blue (1)."""
    v = float(np.clip(value, 0.0, 1.0))
    return (int(255 * (1 - 0.85 * v)), int(255 * (1 - 0.7 * v)), int(255 * (1 - 0.3 * v)))


def alpha_heatmap(alpha_weights: np.ndarray, op_names=search_space.OPS, cell: int = 22
                  ) -> np.ndarray:
    """[edges, ops] softmax(alpha) as an RGB uint8 image, labelled by edge and op."""
    weights = np.asarray(alpha_weights)
    num_edges, num_ops = weights.shape
    num_blocks = 0
    while search_space.num_edges(num_blocks) < num_edges:
        num_blocks += 1
    left, top = 110, 90
    img = Image.new("RGB", (left + num_ops * cell + 10, top + num_edges * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    for k, name in enumerate(op_names):
        x = left + k * cell + cell // 2
        draw.text((x - 3, 4), "\n".join(name.replace("_conv", "").replace("_", "")[:9]),
                  fill="black", font=font, spacing=-1)
    edges = search_space.cell_edges(num_blocks)
    for e in range(num_edges):
        block, state = edges[e] if e < len(edges) else (None, None)
        y = top + e * cell
        draw.text((4, y + 5), f"block{block} <- s{state}", fill="black", font=font)
        row = weights[e]
        best = int(np.argmax(row))
        for k in range(num_ops):
            x = left + k * cell
            # Per-row min-max: early in a search the weights are near 1/8 each, and only
            # the contrast within an edge shows which op is winning.
            span = max(row.max() - row.min(), 1e-12)
            draw.rectangle([x, y, x + cell - 2, y + cell - 2],
                           fill=_colour((row[k] - row.min()) / span))
            if k == best:
                draw.rectangle([x, y, x + cell - 2, y + cell - 2], outline=(200, 0, 0), width=2)
    return np.asarray(img)


def trellis_image(beta_probs: np.ndarray, path=None, spacing: int = 60) -> np.ndarray:
    """The trellis (layers across, OS 4..32 down) with each edge drawn as thick as its
    normalised beta, and the decoded path in red. RGB uint8."""
    probs = np.asarray(beta_probs)
    num_layers, num_levels, _ = probs.shape
    left, top = 50, 30
    width = left + num_layers * spacing + 40
    height = top + (num_levels - 1) * spacing + 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font()

    def xy(layer, level):
        return left + layer * spacing, top + level * spacing

    for level in range(num_levels):
        draw.text((2, top + level * spacing - 5), f"OS{4 * 2**level}", fill="black", font=font)
    for layer in range(num_layers):
        for level in search_space.levels_at_layer(layer, num_levels):
            for d, delta in enumerate(search_space.DIRECTION_DELTAS):
                p = probs[layer, level, d]
                if p <= 0:
                    continue
                (x0, y0), (x1, y1) = xy(layer, level), xy(layer + 1, level + delta)
                draw.line([x0, y0, x1, y1], fill=(120, 120, 200), width=max(1, int(round(8 * p))))
                mx, my = (x0 + x1) // 2, (y0 + y1) // 2
                draw.text((mx - 8, my - 12 if delta <= 0 else my + 2), f"{p:.2f}",
                          fill=(90, 90, 90), font=font)
    if path is not None:
        points = [xy(0, 0)] + [xy(l + 1, level) for l, level in enumerate(path)]
        draw.line(points, fill=(220, 0, 0), width=3)
    for layer in range(num_layers + 1):
        for level in search_space.levels_at_layer(layer, num_levels):
            x, y = xy(layer, level)
            draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill="black")
        draw.text((xy(layer, 0)[0] - 4, height - 18), "stem" if layer == 0 else str(layer),
                  fill="black", font=font)
    return np.asarray(img)
