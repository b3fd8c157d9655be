"""The proof suite end to end on tiny subsets (a few training steps): the pipeline works, not the accuracy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_proof_suite_smoke(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "proof" / "run.py"), "--smoke", "--out",
                           str(tmp_path), "--cache", str(tmp_path / "cache")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    addition = json.loads((tmp_path / "results" / "addition.json").read_text())
    seed = addition["seeds"]["0"]
    names = ["bbc-topic", "tweet-sentiment", "chat-category", "language-id"]
    assert list(seed["tasks"]) == names
    full = seed["merges"]["+".join(names)]
    assert set(full) == {"task_arithmetic", "ties", "dare_ties"}
    for r in full.values():
        assert set(r["test"]) == set(names) and all(0 <= a <= 1 for a in r["test"].values())
        assert r["config"] in [g["config"] for g in r["grid"]]  # the pick is one of the validated grid points
    assert len(seed["merges"]) == 2  # the full merge and one pair
    interference = json.loads((tmp_path / "results" / "interference.json").read_text())
    assert [sorted(r["pair"]) for r in interference["pairs"]] == [sorted(k.split("+")) for k in seed["merges"]
                                                                  if k.count("+") == 1]
    assert (tmp_path / "inspect" / "report.html").is_file()
    for name in names:  # fine-tuned models are ordinary Hugging Face folders that taskvec can merge again
        folder = Path(seed["models"][name])
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()

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
