"""The proof suite end to end on tiny subsets (a few training steps): the pipeline works, not the accuracy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["bbc-topic", "tweet-sentiment", "chat-category", "language-id"]


@pytest.mark.slow
def test_proof_suite_smoke(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "proof" / "run.py"), "--smoke", "--out",
                           str(tmp_path), "--cache", str(tmp_path / "cache")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    addition = json.loads((tmp_path / "results" / "addition.json").read_text())
    assert set(addition["regimes"]) == {"probe-first", "strong"}
    for regime, rr in addition["regimes"].items():
        seed = rr["seeds"]["0"]
        assert list(seed["reference"]) == NAMES
        rows = seed["rows"]
        # fine-tuned, probe, lambda = 0 and the nine data-free merges (task arithmetic x3, ties, dare_ties, the
        # subspace methods and consensus)
        assert list(addition["settings"]["data_free"]) == list(rows)[3:] and len(rows) == 3 + 9
        for r in rows.values():
            assert set(r["test"]) == set(NAMES) and all(0 <= a <= 1 for a in r["test"].values())
            assert set(r["normalized"]) == set(NAMES) | {"mean"} and "pooled" in r["gain_kept"]
        ft = rows["fine-tuned (own task)"]
        assert ft["normalized"]["mean"] == pytest.approx(1.0)
        assert set(seed["preconditions"]) >= {"passed", "gains", "mean_gain", "failures"}
        for name in NAMES:  # fine-tuned models are ordinary Hugging Face folders that taskvec can merge again
            folder = Path(seed["models"][name])
            assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
            assert (folder / "head.safetensors").is_file() and regime in folder.name
        tasks = yaml.safe_load(Path(seed["tasks_file"]).read_text())["tasks"]
        assert [t["name"] for t in tasks] == NAMES
        for t in tasks:
            assert (t["split"], t["tune_split"], t["split_column"]) == ("test", "val", "split")
            assert t["reference"] == seed["reference"][t["name"]]["finetuned_test"]
            assert (Path(seed["tasks_file"]).parent / t["head"]).is_file()

    interference = json.loads((tmp_path / "results" / "interference.json").read_text())
    for regime in ("probe-first", "strong"):
        assert len(interference["regimes"][regime]["pairs"]) == 1  # smoke runs merge one pair
        assert (tmp_path / "inspect" / regime / "report.html").is_file()

    negation = json.loads((tmp_path / "results" / "negation.json").read_text())
    assert negation["base"]["test"]["tweets"]["perplexity"] > 1
    assert [g["lambda"] for g in negation["grid"]] == negation["settings"]["grid"]
    assert set(negation["base"]["test"]["samples"]) == set(negation["finetuned"]["test"]["samples"])

    analogy = json.loads((tmp_path / "results" / "analogy.json").read_text())
    assert 0 <= analogy["sweep"][0]["real/test"] <= 1 and "real/test/oracle" in analogy["oracle"]

    report = (tmp_path / "REPORT.md").read_text()
    for heading in ("## Addition", "## Interference", "## Negation", "## Analogy", "SMOKE RUN"):
        assert heading in report
    assert not list((tmp_path / "cache" / "merges").glob("merge-*"))  # merged models are removed once scored
