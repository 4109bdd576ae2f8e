import numpy as np

from auto_deeplab_tf import search_space
from auto_deeplab_tf import visualize


def paper_beta(num_layers=12, num_levels=4, seed=0):
    rng = np.random.default_rng(seed)
    return search_space.normalize_beta(rng.normal(size=(num_layers, num_levels, 3)))


def test_trellis_labels_do_not_overlap_and_lie_inside_the_image():
    probs = paper_beta()
    image = visualize.trellis_image(probs)
    boxes = visualize.trellis_label_boxes(probs)
    height, width = image.shape[:2]
    # One label per legal edge of the trellis.
    assert len(boxes) == int(np.count_nonzero(probs > 0))
    for i, (*_, (x0, y0, x1, y1), _) in enumerate(boxes):
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        for *_, (u0, v0, u1, v1), _ in boxes[i + 1:]:
            assert x1 <= u0 or u1 <= x0 or y1 <= v0 or v1 <= y0, (boxes[i], (u0, v0, u1, v1))


def test_trellis_labels_show_each_edge_probability():
    probs = paper_beta(num_layers=4, num_levels=3, seed=1)
    for layer, level, d, text, *_ in visualize.trellis_label_boxes(probs):
        assert text == f"{probs[layer, level, d]:.2f}"


def test_the_decoded_path_is_drawn_in_red():
    probs = paper_beta(num_layers=4, num_levels=3)
    plain = visualize.trellis_image(probs)
    with_path = visualize.trellis_image(probs, path=[1, 2, 2, 1])
    red = (with_path[..., 0] > 200) & (with_path[..., 1] < 40) & (with_path[..., 2] < 40)
    assert red.sum() > 100
    assert not ((plain[..., 0] > 200) & (plain[..., 1] < 40)).any()
