"""The task-vector store's speed: push and pull of a 134M-parameter task vector, dense and in each compressed form,
against a plain local file copy; and `taskvec equip` against a local `taskvec apply` of the same vectors.

The vectors come from benchmarks/memory.py's LLaMA-shaped checkpoints (134M parameters, 537 MB in float32; the
fine-tunes' deltas are Gaussian noise, so the codecs' errors here say nothing about quality -- that is
benchmarks/proof/compression.py's job on real MiniLM fine-tunes; sizes and speeds do not depend on the values).
Every step is the `taskvec` command a user types, timed from outside with its peak RSS (wait4), against a real
`taskvec store serve` on 127.0.0.1 with its state on the same disk. Each repeat starts a fresh store and fresh
download caches, so nothing is deduplicated across repeats; the page cache is warm (the files were just written),
for the plain copy (`cp -r`) as for taskvec.

    python benchmarks/store.py [--workdir DIR] [--repeats 3] [--forms dense,dense-bf16,...] [--out JSON]

Target (issue 13): `equip` within 1.5x of `apply`, judged on a cold download cache (equip = pull + apply).
"""

import argparse
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from memory import llama_shapes, peak_rss  # noqa: E402  (never imports torch: a child process writes the checkpoints)

FORMS = ["dense", "dense-bf16", "sparse:0.1", "sparse:0.01", "lowrank:16", "lowrank-energy:0.5", "sign"]
TARGET = 1.5


