"""Pooling seeds from separate runs of the proof suite: what is kept, what is refused, and the report that follows."""

import copy
import json
import sys
from pathlib import Path

import pytest

PROOF = Path(__file__).resolve().parents[1] / "benchmarks" / "proof"
sys.path.insert(0, str(PROOF))

import seed_results  # noqa: E402

MACHINE = {"platform": "Linux-a", "python": "3.11.7", "torch": "2.13.0+cpu", "cpus": 2, "threads": 2}


def run(seeds: dict, seconds: float = 10.0, **changes) -> dict:
    return {"seeds": seeds, "training": {"steps": 100, "lr": 1e-4}, "base": "smollm2-base-abc", "machine": MACHINE,
            "seconds": seconds, "smoke": False, **changes}


def test_seeds_pool_in_numeric_order_and_seconds_add_up():
    merged = seed_results.merge(run({"0": "r0", "10": "r10"}, 100.0), run({"2": "r2"}, 5.5), "x.json")
    assert merged["seeds"] == {"0": "r0", "2": "r2", "10": "r10"}
    assert list(merged["seeds"]) == ["0", "2", "10"]
    assert merged["seconds"] == 105.5
    assert merged["training"] == {"steps": 100, "lr": 1e-4}


def test_a_seed_in_both_runs_is_refused():
    with pytest.raises(ValueError, match="seed 0, 10 is in both"):
        seed_results.merge(run({"0": 0, "10": 10}), run({"10": 10, "0": 0, "2": 2}), "x.json")


def test_nothing_to_merge_into_keeps_the_new_run():
    new = run({"1": "r"})
    assert seed_results.merge(None, new, "x.json") is new


def test_another_kernel_or_thread_count_still_pools():
    other = {**MACHINE, "platform": "Linux-b", "threads": 1}
    assert set(seed_results.merge(run({"0": 0}), run({"1": 1}, machine=other), "x.json")["seeds"]) == {"0", "1"}


@pytest.mark.parametrize("change, field", [({"training": {"steps": 200, "lr": 1e-4}}, "'training'"),
                                           ({"base": "smollm2-base-def"}, "'base'"),
                                           ({"smoke": True}, "'smoke'"),
                                           ({"machine": {**MACHINE, "cpus": 16}}, "'cpus'")])
def test_runs_that_cannot_be_pooled_are_refused_by_name(change, field):
    with pytest.raises(ValueError, match=field) as err:
        seed_results.merge(run({"0": 0}), run({"1": 1}, **change), "results/negation.json")
    assert "results/negation.json" in str(err.value)


def test_results_without_seeds_are_refused():
    with pytest.raises(ValueError, match="'seeds'"):
        seed_results.merge({"rows": {}}, run({"1": 1}), "addition.json")


def test_run_merge_pools_a_real_result_and_reports_both_seeds(tmp_path):
    import run as proof_run

    stored = json.loads((PROOF / "results" / "chat_vector.json").read_text())
    seed0 = {**stored, "seeds": {"0": stored["seeds"]["0"]}}
    seed1 = copy.deepcopy(seed0)
    seed1["seeds"] = {"1": {**seed0["seeds"]["0"], "seed": 1}}
    (tmp_path / "main" / "results").mkdir(parents=True)
    (tmp_path / "s1" / "results").mkdir(parents=True)
    (tmp_path / "main" / "results" / "chat_vector.json").write_text(json.dumps(seed0))
    (tmp_path / "s1" / "results" / "chat_vector.json").write_text(json.dumps(seed1))

    proof_run.main(["--merge", str(tmp_path / "s1"), "--out", str(tmp_path / "main")])

    pooled = json.loads((tmp_path / "main" / "results" / "chat_vector.json").read_text())
    assert list(pooled["seeds"]) == ["0", "1"]
    assert pooled["seconds"] == pytest.approx(2 * seed0["seconds"])
    assert "seeds 0, 1" in (tmp_path / "main" / "REPORT.md").read_text()


def test_run_merge_of_an_empty_folder_says_what_to_give(tmp_path):
    import run as proof_run

    with pytest.raises(SystemExit, match="no results JSON"):
        proof_run.main(["--merge", str(tmp_path), "--out", str(tmp_path / "out")])


def test_run_merge_checks_every_file_before_writing_and_skips_the_minilm_parts(tmp_path, capsys):
    import run as proof_run

    def write(folder: str, name: str, result: dict) -> Path:
        path = tmp_path / folder / "results" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
        return path

    kept = write("main", "chat_vector.json", run({"0": {}}))
    write("main", "negation.json", run({"0": {}}))
    write("s1", "addition.json", {"rows": {}})
    write("s1", "chat_vector.json", run({"1": {}}))
    write("s1", "negation.json", run({"1": {}}, base="another base"))
    before = kept.read_text()

    with pytest.raises(SystemExit, match="negation.json.*'base' differs"):
        proof_run.merge_results(tmp_path / "s1" / "results", tmp_path / "main" / "results")
    assert kept.read_text() == before  # chat_vector.json would have pooled, but nothing was written
    assert "skipped" in capsys.readouterr().out
