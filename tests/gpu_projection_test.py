"""`bench.gpu_projection`: FLOPs of the traced pass by op type, and the projection's
arithmetic, at a tiny config."""

import dataclasses

import pytest

from auto_deeplab_tf import model_stats
from bench import gpu_projection as gp

CLASSES, F, L, B, LEVELS, CROP = 19, 2, 4, 5, 4, 32


@pytest.fixture(scope="module")
def costs():
    model = gp.build_unrolled_model(CLASSES, F, L, B, LEVELS)
    return gp.trace_pass(model, batch_size=1, crop_size=CROP)


def test_forward_multiply_adds_by_type_sum_to_the_supernet_count(costs):
    forward = gp.multiply_adds_by_type(costs, backward=False)
    expected = model_stats.supernet_stats(CLASSES, F, L, B, LEVELS, (CROP, CROP))
    assert sum(forward.values()) == expected["multiply_adds"]
    assert set(forward) == {"Conv2D", "DepthwiseConv2dNative"}


def test_backward_counts_every_filter_gradient(costs):
    forward = gp.multiply_adds_by_type(costs, backward=False)
    backward = gp.multiply_adds_by_type(costs, backward=True)
    # Every kernel gets a gradient: as many products as its forward conv.
    assert backward["Conv2DBackpropFilter"] == forward["Conv2D"]
    assert backward["DepthwiseConv2dNativeBackpropFilter"] == forward["DepthwiseConv2dNative"]
    # The input gradient of all but the stem's first conv (the image needs none).
    assert 0.9 * forward["Conv2D"] < backward["Conv2DBackpropInput"] <= forward["Conv2D"]


def test_projection_scales_with_the_gpu(costs):
    gpu = gp.GpuAssumptions()
    kwargs = dict(epochs=40, arch_start_epoch=20, steps=743)
    for precision in gp.PRECISIONS:
        base = gp.project(costs, precision, gpu, **kwargs)
        fast = gp.project(costs, precision, gpu.scaled(2), **kwargs)
        for key in ("pass_s", "weight_only_step_s", "bilevel_step_s", "search_s"):
            assert fast[key] == pytest.approx(base[key] / 2, rel=1e-9)
    # A memory-bound class follows the bandwidth alone (no dispatch floor).
    no_floor = dataclasses.replace(gpu, dispatch_s=0.0)
    bn = gp.pass_seconds_by_class(costs, "fp32", no_floor)["batch norm"]
    faster_hbm = dataclasses.replace(no_floor, hbm_bytes_per_s=2 * gpu.hbm_bytes_per_s)
    assert gp.pass_seconds_by_class(costs, "fp32", faster_hbm)["batch norm"] == \
        pytest.approx(bn / 2, rel=1e-9)


def test_search_time_counts_weight_only_and_bilevel_epochs(costs):
    gpu = gp.GpuAssumptions()
    r = gp.project(costs, "fp32", gpu, epochs=40, arch_start_epoch=20, steps=743)
    assert r["search_s"] == pytest.approx(
        743 * (20 * r["weight_only_step_s"] + 20 * r["bilevel_step_s"]))
    assert r["bilevel_step_s"] > 2 * r["pass_s"] > r["weight_only_step_s"] > r["pass_s"]
    assert gp.steps_per_epoch(2975, 2) == 743  # trainA 1488, trainB 1487 images


def test_memory(costs):
    fp32, bf16 = gp.memory_bytes(costs, "fp32"), gp.memory_bytes(costs, "bf16")
    assert fp32["activations"] > 0 and costs.saved_tensors > 0
    assert bf16["activations"] < fp32["activations"]
    assert bf16["weights_gradients_momentum"] == fp32["weights_gradients_momentum"] == \
        (costs.params + costs.arch_params) * 4 * 3


def test_report_is_json_ready(costs):
    import json

    settings = dict(dataset="cityscapes", train_images=2975, num_classes=CLASSES,
                    filter_multiplier=F, num_layers=L, num_blocks=B, num_levels=LEVELS,
                    batch_size=1, crop_size=CROP, epochs=40, arch_start_epoch=20)
    result = gp.report(costs, settings)
    json.dumps(result)
    assert "fp32" in gp.format_report(result)


def test_levers_change_what_the_pass_keeps_and_computes(costs):
    """Recomputation keeps fewer activations (at this size the stem and heads, which are
    not recomputed, hold a large share: measured 64% of the plain pass's) and reruns the
    layers' forward in the backward; partial channels (K = 2) cut the mixed ops'
    multiply-adds."""
    recomputed = gp.trace_pass(gp.build_unrolled_model(CLASSES, F, L, B, LEVELS,
                                                       recompute_layers=True),
                               batch_size=1, crop_size=CROP)
    assert gp.memory_bytes(recomputed, "fp32")["activations"] < \
        0.8 * gp.memory_bytes(costs, "fp32")["activations"]
    forward = sum(gp.multiply_adds_by_type(costs, backward=False).values())
    backward = sum(gp.multiply_adds_by_type(costs, backward=True).values())
    assert sum(gp.multiply_adds_by_type(recomputed, backward=False).values()) == forward
    # The rerun layers: measured 37% of the forward here, the rest being stem and heads.
    assert backward + 0.2 * forward < \
        sum(gp.multiply_adds_by_type(recomputed, backward=True).values()) < backward + forward
    partial = gp.trace_pass(gp.build_unrolled_model(CLASSES, F, L, B, LEVELS,
                                                    partial_channels=2),
                            batch_size=1, crop_size=CROP)
    partial_forward = gp.multiply_adds_by_type(partial, backward=False)
    # Every depthwise conv is in a mixed op, and sees half the channels.
    assert 2 * partial_forward["DepthwiseConv2dNative"] == \
        gp.multiply_adds_by_type(costs, backward=False)["DepthwiseConv2dNative"]
    assert sum(partial_forward.values()) < 0.9 * forward
