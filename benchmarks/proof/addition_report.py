"""The addition experiment's tables and its REPORT.md section, from the results addition.run returns.

Rows may exist for only some seeds (tuned rows are costly: run.py --tuned-rows picks which are computed); every table
says over how many seeds each row is averaged, and the goals are judged on what was measured.
"""

import json
import statistics
from pathlib import Path

GOALS = {  # regime -> (the rows it is judged on, the share of the gain they must keep)
    "probe-first": {"data-free": 0.90},
    "strong": {"data-free": 0.25, "tuned": 0.50},
}
BASELINES = ("fine-tuned (own task)", "probe heads (base encoder)", "λ = 0 (base + fine-tuned heads)")


def kind(row: str) -> str:
    """'baseline', 'tuned' (chosen on data: TPE or AdaMerging) or 'data-free'."""
    if row in BASELINES:
        return "baseline"
    return "tuned" if "tuned" in row or "AdaMerging" in row else "data-free"


def mean_sd(values: list, signed: bool = False) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return fmt.format(statistics.fmean(values)) + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def row_names(regime_result: dict) -> list[str]:
    """Every row of any seed, in the order the runs made them."""
    return list(dict.fromkeys(row for s in regime_result["seeds"].values() for row in s["rows"]))


def table(regime_result: dict, columns: list[tuple[str, callable]]) -> str:
    """One line per row: the seeds that have it, then each column's mean ± sd over those seeds (the first in bold)."""
    seeds = regime_result["seeds"]
    lines = ["| model | seeds | " + " | ".join(h for h, _ in columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for row in row_names(regime_result):
        have = {k: s["rows"][row] for k, s in seeds.items() if row in s["rows"]}
        cells = [mean_sd([get(r) for r in have.values()]) for _, get in columns]
        cells[0] = f"**{cells[0]}**"
        lines.append(f"| {row} | {','.join(have)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gain_table(regime_result: dict, names: list[str]) -> str:
    """Fine-tuning gain kept over the probe (pooled, then per task), mean ± sd over seeds."""
    return table(regime_result, [("gain kept (pooled)", lambda r: r["gain_kept"]["pooled"])]
                 + [(n, lambda r, n=n: r["gain_kept"][n]) for n in names])


def accuracy_table(regime_result: dict, names: list[str]) -> str:
    """Normalized accuracy (mean over tasks), then test accuracy per task, mean ± sd over seeds."""
    return table(regime_result, [("normalized", lambda r: r["normalized"]["mean"]),
                                 ("mean accuracy", lambda r: r["mean_test"])]
                 + [(n, lambda r, n=n: r["test"][n]) for n in names])


def preconditions_table(results: dict) -> str:
    names = list(results["settings"]["splits"])
    lines = ["| regime | seed | " + " | ".join(f"{n} gain (val)" for n in names) + " | mean gain (needs) | verdict |",
             "|---" * (len(names) + 4) + "|"]
    for regime, rr in results["regimes"].items():
        for seed, s in rr["seeds"].items():
            p = s["preconditions"]
            lines.append(f"| {regime} | {seed} | " + " | ".join(f"{p['gains'][n]:+.3f}" for n in names)
                         + f" | {p['mean_gain']:+.3f} (≥ {p['min_mean_gain']:+.2f}) | "
                         + ("passed" if p["passed"] else "**FAILED**: " + "; ".join(p["failures"])) + " |")
    return "\n".join(lines)


def failed_preconditions(results: dict) -> list[str]:
    return [f"{regime}, seed {seed}: {f}" for regime, rr in results["regimes"].items()
            for seed, s in rr["seeds"].items() for f in s["preconditions"]["failures"]]


def pooled_mean(regime_result: dict, row: str) -> float | None:
    values = [s["rows"][row]["gain_kept"]["pooled"] for s in regime_result["seeds"].values() if row in s["rows"]]
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def below_probe(regime_result: dict, row: str) -> list[str]:
    """'task (seed s)' wherever the row scores below the task's probe on test."""
    return [f"{n} (seed {k})" for k, s in regime_result["seeds"].items() if row in s["rows"]
            for n, acc in s["rows"][row]["test"].items() if acc < s["reference"][n]["probe_test"]]


def goals(results: dict) -> list[str]:
    """One line per goal of the issue: the best row of the kind it is judged on, its pooled gain kept (mean over the
    seeds it has), met or missed; probe-first also asks that no task fall below its probe."""
    lines = []
    for regime, targets in GOALS.items():
        rr = results["regimes"].get(regime)
        if rr is None:
            continue
        for which, target in targets.items():
            kept = {row: pooled_mean(rr, row) for row in row_names(rr) if kind(row) == which}
            kept = {row: v for row, v in kept.items() if v is not None}
            if not kept:
                lines.append(f"- {regime}, {which} keeps ≥ {target:.0%} of the gain: not measured")
                continue
            best = max(kept, key=kept.get)
            met = kept[best] >= target
            extra = ""
            if regime == "probe-first":
                below = below_probe(rr, best)
                met = met and not below
                extra = "; below its probe: " + (", ".join(below) if below else "no task")
            seeds = ",".join(k for k, sd in rr["seeds"].items() if best in sd["rows"])
            lines.append(f"- {regime}, {which} keeps ≥ {target:.0%} of the gain: **{'met' if met else 'missed'}** "
                         f"— best {best}, {kept[best]:.3f} (seeds {seeds}){extra}")
    return lines


SUBSPACE = ("tsv", "iso_c", "iso_cts", "consensus")  # issue 15: the data-free subspace methods against TIES
TIES_ROW = "ties (density 0.2, λ = 1)"


def normalized_mean(regime_result: dict, row: str) -> float | None:
    values = [s["rows"][row]["normalized"]["mean"] for s in regime_result["seeds"].values() if row in s["rows"]]
    return statistics.fmean(values) if values else None


def subspace_goal(results: dict) -> list[str]:
    """Issue 15's goal, per regime: the best data-free subspace row at least 2 points of normalized accuracy above
    TIES at its data-free default (mean over the seeds both have)."""
    lines = []
    for regime, rr in results["regimes"].items():
        rows = [r for r in row_names(rr) if r.split(" ")[0] in SUBSPACE and kind(r) == "data-free"]
        ties = normalized_mean(rr, TIES_ROW)
        if not rows or ties is None:
            continue
        best = max(rows, key=lambda r: normalized_mean(rr, r))
        diff = (normalized_mean(rr, best) - ties) * 100
        lines.append(f"- {regime}, best data-free subspace method ≥ 2 points normalized above TIES: "
                     f"**{'met' if diff >= 2 else 'missed'}** — {best}, {diff:+.1f} points over {TIES_ROW}")
    return lines


def short(name: str) -> str:
    """A searched value's name in a table cell: models[2].weight -> w2 (the third model's weight)."""
    return name.replace("models[", "w").replace("].weight", "") if name.endswith("].weight") else name


def tuned_table(regime_result: dict) -> str:
    """What each tuned row picked per seed, and what it cost."""
    lines = ["| model | seed | picked | tuning objective / entropy | s per candidate (median) | run s |",
             "|---|---|---|---|---|---|"]
    for k, s in regime_result["seeds"].items():
        for row, t in s.get("tuned", {}).items():
            d = t["details"]
            if "best" in d:
                picked = ", ".join(f"{short(name)} {v:.3g}" for name, v in d["best"].items())
                objective = f"{d['tuning_objective']:.3f}"
                per = d["candidate_seconds"].get("median")
                per = f"{per:.2f}" if per is not None else "n/a"
            else:
                coeffs = d.get("task_coefficients")
                picked = ("λ " + ", ".join(f"{c:.2f}" for c in coeffs)) if coeffs else "per tensor (best.adamerging.png)"
                objective = f"entropy {d['entropy_start']:.3f} → {d['entropy_end']:.3f}"
                per = "—"
            lines.append(f"| {row} | {k} | {picked} | {objective} | {per} | {t['seconds']:.0f} |")
    return "\n".join(lines)


def adamerging_notes(regime_result: dict, names: list[str]) -> list[str]:
    """Per AdaMerging row: the tasks it leaves below their probes, and how each task's prediction entropy moved
    (mean of the first and last steps, averaged over seeds) -- the objective is a sum over tasks, so it may buy
    confidence on one task with another's."""
    notes = []
    for row in row_names(regime_result):
        if "AdaMerging" not in row:
            continue
        below = below_probe(regime_result, row)
        runs = [s["tuned"][row]["entropy_per_task"] for s in regime_result["seeds"].values()
                if "entropy_per_task" in s.get("tuned", {}).get(row, {})]
        moved = ""
        if runs:
            moved = "; entropy first → last steps: " + ", ".join(
                f"{n} {statistics.fmean(r['first'][n] for r in runs):.3f} → "
                f"{statistics.fmean(r['last'][n] for r in runs):.3f}" for n in names if n in runs[0]["first"])
        notes.append(f"- {row}: " + ("below the probe on " + ", ".join(below) if below
                                      else "no task below its probe") + moved)
    return notes


def summary_table(results: dict) -> str:
    """Both regimes side by side (the README's table): per row, pooled gain kept and normalized accuracy, mean ± sd
    over the seeds it has."""
    regimes = results["regimes"]
    rows = list(dict.fromkeys(r for rr in regimes.values() for r in row_names(rr)))
    head = "| model | " + " | ".join(f"{g}: gain kept | {g}: normalized | {g}: seeds" for g in regimes) + " |"
    lines = [head, "|---" * (1 + 3 * len(regimes)) + "|"]
    for row in rows:
        cells = []
        for rr in regimes.values():
            have = [s["rows"][row] for s in rr["seeds"].values() if row in s["rows"]]
            seeds = ",".join(k for k, s in rr["seeds"].items() if row in s["rows"])
            cells += [mean_sd([r["gain_kept"]["pooled"] for r in have]), mean_sd([r["normalized"]["mean"] for r in have]),
                      seeds or "—"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_tables(results: dict, log=print) -> None:
    names = list(results["settings"]["splits"])
    for regime, rr in results["regimes"].items():
        log(f"\n{regime}: fine-tuning gain kept over the probe (test)\n")
        log(gain_table(rr, names))
        log(f"\n{regime}: normalized accuracy and test accuracy\n")
        log(accuracy_table(rr, names))
    log("\nPreconditions (validation):\n")
    log(preconditions_table(results))
    for f in failed_preconditions(results):
        log(f"!!! PRECONDITION FAILED — {f}")
    log("\nBoth regimes (pooled gain kept, normalized accuracy):\n")
    log(summary_table(results))
    log("\nGoals:\n")
    for line in goals(results) + subspace_goal(results):
        log(line)


def search_spaces(results: dict) -> str:
    """The search spaces and tuning-split size of the TPE rows these results hold, as tuned.py writes them."""
    from tuned import ROWS, TPE_TRIALS, TUNE_EXAMPLES, search_recipe

    present = {r for rr in results["regimes"].values() for s in rr["seeds"].values() for r in s["rows"]}
    parts = []
    for method in [what for row, (kind, what) in ROWS.items() if kind == "tpe" and row in present]:
        r = search_recipe(method, "base", ["model"])
        space = {**{"weight per model": r["models"][0]["parameters"]["weight"]}, **r.get("parameters", {})}
        parts.append(f"{method} ({TPE_TRIALS[method]} trials) " + json.dumps(space, ensure_ascii=False))
    return f"TPE tunes on {TUNE_EXAMPLES} stratified validation texts per task; search spaces: " + "; ".join(parts)


def tuned_settings(results: dict) -> str:
    """How the tuned rows were made, from the settings stored with them."""
    seen = {}
    for rr in results["regimes"].values():
        for s in rr["seeds"].values():
            for row, t in s.get("tuned", {}).items():
                seen.setdefault(row, {k: v for k, v in t["settings"].items() if k != "seed"})
    return "; ".join(f"{row}: {json.dumps(v, ensure_ascii=False)}" for row, v in seen.items())


def markdown(results: dict, out_dir: Path, title: str = "## Addition: one MiniLM encoder with all task vectors merged",
             ) -> str:
    if "regimes" not in results:
        return f"{title}\n\nResults predate the redesigned benchmark; re-run `run.py --parts addition`.\n"
    s = results["settings"]
    names = list(s["splits"])
    tr = s["training"]
    failed = failed_preconditions(results)
    parts = [title, ""]
    if failed:
        parts += ["> **PRECONDITIONS FAILED** — these fine-tunes gain less over their probes than the design asks, "
                  "so their rows test less than they should:", ">"]
        parts += [f"> - {f}" for f in failed] + [""]
    parts += [
        "Tasks (deduplicated, stratified splits; no text in two splits of a task): " + ", ".join(
            f"{n} ({len(s['classes'][n])} classes; train/val/test {c['train']}/{c['val']}/{c['test']})"
            for n, c in s["splits"].items()) + ".",
        "",
        f"Each task: a linear probe on frozen base features, and a fine-tune of encoder + head, {tr['steps']} steps "
        f"of {tr['batch']}, encoder lr {tr['lr_encoder']:g}, head lr {tr['lr_head']:g}, linear warm-up over "
        f"{tr['warmup']:.0%} of the steps then linear decay. Two regimes: "
        + "; ".join(f"**{r}** — {d}" for r, d in s["regimes"].items()) + ". "
        "Each task is scored with its own fine-tuned head on the merged encoder, once, on test, with "
        "`taskvec.evaluate` (the numbers `taskvec eval` prints for the same tasks file). Data-free merges at stated "
        "defaults, made with `taskvec.merge_recipe`: " + "; ".join(
            f"{row} = {m} {json.dumps(c)}" for row, (m, c) in s["data_free"].items()) + ".",
        "",
        "Tuned rows, run through the command line (`taskvec tune`) on the tasks file of each regime and seed, tuning on "
        "a stratified part of the validation split (benchmarks/proof/tuned.py) and scoring their pick once on test: "
        + (tuned_settings(results) or "none in this run") + ". " + search_spaces(results) + ".",
        "",
        "**Fine-tuning gain kept** over the probe, pooled: Σ(merged − probe) ÷ Σ(fine-tuned − probe) — 1 keeps "
        "everything fine-tuning added beyond a head on the frozen base, 0 nothing, below 0 is worse than the probe. "
        "Per task the same ratio (noisy where a task's gain is small). `seeds`: the seeds a row was computed for.",
        "",
        "Preconditions (validation): every fine-tune beats its probe; mean gain ≥ "
        + ", ".join(f"{v:+.2f} ({r})" for r, v in s["min_gain"].items()) + ".",
        "", preconditions_table(results), "",
        "Goals (pooled gain kept, mean over the seeds measured):", ""] + goals(results) + subspace_goal(results) + [""]
    for regime, rr in results["regimes"].items():
        seeds = ", ".join(rr["seeds"])
        gains = {n: [sd["reference"][n]["finetuned_test"] - sd["reference"][n]["probe_test"]
                     for sd in rr["seeds"].values()] for n in names}
        parts += [f"### {regime} (seeds {seeds})", "",
                  "Fine-tuning gain over the probe on test (the denominator): "
                  + ", ".join(f"{n} {mean_sd(g, signed=True)}" for n, g in gains.items()) + ".", "",
                  "Fine-tuning gain kept (test):", "", gain_table(rr, names), "",
                  "Normalized accuracy (merged ÷ fine-tuned, mean over tasks) and test accuracy:", "",
                  accuracy_table(rr, names), ""]
        if any(sd.get("tuned") for sd in rr["seeds"].values()):
            parts += ["What the tuned rows picked (TPE: the best values on the tuning split; AdaMerging: the learned "
                      "coefficients and the mean prediction entropy on the unlabeled tuning texts, first → last "
                      "step):", "", tuned_table(rr), ""]
            notes = adamerging_notes(rr, names)
            if notes:
                parts += ["AdaMerging against the probe (test):", ""] + notes + [""]
        checks = [sd["cli_check"] for sd in rr["seeds"].values() if "cli_check" in sd]
        if checks:
            c = checks[0]
            per = [v for k, v in c.items() if k != "agree"]
            parts += [f"`taskvec eval <fine-tune> --tasks tasks.yaml` reproduces every fine-tune's own-task test "
                      f"accuracy: {'yes' if c['agree'] else '**NO**'} (largest |difference| "
                      f"{max(v['abs_diff'] for v in per):.1e}; {statistics.fmean(v['seconds'] for v in per):.0f} s "
                      f"per call for {per[0]['examples']} test examples).", ""]
    return "\n".join(parts)
