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


# Where along an edge its beta label sits: the two diagonals between the same pair of
# layers cross at their midpoints, so diagonal labels sit nearer their source node
# (upper-left / lower-left of the crossing) and horizontal ones at the midpoint.
_DIAGONAL_LABEL_AT = 0.3


def _trellis_geometry(num_layers: int, num_levels: int, spacing: int):
    left, top = 50, 30
    width = left + num_layers * spacing + 40
    height = top + (num_levels - 1) * spacing + 40

    def xy(layer, level):
        return left + layer * spacing, top + level * spacing

    return width, height, top, xy


def _edges(probs: np.ndarray, xy):
    """(layer, level, direction, delta, beta, start point, end point) of every edge with a
    positive beta, in drawing order."""
    num_layers, num_levels, _ = probs.shape
    for layer in range(num_layers):
        for level in search_space.levels_at_layer(layer, num_levels):
            for d, delta in enumerate(search_space.DIRECTION_DELTAS):
                p = probs[layer, level, d]
                if p > 0:
                    yield layer, level, d, delta, p, xy(layer, level), xy(layer + 1, level + delta)


def trellis_label_boxes(beta_probs: np.ndarray, spacing: int = 80) -> list:
    """(layer, level, direction, text, (x0, y0, x1, y1), origin) of every edge label that
    `trellis_image` draws: the box is the text's pixel bounds, origin where it is drawn."""
    probs = np.asarray(beta_probs)
    num_layers, num_levels, _ = probs.shape
    _, _, _, xy = _trellis_geometry(num_layers, num_levels, spacing)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = _font()
    out = []
    for layer, level, d, delta, p, (x0, y0), (x1, y1) in _edges(probs, xy):
        text = f"{p:.2f}"
        x0b, y0b, x1b, y1b = draw.textbbox((0, 0), text, font=font)
        w, h = x1b - x0b, y1b - y0b
        if delta == 0:  # above the line, centred
            cx, cy = (x0 + x1) / 2, y0 - 3 - h / 2
        else:
            t = _DIAGONAL_LABEL_AT
            cx, cy = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        ox, oy = int(round(cx - w / 2)) - x0b, int(round(cy - h / 2)) - y0b
        out.append((layer, level, d, text, (ox + x0b, oy + y0b, ox + x1b, oy + y1b), (ox, oy)))
    return out


def trellis_image(beta_probs: np.ndarray, path=None, spacing: int = 80) -> np.ndarray:
    """The trellis (layers across, OS 4..32 down) with each edge drawn as thick as its
    normalised beta and labelled with it, and the decoded path in red. RGB uint8."""
    probs = np.asarray(beta_probs)
    num_layers, num_levels, _ = probs.shape
    width, height, top, xy = _trellis_geometry(num_layers, num_levels, spacing)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font()

    for level in range(num_levels):
        draw.text((2, top + level * spacing - 5), f"OS{4 * 2**level}", fill="black", font=font)
    for *_, p, (x0, y0), (x1, y1) in _edges(probs, xy):
        draw.line([x0, y0, x1, y1], fill=(120, 120, 200), width=max(1, int(round(8 * p))))
    if path is not None:
        points = [xy(0, 0)] + [xy(l + 1, level) for l, level in enumerate(path)]
        draw.line(points, fill=(220, 0, 0), width=3)
    # Labels after the lines, on a white backing, so that no line crosses a number.
    for *_, text, (bx0, by0, bx1, by1), origin in trellis_label_boxes(probs, spacing):
        draw.rectangle([bx0 - 1, by0 - 1, bx1, by1], fill="white")
        draw.text(origin, text, fill=(70, 70, 70), font=font)
    for layer in range(num_layers + 1):
        for level in search_space.levels_at_layer(layer, num_levels):
            x, y = xy(layer, level)
            draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill="black")
        draw.text((xy(layer, 0)[0] - 4, height - 18), "stem" if layer == 0 else str(layer),
                  fill="black", font=font)
    return np.asarray(img)
