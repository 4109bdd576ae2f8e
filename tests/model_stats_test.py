"""Params and multiply-adds of the paper's network against the paper's Table 2."""

import pytest

from auto_deeplab_tf import architecture as architecture_lib
from auto_deeplab_tf import model_stats

# Exact trainable-parameter counts of S, M, L (19 classes); the paper rounds them to
# 10.15M / 21.62M / 44.42M.
EXPECTED_PARAMS = {"S": 10_147_427, "M": 21_622_451, "L": 44_424_691}
# Multiply-adds at 1024x2048, standard convention (traced at full size, see the docs).
EXPECTED_MADDS_BILLIONS = {"S": 317.54, "M": 434.99, "L": 653.58}
SMALL = (64, 128)  # 1024x2048 / 16: every level divides exactly
SCALE = (1024 * 2048) // (SMALL[0] * SMALL[1])


@pytest.fixture(scope="module")
def models():
    return {size: model_stats.build_fixed_network("autodeeplab", 19, f)
            for size, f in model_stats.MODEL_SIZES.items()}


@pytest.mark.parametrize("size", ["S", "M", "L"])
def test_analytic_params_match_paper(size):
    counts = model_stats.analytic_params(architecture_lib.AUTODEEPLAB, 19,
                                         model_stats.MODEL_SIZES[size])
    assert counts["total"] == EXPECTED_PARAMS[size]
    paper_params, _ = model_stats.PAPER_TABLE2[size]
    assert round(counts["total"] / 1e6, 2) == paper_params / 1e6  # exact to 0.01M
    assert abs(counts["total"] - paper_params) / paper_params < 0.005


@pytest.mark.parametrize("size", ["S", "M", "L"])
def test_model_params_and_scaled_multiply_adds(models, size):
    stats = model_stats.fixed_network_stats("autodeeplab", 19, model_stats.MODEL_SIZES[size],
                                            SMALL, breakdown=True, model=models[size])
    analytic = model_stats.analytic_params(architecture_lib.AUTODEEPLAB, 19,
                                           model_stats.MODEL_SIZES[size])
    assert stats["params"] == EXPECTED_PARAMS[size]
    for part in model_stats.PARTS:
        assert stats[f"params_{part}"] == analytic[part]
    assert sum(stats[f"multiply_adds_{p}"] for p in model_stats.PARTS) == stats["multiply_adds"]
    # Convolutions scale exactly with the area; only the 1x1 conv of the pooled image
    # feature does not, which is far below the tolerance.
    scaled = stats["multiply_adds"] * SCALE
    assert scaled / 1e9 == pytest.approx(EXPECTED_MADDS_BILLIONS[size], rel=1e-3)
    _, paper_madds = model_stats.PAPER_TABLE2[size]
    assert abs(scaled - paper_madds) / paper_madds < 0.07


def test_full_size_tf1_convention_is_closest_to_paper(models):
    # Tracing at full size is cheap (no execution); DeepLab evaluates Cityscapes at 1025x2049.
    stats = model_stats.fixed_network_stats("autodeeplab", 19, 20, (1025, 2049),
                                            convention="tf1_space_to_batch", model=models["S"])
    _, paper_madds = model_stats.PAPER_TABLE2["S"]
    assert abs(stats["multiply_adds"] - paper_madds) / paper_madds < 0.02
    # With DeepLab's crop-size image pooling counted as TF's profiler does: within 0.05%.
    profiler = model_stats.fixed_network_stats("autodeeplab", 19, 20, (1025, 2049),
                                               convention="deeplab_tf1_profiler",
                                               model=models["S"])
    assert abs(profiler["multiply_adds"] - paper_madds) / paper_madds < 5e-4
    standard = model_stats.fixed_network_stats("autodeeplab", 19, 20, (1024, 2048),
                                               model=models["S"])
    assert standard["multiply_adds"] / 1e9 == pytest.approx(EXPECTED_MADDS_BILLIONS["S"],
                                                            abs=0.01)


def test_space_to_batch_convention_only_changes_dilated_convs():
    model = model_stats.build_fixed_network(
        architecture_lib.Architecture(cell=[[(0, "sep_conv_3x3"), (1, "skip_connect")]],
                                      path=[0, 1]),
        3, 4, stem_filters=(4, 4, 8), aspp_filters=8, aspp_rates=(1, 1, 1),
        low_level_filters=4, decoder_filters=8)
    # No dilation anywhere: both conventions agree.
    a = model_stats.fixed_network_stats(None, 3, 4, (45, 37), model=model)
    b = model_stats.fixed_network_stats(None, 3, 4, (45, 37), model=model,
                                        convention="tf1_space_to_batch")
    assert a["multiply_adds"] == b["multiply_adds"] > 0
    with pytest.raises(ValueError):
        model_stats.fixed_network_stats(None, 3, 4, (45, 37), model=model, convention="x")


def test_supernet_stats_tiny():
    stats = model_stats.supernet_stats(num_classes=3, filter_multiplier=2, num_layers=2,
                                       num_blocks=2, num_levels=3, image_size=(33, 33))
    assert stats["arch_params"] == 5 * 8 + 2 * 3 * 3  # alpha [5 edges, 8 ops] + beta [2, 3, 3]
    assert stats["params"] > 0 and stats["multiply_adds"] > 0