def taskvec(*args) -> list[str]:
    return [sys.executable, "-m", "taskvec.cli", *map(str, args)]


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a child process run with `env`."""
    rss, secs = peak_rss(cmd, env)
    return secs, rss


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A fresh `taskvec store serve --root` on a free loopback port, and a token for ``org`` (none if None). The
    store demo (examples/store_demo.py) starts its server with this too."""

    def __init__(self, root: Path, env: dict, org: str | None = "bench"):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root.parent / f"{root.name}.log", "w")
        self.proc = subprocess.Popen(taskvec("store", "serve", "--root", root, "--port", self.port, "--log-level",
                                             "warning"), stdout=self.log, stderr=subprocess.STDOUT, env=env)
        for _ in range(300):
            if self.proc.poll() is not None:
                raise SystemExit(f"the store server exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            self.proc.kill()
            raise SystemExit(f"the store server did not answer within 30 s; see {self.log.name}")
        self.token = None
        if org is not None:
            out = subprocess.run(taskvec("store", "token", "create", "--root", root, "--org", org), env=env,
                                 check=True, capture_output=True, text=True).stdout
            self.token = out.strip().splitlines()[-1]

    def peak_rss_mb(self) -> float:
        """The server process's peak resident set so far (VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def extract_vectors(work: Path, forms: list[str], env: dict) -> dict:
    """Each form of ft1's vector, and ft2's dense vector (equip's second skill); sizes and extract times."""
    out = {}
    for form in forms:
        folder = work / "vectors" / form.replace(":", "-")
        if not folder.exists():
            compress = [] if form == "dense" else ["--compress", form]
            secs, rss = timed(taskvec("extract", "--base", work / "base", "--finetuned", work / "ft1", "--out", folder,
                                      "--quiet", *compress), env)
        else:
            secs = rss = float("nan")
        report = json.loads((folder / "taskvec.json").read_text()).get("compression_report") or {}
        out[form] = {"folder": folder, "bytes": folder_bytes(folder), "extract_s": secs, "extract_rss_mb": rss,
                     "relative_error": report.get("relative_error")}
        print(f"  {form:20s} {out[form]['bytes'] / 1e6:9.1f} MB  extract {secs:6.1f} s", flush=True)
    second = work / "vectors" / "dense-ft2"
    if not second.exists():
        subprocess.run(taskvec("extract", "--base", work / "base", "--finetuned", work / "ft2", "--out", second,
                               "--quiet"), env=env, check=True)
    out["_second"] = second
    return out


def one_repeat(work: Path, r: int, vectors: dict, forms: list[str], env: dict) -> dict:
    root = work / f"store-{r}"
    shutil.rmtree(root, ignore_errors=True)
    server = Server(root, env)
    client_env = {**env, "TASKVEC_STORE": server.url, "TASKVEC_TOKEN": server.token,
                  "TASKVEC_CONFIG": str(work / "config")}
    res = {"forms": {}, "equip": {}}
    try:
        for form in forms:
            v = vectors[form]
            ref = f"bench/vec-{form.replace(':', '-')}@{r}.0.0"
            cache, pulled, copied = work / f"cache-{r}-{form}", work / "pulled", work / "copied"
            for p in (cache, pulled, copied):
                shutil.rmtree(p, ignore_errors=True)
            push_s, push_rss = timed(taskvec("push", v["folder"], ref, "--quiet"), client_env)
            pull_s, pull_rss = timed(taskvec("pull", ref, "--out", pulled, "--quiet"),
                                     {**client_env, "TASKVEC_CACHE": str(cache)})
            start = time.perf_counter()
            subprocess.run(["cp", "-r", str(v["folder"]), str(copied)], check=True)
            copy_s = time.perf_counter() - start
            if folder_bytes(pulled) != v["bytes"]:
                raise SystemExit(f"{form}: the pulled folder's size differs from the pushed one")
            res["forms"][form] = {"push_s": push_s, "push_rss_mb": push_rss, "pull_s": pull_s,
                                  "pull_rss_mb": pull_rss, "copy_s": copy_s}
            shutil.rmtree(cache, ignore_errors=True)
        dense, second = vectors["dense"]["folder"], vectors["_second"]
        refs = [f"bench/equip-a@{r}.0.0", f"bench/equip-b@{r}.0.0"]
        for folder, ref in zip((dense, second), refs):
            subprocess.run(taskvec("push", folder, ref, "--quiet"), env=client_env, check=True, capture_output=True)
        cache = work / f"cache-{r}-equip"
        shutil.rmtree(cache, ignore_errors=True)
        equip_env = {**client_env, "TASKVEC_CACHE": str(cache)}
        for label, cmd, run_env in (
                ("equip, cold cache (downloads both)", taskvec("equip", work / "base", *refs, "--out", work / "eq",
                                                                 "--quiet"), equip_env),
                ("equip, warm cache", taskvec("equip", work / "base", *refs, "--out", work / "eq", "--quiet"),
                 equip_env),
                ("apply (local vectors)", taskvec("apply", work / "base", dense, second, "--out", work / "eq",
                                                  "--quiet"), client_env)):
            shutil.rmtree(work / "eq", ignore_errors=True)
            secs, rss = timed(cmd, run_env)
            res["equip"][label] = {"s": secs, "rss_mb": rss}
        shutil.rmtree(cache, ignore_errors=True)
        res["server_peak_rss_mb"] = server.peak_rss_mb()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None, help="keep checkpoints and vectors here (reused if there)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--forms", default=",".join(FORMS), help="dense and --compress specs, comma-separated")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "store.json")
    args = ap.parse_args()
    forms = [f for f in args.forms.split(",") if f]
    if "dense" not in forms:
        forms.insert(0, "dense")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="taskvec-store-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TASKVEC_CONFIG": str(work / "config")}
    try:
        if not (work / "ft2").exists():
            print(f"writing a 134M-parameter base and fine-tunes under {work} ...", flush=True)
            shutil.rmtree(work / "base", ignore_errors=True)
            for i in (1, 2, 3):
                shutil.rmtree(work / f"ft{i}", ignore_errors=True)
            subprocess.run([sys.executable, str(HERE / "memory.py"), "--generate", str(work)], check=True)
        print("extracting the vectors:", flush=True)
        vectors = extract_vectors(work, forms, env)
        runs = []
        for r in range(args.repeats):
            print(f"repeat {r + 1}/{args.repeats}: fresh store, push, pull, copy, equip, apply", flush=True)
            runs.append(one_repeat(work, r, vectors, forms, env))
        torch_version = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                                       capture_output=True, text=True).stdout.strip()
        rows = []
        for form in forms:
            b = vectors[form]["bytes"]
            row = {"form": form, "bytes": b, "vs_dense": b / vectors["dense"]["bytes"],
                   "relative_error": vectors[form]["relative_error"], "extract_s": vectors[form]["extract_s"]}
            for what in ("push", "pull", "copy"):
                secs = [run["forms"][form][f"{what}_s"] for run in runs]
                row[what] = {**spread(secs), "mb_per_s": b / 1e6 / statistics.median(secs)}
            for what in ("push", "pull"):
                row[f"{what}_rss_mb_max"] = max(run["forms"][form][f"{what}_rss_mb"] for run in runs)
            rows.append(row)
        labels = list(runs[0]["equip"])
        equip = {label: {**spread([run["equip"][label]["s"] for run in runs]),
                         "rss_mb_max": max(run["equip"][label]["rss_mb"] for run in runs)} for label in labels}
        apply_s = equip["apply (local vectors)"]["median"]
        for label in labels:
            equip[label]["vs_apply"] = equip[label]["median"] / apply_s
        cold = equip["equip, cold cache (downloads both)"]["vs_apply"]
        result = {
            "benchmark": "taskvec store: push/pull of a 134M-parameter vector per form vs cp -r; equip vs apply",
            "parameters": sum(math.prod(s) for s in llama_shapes().values()), "dense_mb": vectors["dense"]["bytes"] / 1e6, "repeats": args.repeats,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch_version},
            "deltas": "Gaussian noise (benchmarks/memory.py); errors say nothing about quality",
            "server": "taskvec store serve --root (SQLite + local blobs), 127.0.0.1, same disk",
            "page_cache": "warm", "forms": rows, "equip": equip,
            "server_peak_rss_mb_max": max(run["server_peak_rss_mb"] for run in runs),
            "target_equip_vs_apply": TARGET, "equip_cold_vs_apply": cold, "pass": cold <= TARGET,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\n{args.repeats} repeats; seconds are medians (min-max); MB/s = the vector's bytes / median seconds\n")
        print("| form | size | vs dense | push s (MB/s) | pull s (MB/s) | cp -r s (MB/s) | push / pull peak RSS |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            cells = [f"{row[w]['median']:.2f} ({row[w]['min']:.2f}-{row[w]['max']:.2f}), {row[w]['mb_per_s']:,.0f}"
                     for w in ("push", "pull", "copy")]
            print(f"| {row['form']} | {row['bytes'] / 1e6:,.1f} MB | {row['vs_dense']:.3f} | {' | '.join(cells)} | "
                  f"{row['push_rss_mb_max']:.0f} / {row['pull_rss_mb_max']:.0f} MB |")
        print("\n| two dense vectors onto the base | seconds (min-max) | vs apply | peak RSS |")
        print("|---|---|---|---|")
        for label, e in equip.items():
            print(f"| {label} | {e['median']:.2f} ({e['min']:.2f}-{e['max']:.2f}) | {e['vs_apply']:.2f}x | "
                  f"{e['rss_mb_max']:.0f} MB |")
        print(f"\nserver peak RSS {result['server_peak_rss_mb_max']:.0f} MB; target equip (cold) <= {TARGET}x apply: "
              f"{'PASS' if result['pass'] else 'MISS'} ({cold:.2f}x); wrote {args.out}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
