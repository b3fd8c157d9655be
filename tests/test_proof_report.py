"""The addition report's arithmetic on hand-made results: means over the seeds a row has, and the goals' verdicts."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "proof"))

import addition_report as report  # noqa: E402

NAMES = ["a", "b"]
REF = {"a": {"probe_test": 0.80, "finetuned_test": 0.90}, "b": {"probe_test": 0.70, "finetuned_test": 0.80}}


def row(acc_a: float, acc_b: float) -> dict:
    """A table row as addition.table_rows makes it, from two test accuracies (gains over the probes: 0.1 and 0.1)."""
    kept = {"a": (acc_a - 0.80) / 0.1, "b": (acc_b - 0.70) / 0.1, "pooled": (acc_a - 0.80 + acc_b - 0.70) / 0.2}
    norm = {"a": acc_a / 0.90, "b": acc_b / 0.80}
    norm["mean"] = (norm["a"] + norm["b"]) / 2
    return {"test": {"a": acc_a, "b": acc_b}, "mean_test": (acc_a + acc_b) / 2, "gain_kept": kept, "normalized": norm}


def results() -> dict:
    seed0 = {"reference": REF, "rows": {"task_arithmetic λ = 1": row(0.89, 0.78), "ties tuned (TPE)": row(0.90, 0.79)}}
    seed1 = {"reference": REF, "rows": {"task_arithmetic λ = 1": row(0.87, 0.76)}}
    pre = {"gains": {"a": 0.1, "b": 0.1}, "mean_gain": 0.1, "min_mean_gain": 0.02, "passed": True, "failures": []}
    seeds = {"0": {**seed0, "preconditions": pre}, "1": {**seed1, "preconditions": pre}}
    strong = {"0": {"reference": REF, "preconditions": pre,
                    "rows": {"averaging": row(0.83, 0.71), "task_arithmetic tuned": row(0.86, 0.75)}}}
    return {"settings": {"splits": {n: {} for n in NAMES}},
            "regimes": {"probe-first": {"seeds": seeds}, "strong": {"seeds": strong}}}


def test_rows_average_over_the_seeds_that_have_them():
    rr = results()["regimes"]["probe-first"]
    lines = report.gain_table(rr, NAMES).splitlines()
    ta = next(line for line in lines if line.startswith("| task_arithmetic λ = 1 |"))
    # pooled kept: seed 0 (0.09 + 0.08) / 0.2 = 0.85, seed 1 (0.07 + 0.06) / 0.2 = 0.65 -> 0.750 ± 0.141
    assert "| 0,1 | **0.750 ± 0.141** |" in ta
    tuned = next(line for line in lines if line.startswith("| ties tuned (TPE) |"))
    assert "| 0 | **0.950** |" in tuned  # one seed: no spread
    assert report.pooled_mean(rr, "ties tuned (TPE)") == pytest.approx(0.95)


def test_goals_judge_the_best_row_of_each_kind():
    lines = report.goals(results())
    # probe-first data-free: task_arithmetic λ = 1 keeps 0.75 < 0.90; seed 1 has b at 0.76 > probe 0.70: none below
    assert lines[0].startswith("- probe-first, data-free keeps ≥ 90% of the gain: **missed** — best task_arithmetic")
    assert lines[0].endswith("below its probe: no task")
    # strong: averaging keeps (0.03 + 0.01) / 0.2 = 0.2 < 0.25; tuned keeps (0.06 + 0.05) / 0.2 = 0.55 >= 0.5
    assert "**missed**" in lines[1] and "0.200" in lines[1]
    assert lines[2].startswith("- strong, tuned keeps ≥ 50% of the gain: **met** — best task_arithmetic tuned, 0.550")


def test_a_task_below_its_probe_fails_the_probe_first_goal():
    res = results()
    res["regimes"]["probe-first"]["seeds"]["0"]["rows"]["task_arithmetic λ = 1"] = row(0.95, 0.69)  # kept 0.7 pooled
    assert report.below_probe(res["regimes"]["probe-first"], "task_arithmetic λ = 1") == ["b (seed 0)"]
    assert "below its probe: b (seed 0)" in report.goals(res)[0]


def test_kinds():
    assert report.kind("λ = 0 (base + fine-tuned heads)") == "baseline"
    assert report.kind("AdaMerging layer-wise") == "tuned"
    assert report.kind("dare_ties tuned (TPE, density + λ)") == "tuned"
    assert report.kind("ties (density 0.2, λ = 1)") == "data-free"


def test_subspace_goal_reads_data_free_rows_only():
    """Issue 15's goal is about the subspace methods at their data-free defaults: a tuned subspace row, even a better
    one, is not its evidence. Normalized means here: ties 0.95, tsv (0.875/0.9 + 0.95) / 2 = 0.961 (+1.1 points), tsv
    tuned 1.0."""
    pre = {"gains": {"a": 0.1, "b": 0.1}, "mean_gain": 0.1, "min_mean_gain": 0.02, "passed": True, "failures": []}
    rows = {"ties (density 0.2, λ = 1)": row(0.855, 0.76), "tsv (TSV-M, λ = 1)": row(0.875, 0.76),
            "tsv tuned (TPE, λ)": row(0.90, 0.80)}
    res = {"regimes": {"strong": {"seeds": {"0": {"reference": REF, "preconditions": pre, "rows": rows}}}}}
    (line,) = report.subspace_goal(res)
    assert "**missed** — tsv (TSV-M, λ = 1), +1.1 points" in line
