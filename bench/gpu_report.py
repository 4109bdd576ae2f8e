"""Assembles bench/gpu_check.sh's report: OUT_DIR/gpu_check.json.

  python -m bench.gpu_report OUT_DIR

Reads each part's files in OUT_DIR/parts (NAME.status: ok, failed or timeout;
NAME.out: its output, whose last line is the bench's JSON), adds the projected 40-epoch
search time computed from the fp32 search step, and writes one JSON report.
"""

from __future__ import annotations

import json
import os
import sys

from auto_deeplab_tf import search as search_lib

# Cityscapes train_fine, split into two halves (trainA for w, trainB for alpha/beta); an
# epoch runs until the smaller half runs out (datasets/input_pipeline.search_steps_per_epoch).
CITYSCAPES_TRAIN_IMAGES = 2975
PARTS = ("search_fp32", "search_mixed", "retrain")


def project_search(bilevel_step_s: float, batch_size: int = 2) -> dict:
    """The projected time of the paper's search from one measured bilevel step."""
    defaults = search_lib.SearchConfig(model_dir="/unused")
    half = CITYSCAPES_TRAIN_IMAGES // 2
    steps = half // batch_size
    weight_only_epochs = min(defaults.arch_start_epoch, defaults.epochs)
    bilevel_epochs = defaults.epochs - weight_only_epochs
    # A weight-only step is the trainA half of a bilevel step (one forward+backward instead
    # of two), so it is taken as half the bilevel step; the benchmark times only the latter.
    weight_only_step_s = bilevel_step_s / 2
    seconds = steps * (weight_only_epochs * weight_only_step_s + bilevel_epochs * bilevel_step_s)
    return {
        "status": "ok",
        "hours": round(seconds / 3600, 3),
        "epochs": defaults.epochs,
        "weight_only_epochs": weight_only_epochs,
        "bilevel_epochs": bilevel_epochs,
        "steps_per_epoch": steps,
        "bilevel_step_s": bilevel_step_s,
        "weight_only_step_s": weight_only_step_s,
        "assumptions": [
            f"Cityscapes train ({CITYSCAPES_TRAIN_IMAGES} images) split into halves of "
            f"{half} and {CITYSCAPES_TRAIN_IMAGES - half}; an epoch is the smaller half at "
            f"batch {batch_size}: {steps} steps",
            f"search defaults (auto_deeplab_tf/search.py): {defaults.epochs} epochs, "
            f"alpha/beta updated from epoch {defaults.arch_start_epoch}",
            "the bilevel step is the fp32 search step measured above, at its crop and sizes",
            "a weight-only step (before arch_start_epoch) takes half a bilevel step (one of "
            "its two forward+backward passes); not measured",
            "input pipeline, checkpoints, per-epoch decoding and logging cost nothing "
            "(they overlap the step or are small)",
        ],
    }


def _read_part(parts_dir: str, name: str) -> dict:
    def read(suffix):
        path = os.path.join(parts_dir, f"{name}.{suffix}")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return f.read()

    status = (read("status") or "failed").strip()
    output = read("out") or ""
    part = {"status": status, "command": (read("cmd") or "").strip(), "output": output[-4000:]}
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if status == "ok":
        try:
            part["result"] = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            part["status"] = "failed"
            part["error"] = "the bench printed no JSON line"
    return part


def build_report(out_dir: str, smoke: bool) -> dict:
    """The report of the parts in OUT_DIR/parts (see the module docstring)."""
    parts_dir = os.path.join(out_dir, "parts")
    parts = {name: _read_part(parts_dir, name) for name in PARTS}
    fp32 = parts["search_fp32"]
    if fp32["status"] == "ok":
        parts["projected_search"] = project_search(fp32["result"]["median_step_s"],
                                                   fp32["result"]["batch_size"])
    else:
        parts["projected_search"] = {"status": "failed",
                                     "error": "needs the fp32 search step (search_fp32)"}
    return {"smoke": smoke, "parts": parts}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python -m bench.gpu_report OUT_DIR [--smoke]", file=sys.stderr)
        return 2
    out_dir = argv[1]
    report = build_report(out_dir, smoke=argv[2:] == ["--smoke"])
    path = os.path.join(out_dir, "gpu_check.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
