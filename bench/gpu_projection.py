"""Projection: the search step's FLOPs by op type, its time on an H100-class GPU, the paper's
40-epoch search time and the step's activation memory. Nothing is executed: the supernet's
forward + backward pass is traced at the given size and its ops are costed from their
static shapes, so this runs on any machine (tracing at 321x321 costs what it costs at 32).

  python -m bench.gpu_projection [--crop_size=321 --batch_size=2 --filter_multiplier=8
      --num_layers=12 --num_classes=19] [--partial_channels=K] [--recompute_layers]
      [--output=projection.json]

Method (every assumption is a named constant in `GpuAssumptions` or below):

* One pass = the supernet's forward + backward on one batch, as
  `SearchModel._loss_and_gradients_eager` runs it (logits, masked cross-entropy, the
  gradients of every trainable variable), traced unrolled (`loop_uniform_layers=False`,
  the same weights and ops as the loop, which would be counted once per graph instead of
  once per layer). Ops created before `tape.gradient` are the forward, the rest the
  backward; the backward is counted op by op, not approximated.
* FLOPs = 2 x multiply-adds of the convolutions and their gradient ops
  (`auto_deeplab_tf.flops`); other ops count bytes only.
* Bytes moved by an op = the sizes of its inputs and outputs (static shapes), i.e. every op
  reads its inputs from and writes its outputs to HBM once: no fusion, no cache reuse
  (H100's 50 MB L2 would hold many of this step's small tensors, so this is pessimistic
  for the memory-bound ops).
* An op's GPU time = max(FLOPs / attainable FLOP rate of its class, bytes / attainable
  bandwidth, the host's dispatch cost per kernel): a roofline per op, the ops run one after
  another on one stream, and the host cannot launch kernels faster than its dispatch cost.
  Ops that launch no kernel (views, constants, variable reads, int32 shape arithmetic,
  which TF keeps in host memory) cost nothing.
* A bilevel step = 2 passes (trainA for w; trainB for alpha/beta, which also computes the
  weight gradients, as the code does) + both optimizer updates; a weight-only step =
  1 pass + the weight update. The search = weight-only steps for `arch_start_epoch` epochs,
  bilevel steps after; steps per epoch = (the smaller half of the train split) // batch.
* Precision "fp32": convolutions on TF32 tensor cores (TF's default on Ampere and later),
  float32 tensors. "bf16": Keras mixed_bfloat16, convolutions at the bf16 tensor-core rate,
  activations (every float tensor an op reads or writes) half the bytes; the optimizer
  state stays float32.
* Activation memory = the tensors the forward pass keeps for the backward: forward op
  outputs that some backward op reads, counted once per buffer (views such as Reshape or
  Identity share their input's buffer), without constants, variables and the input batch.
  That is the live set when the backward starts, a lower bound on the peak (the backward
  adds its own gradients and workspaces while freeing these); it excludes the runtime's
  fixed cost (CUDA context, cuDNN workspaces). GPU memory at that batch = activations +
  weights, their gradients and the optimizer's slots.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

from absl import app
from absl import flags

from bench import op_classes

# ---------------------------------------------------------------------------------------------
# Assumptions.


@dataclasses.dataclass(frozen=True)
class GpuAssumptions:
    """Attainable throughputs of one H100-class GPU, by op class."""

    name: str = "NVIDIA H100 SXM5 80GB"
    # HBM3 bandwidth, H100 SXM5 datasheet.
    hbm_bytes_per_s: float = 3.35e12
    # Fraction of it a streaming kernel (elementwise, BN, copies) attains: large copies
    # reach 80-90% on H100; the supernet's tensors are small (10 kB to a few MB), so less.
    memory_efficiency: float = 0.7
    # Dense tensor-core peaks, datasheet (the 989 / 1979 TFLOPS figures are with 2:4
    # sparsity, which TF does not use).
    tf32_flops_per_s: float = 494.7e12
    bf16_flops_per_s: float = 989.4e12
    # CUDA-core FP32 peak, datasheet: what depthwise convs run on (no tensor cores).
    fp32_flops_per_s: float = 66.9e12
    # Fraction of the tensor-core peak cuDNN attains on the supernet's dense convs: ResNet-50
    # convs reach 50-70%; these have 8F..64F channels (64..512 at F=8) and small maps, so
    # about half of that (an estimate, not a measurement).
    conv_efficiency: float = 0.35
    # Grouped 1x1 convs (one group per edge and kernel size, F..8F channels per group): cuDNN
    # runs narrow groups far below peak (an estimate).
    grouped_conv_efficiency: float = 0.10
    # Dilated convs: cuDNN's implicit-GEMM kernels for dilation > 1 are slower than the
    # undilated ones (an estimate).
    dilated_conv_efficiency: float = 0.25
    # Depthwise convs on CUDA cores: the fraction of the FP32 peak (they are memory-bound at
    # these sizes, so this rarely decides).
    depthwise_efficiency: float = 0.5
    # Host cost of dispatching one GPU kernel through TF's graph executor (a few
    # microseconds per op; an estimate): the floor of every op's time.
    dispatch_s: float = 5e-6

    def scaled(self, factor: float) -> "GpuAssumptions":
        """A GPU `factor` times as fast in every respect (throughputs up, dispatch down)."""
        return dataclasses.replace(
            self, hbm_bytes_per_s=self.hbm_bytes_per_s * factor,
            tf32_flops_per_s=self.tf32_flops_per_s * factor,
            bf16_flops_per_s=self.bf16_flops_per_s * factor,
            fp32_flops_per_s=self.fp32_flops_per_s * factor,
            dispatch_s=self.dispatch_s / factor)


PRECISIONS = ("fp32", "bf16")
# Bytes per element of a float tensor under each precision policy (activations; bf16
# mixed precision keeps float32 variables and optimizer state).
ACTIVATION_BYTES = {"fp32": 4, "bf16": 2}
PARAM_BYTES = 4
# Kernels per variable of an optimizer update (Keras: decay add, momentum update, apply).
UPDATE_KERNELS_PER_VARIABLE = 3
# Float32 tensors per parameter an SGD-with-momentum update reads or writes: read w,
# gradient, momentum; write momentum, w.
SGD_UPDATE_TENSORS = 5
# Adam: read w, gradient, m, v; write m, v, w.
ADAM_UPDATE_TENSORS = 7
# Resident per parameter: the weight, its gradient and SGD's momentum (float32).
WEIGHT_STATE_TENSORS = 3

# Ops that launch no GPU kernel: views, constants, variable reads (TF reads a GPU variable
# without a copy) and graph plumbing.
_NO_KERNEL = {"Const", "Identity", "IdentityN", "Reshape", "ExpandDims", "Squeeze",
              "Placeholder", "ReadVariableOp", "NoOp", "Shape", "ShapeN", "Size", "Rank",
              "StopGradient", "PreventGradient", "Snapshot", "VarHandleOp",
              "BroadcastGradientArgs", "ConcatOffset"}
# Ops whose output is a view of one of their inputs (same buffer).
_VIEW = {"Identity", "IdentityN", "Reshape", "ExpandDims", "Squeeze", "Snapshot",
         "StopGradient", "PreventGradient"}
_NOT_ACTIVATIONS = {"Const", "ReadVariableOp", "Placeholder", "VarHandleOp"}

# Defined when the command runs, not on import: the tests import this module beside others
# that define flags of the same names (bench.search_step, train.predict).
_FLAGS: dict[str, flags.FlagHolder] = {}


def _define_flags() -> dict[str, flags.FlagHolder]:
    holders = [
        flags.DEFINE_integer("filter_multiplier", None, "F (default: train.search's)."),
        flags.DEFINE_integer("num_layers", None, "L (default: train.search's)."),
        flags.DEFINE_integer("num_blocks", None, "B (default: train.search's)."),
        flags.DEFINE_integer("num_levels", None, "Levels (default: train.search's)."),
        flags.DEFINE_integer("batch_size", None, "Batch of each of trainA, trainB "
                             "(default: train.search's)."),
        flags.DEFINE_integer("crop_size", None, "Square crop (default: train.search's)."),
        flags.DEFINE_integer("epochs", None, "Search epochs (default: train.search's)."),
        flags.DEFINE_integer("arch_start_epoch", None, "First bilevel epoch (default: "
                             "train.search's)."),
        flags.DEFINE_string("dataset", "cityscapes", "Its train split's official size and "
                            "class count are used."),
        flags.DEFINE_integer("num_classes", None, "Classes (default: the dataset's)."),
        flags.DEFINE_integer("partial_channels", 1, "As train.search's flag (PC-DARTS)."),
        flags.DEFINE_bool("recompute_layers", False, "As train.search's flag: the layers' "
                          "activations are not kept for the backward, which reruns them "
                          "(their FLOPs are counted in the backward)."),
        flags.DEFINE_string("output", None, "Write the projection as JSON here."),
    ]
    return {holder.name: holder for holder in holders}


# ---------------------------------------------------------------------------------------------
# Costs of the traced pass.


@dataclasses.dataclass
class OpCost:
    """One op of the traced pass."""

    op_type: str
    op_class: str
    multiply_adds: int
    float_bytes: int  # bytes of float tensors read and written, at float32
    other_bytes: int  # the rest (int32 labels, indices), whatever the precision
    backward: bool
    kernel: bool  # launches a GPU kernel
    grouped: bool


@dataclasses.dataclass
class PassCosts:
    """The ops of one forward + backward pass and what it keeps for the backward."""

    ops: list[OpCost]
    saved_float_bytes: int  # activation memory (see the module doc), at float32
    saved_other_bytes: int
    saved_tensors: int
    params: int
    weight_variables: int
    arch_params: int


def _tensor_bytes(tensor) -> tuple[int, bool] | None:
    """(bytes, is float) of a tensor with a static shape; None for resources, variants and
    unknown shapes."""
    import numpy as np
    import tensorflow as tf

    dtype = tensor.dtype
    if dtype in (tf.resource, tf.variant) or not tensor.shape.is_fully_defined():
        return None
    return int(np.prod(tensor.shape.as_list())) * dtype.size, dtype.is_floating


def _buffer(tensor):
    """The tensor whose buffer `tensor` is a view of (itself unless made by a view op)."""
    while tensor.op.type in _VIEW:
        index = tensor.value_index if tensor.op.type == "IdentityN" else 0
        tensor = tensor.op.inputs[index]
    return tensor


def trace_pass(model, batch_size: int, crop_size: int) -> PassCosts:
    """Traces one forward + backward pass of the search model (built with
    `loop_uniform_layers=False`) on a batch of that size, and costs its ops."""
    import tensorflow as tf

    from auto_deeplab_tf import flops
    from auto_deeplab_tf import losses
    from auto_deeplab_tf.model_stats import count_params

    marks = {}

    # Mirrors SearchModel._loss_and_gradients_eager, with the forward/backward split marked.
    @tf.function
    def forward_backward(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = losses.masked_cross_entropy(
                labels, logits, model.ignore_label,
                losses.count_valid(labels, model.ignore_label))
        marks["forward_ops"] = len(tf.compat.v1.get_default_graph().get_operations())
        return loss, tape.gradient(loss, model.trainable_variables)

    concrete = forward_backward.get_concrete_function(
        tf.TensorSpec([batch_size, crop_size, crop_size, 3], tf.float32),
        tf.TensorSpec([batch_size, crop_size, crop_size], tf.int32))
    graph = concrete.graph
    if len(list(flops.nested_graphs(graph))) != 1 or any(
            op.type in ("While", "StatelessWhile", "PartitionedCall", "StatefulPartitionedCall")
            for op in graph.get_operations()):
        raise ValueError("expected one flat graph: build the model with "
                         "loop_uniform_layers=False")
    operations = graph.get_operations()
    forward_ops = marks["forward_ops"]
    ops = []
    for index, op in enumerate(operations):
        float_bytes = other_bytes = 0
        produces_float = False
        for tensor in list(op.inputs) + list(op.outputs):
            size = _tensor_bytes(tensor)
            if size is None:
                continue
            if size[1]:
                float_bytes += size[0]
            else:
                other_bytes += size[0]
        for tensor in op.outputs:
            size = _tensor_bytes(tensor)
            produces_float = produces_float or bool(size and size[1] and size[0])
        ops.append(OpCost(
            op_type=op.type,
            op_class=op_classes.op_class(op.type, dilated=op_classes.is_dilated(op)),
            multiply_adds=flops.op_multiply_adds(op), float_bytes=float_bytes,
            other_bytes=other_bytes, backward=index >= forward_ops,
            kernel=op.type not in _NO_KERNEL and produces_float,
            grouped=op_classes.is_grouped(op)))

    forward = set(operations[:forward_ops])
    saved = {}
    for op in operations[forward_ops:]:
        for tensor in op.inputs:
            root = _buffer(tensor)
            if root.op in forward and root.op.type not in _NOT_ACTIVATIONS:
                saved[root.ref()] = root
    saved_float = saved_other = 0
    for tensor in saved.values():
        size = _tensor_bytes(tensor)
        if size is None:
            continue
        if size[1]:
            saved_float += size[0]
        else:
            saved_other += size[0]
    return PassCosts(ops=ops, saved_float_bytes=saved_float, saved_other_bytes=saved_other,
                     saved_tensors=len(saved), params=count_params(model.weight_variables),
                     weight_variables=len(model.weight_variables),
                     arch_params=count_params(model.arch_variables))


def multiply_adds_by_type(costs: PassCosts, backward: bool) -> dict[str, int]:
    """Multiply-adds of the forward (or backward) ops, by op type, largest first."""
    totals: dict[str, int] = {}
    for op in costs.ops:
        if op.backward == backward and op.multiply_adds:
            totals[op.op_type] = totals.get(op.op_type, 0) + op.multiply_adds
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------------------------------
# Projection.


def _flop_rate(op: OpCost, precision: str, gpu: GpuAssumptions) -> float:
    tensor_cores = gpu.bf16_flops_per_s if precision == "bf16" else gpu.tf32_flops_per_s
    if op.op_class == op_classes.DEPTHWISE:
        return gpu.fp32_flops_per_s * gpu.depthwise_efficiency
    if op.op_class == op_classes.DILATED:
        return tensor_cores * gpu.dilated_conv_efficiency
    if op.grouped:
        return tensor_cores * gpu.grouped_conv_efficiency
    return tensor_cores * gpu.conv_efficiency


def op_seconds(op: OpCost, precision: str, gpu: GpuAssumptions) -> float:
    """One op's projected GPU time: its roofline, floored at the dispatch cost."""
    if not op.kernel:
        return 0.0
    scale = ACTIVATION_BYTES[precision] / 4
    memory = (op.float_bytes * scale + op.other_bytes) / (gpu.hbm_bytes_per_s
                                                          * gpu.memory_efficiency)
    compute = 2 * op.multiply_adds / _flop_rate(op, precision, gpu) if op.multiply_adds else 0.0
    return max(compute, memory, gpu.dispatch_s)


