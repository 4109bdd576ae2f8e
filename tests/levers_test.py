"""bench.levers: its table divides each lever by the baseline of the same crop, and its
JSON lines file is read back so that a benchmark resumes."""

import json

from bench import levers


def _row(crop, lever, step, rss):
    return {"crop_size": crop, "lever": lever, "median_step_s": step,
            "trace_and_first_step_s": 100.0, "peak_rss_gb": rss}


def test_ratios_are_to_the_baseline_of_the_same_crop_and_resume_reads_the_file(tmp_path):
    path = tmp_path / "levers.jsonl"
    rows = [_row(64, "baseline", 4.0, 3.0), _row(64, "bf16", 2.0, 3.3),
            _row(321, "baseline", 20.0, 10.0), dict(_row(321, "bf16", 5.0, 5.0), trace_s=31.6),
            {"crop_size": 321, "lever": "recompute", "error": "timeout after 9 s"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = levers._load(str(path))
    assert sorted(loaded) == ["321:baseline", "321:bf16", "321:recompute", "64:baseline",
                              "64:bf16"]
    lines = levers.table(loaded, [64, 321], ["baseline", "bf16", "recompute"]).splitlines()
    assert lines[3] == "| 64 | bf16 | 2.00 s | 0.50x | 100 s | 3.30 GB | 1.10x |"
    assert lines[5] == "| 321 | bf16 | 5.00 s | 0.25x | 100 s (trace 32 s) | 5.00 GB | 0.50x |"
    assert lines[6] == "| 321 | recompute | timeout after 9 s | | | | |"
