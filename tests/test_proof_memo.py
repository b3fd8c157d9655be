"""The proof suite's content memo: each missing key is computed once, stored keys never again, order kept."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "proof"))

import memo  # noqa: E402


def test_only_missing_keys_are_computed_once_each_and_results_keep_the_asked_order(tmp_path):
    path = tmp_path / "scores" / "model.json"
    calls = []

    def square(keys):
        calls.append(list(keys))
        return [int(k) ** 2 for k in keys]

    assert memo.stored(path, ["3", "2", "3"], square) == [9, 4, 9]
    assert memo.stored(path, ["2", "5", "3"], square) == [4, 25, 9]
    assert calls == [["3", "2"], ["5"]]
    assert json.loads(path.read_text()) == {"2": 4, "3": 9, "5": 25}
    assert [p.name for p in path.parent.iterdir()] == ["model.json"]  # no temporary file left behind


def test_results_another_run_stored_meanwhile_are_kept(tmp_path):
    path = tmp_path / "model.json"

    def meanwhile(keys):
        path.write_text(json.dumps({"other": 1}))  # another process finished first
        return ["mine"] * len(keys)

    assert memo.stored(path, ["k"], meanwhile) == ["mine"]
    assert json.loads(path.read_text()) == {"k": "mine", "other": 1}
