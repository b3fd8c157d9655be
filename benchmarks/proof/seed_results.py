"""Pooling seeds run at different times: a seed of the SmolLM2 parts takes hours on a laptop's CPUs, so seeds are
often run one by one (`run.py --seeds 1 --out /tmp/s1`, then `run.py --merge /tmp/s1`). Only results that can be
pooled are: the same training settings, base model and kind of run (smoke or not), and timings from the same kind
of machine."""

SAME_RUN = ("training", "base", "smoke")
SAME_MACHINE = ("cpus", "python", "torch")  # not threads: --threads changes the speed, not the machine


def merge(existing: dict | None, new: dict, where: str) -> dict:
    """`existing` with the seeds of `new` added; `seconds` add up. Raises ValueError naming `where` and the field
    when the two runs cannot be pooled, or a seed is in both."""
    if existing is None:
        return new
    if "seeds" not in existing or "seeds" not in new:
        raise ValueError(f"{where}: only results with a 'seeds' table (the SmolLM2 parts) can be merged")
    for key in SAME_RUN:
        if existing.get(key) != new.get(key):
            raise ValueError(f"{where}: '{key}' differs ({existing.get(key)!r} here, {new.get(key)!r} in the merged "
                             "run); pool only seeds run with the same settings, or re-run them")
    machines = existing.get("machine", {}), new.get("machine", {})
    for key in SAME_MACHINE:
        if machines[0].get(key) != machines[1].get(key):
            raise ValueError(f"{where}: the runs' machines differ in '{key}' ({machines[0].get(key)!r} and "
                             f"{machines[1].get(key)!r}); pool runs from one set-up, so that numbers and timings "
                             "stay comparable")
    twice = sorted(set(existing["seeds"]) & set(new["seeds"]), key=int)
    if twice:
        raise ValueError(f"{where}: seed {', '.join(twice)} is in both; pool each seed once (to replace a seed, take "
                         "it out of the results first, so that `seconds` counts only the runs kept)")
    seeds = {**existing["seeds"], **new["seeds"]}
    return {**existing, "seeds": dict(sorted(seeds.items(), key=lambda kv: int(kv[0]))),
            "seconds": round(existing.get("seconds", 0) + new.get("seconds", 0), 1)}