def pass_seconds_by_class(costs: PassCosts, precision: str,
                          gpu: GpuAssumptions) -> dict[str, float]:
    """Projected GPU seconds of one pass, by op class (classes with no kernels left out)."""
    totals: dict[str, float] = {}
    for op in costs.ops:
        t = op_seconds(op, precision, gpu)
        if t:
            totals[op.op_class] = totals.get(op.op_class, 0.0) + t
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def update_seconds(params: int, variables: int, tensors: int, gpu: GpuAssumptions) -> float:
    """Projected GPU seconds of an optimizer update over `params` parameters in `variables`
    variables: streaming `tensors` float32 tensors of that size, or the kernels' dispatch
    cost, whichever is larger."""
    memory = params * PARAM_BYTES * tensors / (gpu.hbm_bytes_per_s * gpu.memory_efficiency)
    return max(memory, variables * UPDATE_KERNELS_PER_VARIABLE * gpu.dispatch_s)


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """Search steps per epoch: the smaller half of the train split (trainA gets the odd
    image, `input_pipeline.search_split`) in whole batches."""
    return (train_images // 2) // batch_size


def project(costs: PassCosts, precision: str, gpu: GpuAssumptions, *, epochs: int,
            arch_start_epoch: int, steps: int) -> dict[str, Any]:
    """Projected pass, step and search times (seconds; the search also in hours)."""
    by_class = pass_seconds_by_class(costs, precision, gpu)
    one_pass = sum(by_class.values())
    weight_update = update_seconds(costs.params, costs.weight_variables, SGD_UPDATE_TENSORS,
                                   gpu)
    # alpha and beta: two variables, Adam.
    arch_update = update_seconds(costs.arch_params, 2, ADAM_UPDATE_TENSORS, gpu)
    weight_only_step = one_pass + weight_update
    bilevel_step = 2 * one_pass + weight_update + arch_update
    weight_epochs = min(arch_start_epoch, epochs)
    search = steps * (weight_epochs * weight_only_step
                      + (epochs - weight_epochs) * bilevel_step)
    return {"pass_s_by_class": by_class, "pass_s": one_pass,
            "weight_only_step_s": weight_only_step, "bilevel_step_s": bilevel_step,
            "search_s": search, "search_h": search / 3600}


def memory_bytes(costs: PassCosts, precision: str) -> dict[str, int]:
    """Activation memory (kept for the backward) and weight state of one pass, in bytes."""
    activations = costs.saved_float_bytes * ACTIVATION_BYTES[precision] // 4 \
        + costs.saved_other_bytes
    weights = (costs.params + costs.arch_params) * PARAM_BYTES * WEIGHT_STATE_TENSORS
    return {"activations": activations, "weights_gradients_momentum": weights,
            "total": activations + weights}


# ---------------------------------------------------------------------------------------------
# The command.


def _settings() -> dict[str, Any]:
    from auto_deeplab_tf import search as search_lib
    from auto_deeplab_datasets import registry

    defaults = search_lib.SearchConfig(model_dir="/unused")
    descriptor = registry.get(_FLAGS["dataset"].value)

    def pick(flag, default):
        return default if flag.value is None else flag.value

    return {
        "dataset": descriptor.name,
        "train_images": descriptor.splits[descriptor.train_split],
        "num_classes": pick(_FLAGS["num_classes"], descriptor.num_classes),
        "filter_multiplier": pick(_FLAGS["filter_multiplier"], defaults.filter_multiplier),
        "num_layers": pick(_FLAGS["num_layers"], defaults.num_layers),
        "num_blocks": pick(_FLAGS["num_blocks"], defaults.num_blocks),
        "num_levels": pick(_FLAGS["num_levels"], defaults.num_levels),
        "batch_size": pick(_FLAGS["batch_size"], defaults.batch_size),
        "crop_size": pick(_FLAGS["crop_size"], defaults.crop_size),
        "epochs": pick(_FLAGS["epochs"], defaults.epochs),
        "arch_start_epoch": pick(_FLAGS["arch_start_epoch"], defaults.arch_start_epoch),
        "partial_channels": _FLAGS["partial_channels"].value,
        "recompute_layers": _FLAGS["recompute_layers"].value,
    }


def build_unrolled_model(num_classes: int, filter_multiplier: int, num_layers: int,
                         num_blocks: int, num_levels: int, partial_channels: int = 1,
                         recompute_layers: bool = False):
    """The search model with its loop unrolled, weights built (no optimizers needed)."""
    from auto_deeplab_tf.search_model import SearchModel

    model = SearchModel(num_classes=num_classes, filter_multiplier=filter_multiplier,
                        num_blocks=num_blocks, num_layers=num_layers, num_levels=num_levels,
                        loop_uniform_layers=False, partial_channels=partial_channels,
                        recompute_layers=recompute_layers, name="supernet")
    model.build((None, None, None, 3))
    return model


def report(costs: PassCosts, settings: dict[str, Any],
           gpu: GpuAssumptions = GpuAssumptions()) -> dict[str, Any]:
    """The JSON report: FLOPs by type and class, projections per precision, memory."""
    forward = multiply_adds_by_type(costs, backward=False)
    backward = multiply_adds_by_type(costs, backward=True)
    by_class: dict[str, dict[str, int]] = {}
    for op in costs.ops:
        row = by_class.setdefault(op.op_class, {"multiply_adds": 0, "float_bytes_fp32": 0,
                                                "kernels": 0})
        row["multiply_adds"] += op.multiply_adds
        row["float_bytes_fp32"] += op.float_bytes
        row["kernels"] += int(op.kernel)
    steps = steps_per_epoch(settings["train_images"], settings["batch_size"])
    return {
        "settings": settings,
        "steps_per_epoch": steps,
        "gpu": dataclasses.asdict(gpu),
        "pass": {
            "forward_multiply_adds": sum(forward.values()),
            "backward_multiply_adds": sum(backward.values()),
            "forward_multiply_adds_by_type": forward,
            "backward_multiply_adds_by_type": backward,
            "by_class": by_class,
            "kernels": sum(int(op.kernel) for op in costs.ops),
            "graph_ops": len(costs.ops),
            "saved_tensors": costs.saved_tensors,
        },
        "params": costs.params, "arch_params": costs.arch_params,
        "projection": {p: project(costs, p, gpu, epochs=settings["epochs"],
                                  arch_start_epoch=settings["arch_start_epoch"], steps=steps)
                       for p in PRECISIONS},
        "memory_bytes": {p: memory_bytes(costs, p) for p in PRECISIONS},
    }


def format_report(result: dict[str, Any]) -> str:
    """The report's tables as text."""
    s = result["settings"]
    p = result["pass"]
    lines = [f"one pass (forward + backward), F={s['filter_multiplier']} L={s['num_layers']} "
             f"batch {s['batch_size']} crop {s['crop_size']}: "
             f"{p['forward_multiply_adds'] / 1e9:.2f} G multiply-adds forward, "
             f"{p['backward_multiply_adds'] / 1e9:.2f} G backward, {p['kernels']} GPU kernels",
             "", f"{'op type':<38} {'fwd GMAdd':>10} {'bwd GMAdd':>10}"]
    for op_type in sorted(set(p["forward_multiply_adds_by_type"])
                          | set(p["backward_multiply_adds_by_type"])):
        lines.append(f"{op_type:<38} "
                     f"{p['forward_multiply_adds_by_type'].get(op_type, 0) / 1e9:>10.3f} "
                     f"{p['backward_multiply_adds_by_type'].get(op_type, 0) / 1e9:>10.3f}")
    lines += ["", f"{'class':<24} {'GMAdd':>9} {'MB fp32':>9} {'kernels':>8} "
              + " ".join(f"{'ms ' + q:>9}" for q in PRECISIONS)]
    for cls, row in sorted(p["by_class"].items(), key=lambda kv: -kv[1]["multiply_adds"]):
        times = " ".join(
            f"{1e3 * result['projection'][q]['pass_s_by_class'].get(cls, 0.0):>9.2f}"
            for q in PRECISIONS)
        lines.append(f"{cls:<24} {row['multiply_adds'] / 1e9:>9.3f} "
                     f"{row['float_bytes_fp32'] / 1e6:>9.1f} {row['kernels']:>8d} {times}")
    lines.append("")
    for q in PRECISIONS:
        r = result["projection"][q]
        m = result["memory_bytes"][q]
        lines.append(f"{result['gpu']['name']}, {q}: pass {1e3 * r['pass_s']:.1f} ms, "
                     f"weight-only step {1e3 * r['weight_only_step_s']:.1f} ms, bilevel step "
                     f"{1e3 * r['bilevel_step_s']:.1f} ms; {s['epochs']} epochs "
                     f"({s['arch_start_epoch']} weight-only) x {result['steps_per_epoch']} "
                     f"steps: {r['search_h']:.2f} h; activations {m['activations'] / 2**30:.2f}"
                     f" GiB + weights {m['weights_gradients_momentum'] / 2**30:.3f} GiB")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    del argv
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # tracing only; no device needed
    settings = _settings()
    model = build_unrolled_model(settings["num_classes"], settings["filter_multiplier"],
                                 settings["num_layers"], settings["num_blocks"],
                                 settings["num_levels"], settings["partial_channels"],
                                 settings["recompute_layers"])
    costs = trace_pass(model, settings["batch_size"], settings["crop_size"])
    result = report(costs, settings)
    print(format_report(result))
    output = _FLAGS["output"].value
    if output:
        with open(output, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {output}")


if __name__ == "__main__":
    _FLAGS.update(_define_flags())
    app.run(main)
