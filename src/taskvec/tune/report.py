"""What ``taskvec tune`` leaves behind: the best recipe (a plain recipe ``taskvec merge`` runs unchanged), the trace
of every trial (JSON and CSV) and a plot (score per trial with the best so far; score against each parameter)."""

from __future__ import annotations

import csv
import io
import json
import platform
from pathlib import Path

import yaml

from ..text_files import write_atomic


def write_outputs(result, search, tasks_file: Path, out: Path, options, study_file: Path, seconds: float
                  ) -> dict[str, Path]:
    stem = out.with_name(out.stem)
    files = {"recipe": out, "trace_json": Path(f"{stem}.trace.json"), "trace_csv": Path(f"{stem}.trace.csv"),
             "plot": Path(f"{stem}.trace.png"), "study": study_file}
    held = result.held_out["summary"]
    header = (f"# taskvec tune: best of {len(result.trials)} trials ({options.search}, seed {options.seed}) from "
              f"{search.path.name} on {tasks_file.name}\n"
              f"# {result.objective_name} {result.objective:.4f} on the tuning data; held out: "
              f"mean score {held['mean_score']:.4f}"
              + (f", mean normalized {held['mean_normalized']:.4f}" if held["mean_normalized"] is not None else "")
              + "\n")
    write_atomic(out, header + yaml.safe_dump(result.best_recipe, sort_keys=False))
    seconds_per = sorted(t["seconds"] for t in result.trials if t["seconds"] is not None)
    trace = {
        "recipe": str(search.path), "tasks_file": str(tasks_file), "search": options.search, "seed": options.seed,
        "workers": options.workers, "device": options.device, "objective": result.objective_name,
        "dimensions": [_dimension(d) for d in search.dims],
        "best": {"values": result.best_values, "objective": result.objective, "recipe": str(out)},
        "held_out": result.held_out,
        "candidate_seconds": {"median": seconds_per[len(seconds_per) // 2] if seconds_per else None,
                              "min": seconds_per[0] if seconds_per else None,
                              "max": seconds_per[-1] if seconds_per else None},
        "seconds": round(seconds, 2), "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "trials": result.trials,
    }
    write_atomic(files["trace_json"], json.dumps(trace, indent=1) + "\n")
    write_atomic(files["trace_csv"], trace_csv(result.trials, [d.name for d in search.dims]))
    plot_trace(result.trials, [d.name for d in search.dims], result.objective_name, files["plot"])
    return files


def _dimension(d) -> dict:
    if d.is_range:
        return {"name": d.name, "search": [d.low, d.high], "log": d.log}
    return {"name": d.name, "choices": list(d.choices)}


def trace_csv(trials: list[dict], names: list[str]) -> str:
    """One row per trial: trial, the searched values, the objective, each task's score, seconds."""
    tasks = list(dict.fromkeys(k for t in trials for k in t["scores"]))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial", *names, "objective", *tasks, "seconds"])
    for t in trials:
        writer.writerow([t["trial"], *(t["values"][n] for n in names), t["objective"],
                         *(t["scores"].get(k) for k in tasks), t["seconds"]])
    return buf.getvalue()


def plot_trace(trials: list[dict], names: list[str], objective: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    panels = 1 + len(names)
    cols = min(panels, 3)
    rows = -(-panels // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    order = sorted(trials, key=lambda t: t["trial"])
    xs, ys = [t["trial"] for t in order], [t["objective"] for t in order]
    best, running = [], float("-inf")
    for y in ys:
        running = max(running, y)
        best.append(running)
    ax = axes[0]
    ax.plot(xs, ys, "o", ms=3, alpha=0.6, label="trial")
    ax.step(xs, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    for ax, name in zip(axes[1:], names):
        values = [t["values"][name] for t in order]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            ax.plot(values, ys, "o", ms=3, alpha=0.6)
        else:
            labels = sorted({str(v) for v in values})
            ax.plot([labels.index(str(v)) for v in values], ys, "o", ms=3, alpha=0.6)
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(name)
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
