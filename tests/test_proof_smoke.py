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
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "proof" / "run.py"), "--smoke", "--parts",
                           "addition,interference", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")],
                          env=env, capture_output=True, text=True)
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

    report = (tmp_path / "REPORT.md").read_text()
    for heading in ("## Addition", "## Interference", "SMOKE RUN"):
        assert heading in report
    assert not list((tmp_path / "cache" / "merges").glob("merge-*"))  # merged models are removed once scored


@pytest.mark.slow
def test_language_model_proofs_smoke(tmp_path):
    """The SmolLM2 experiments on a 2-layer model with SmolLM2's tokenizer, 2 training steps each: every model,
    merge, score and report section is produced (the CI budget for this is 3 minutes)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "proof" / "run.py"), "--smoke", "--parts",
                           "chat_vector,negation,analogy,analogy_tweets", "--out", str(tmp_path), "--cache",
                           str(tmp_path / "cache")],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    chat = json.loads((tmp_path / "results" / "chat_vector.json").read_text())["seeds"]["0"]
    rows = chat["rows"]
    assert len(rows) == 7 and all(r["it-answers"] > 0 and r["en-answers"] > 0 for r in rows.values())
    assert all(0 <= r["in_language"] <= 1 and 0 <= r["ended"] <= 1 for r in rows.values())
    assert 0 <= chat["lambda"] <= 1.5 and len(chat["tuning"]["val_curve"]) == 7  # taskvec tune's grid
    assert set(chat["verdict"]) >= {"beats_new_language", "beats_chat", "gap_closed"}

    negation = json.loads((tmp_path / "results" / "negation.json").read_text())["seeds"]["0"]
    assert [p["lambda"] for p in negation["val_curves"]["τ_it"]] == negation["grid"]
    assert set(negation["val_curves"]) == {"τ_it", "τ_random", "τ_bbc (unrelated)"}
    if negation["lambda"] is not None:
        assert {f"θ − {negation['lambda']:g}·τ_random", "base"} <= set(negation["rows"])

    for part in ("analogy", "analogy_tweets"):
        analogy = json.loads((tmp_path / "results" / f"{part}.json").read_text())["seeds"]["0"]
        rows = analogy["rows"]
        assert set(rows) == {"base", "source", "oracle", "analogy", "noise"}
        assert all(0 <= r[domain] <= 1 for r in rows.values() for domain in ("target", "source"))
        assert {"gap", "closed", "noise_closed", "met"} <= set(analogy["verdict"])
        assert {role: [p["lambda"] for p in points] for role, points in analogy["sweep_val"].items()} == {
            "analogy": [0.0, 1.0], "noise": [0.0, 1.0]}
        geometry = analogy["geometry"]
        assert geometry["task_norm"] > 0 and all(geometry[role]["norm"] > 0 for role in ("analogy", "noise"))
        assert all(-1 <= geometry[role]["lm_vector_cosine"] <= 1 for role in ("analogy", "noise"))

    report = (tmp_path / "REPORT.md").read_text()
    for heading in ("## Chat vector", "## Negation", "## Analogy: the topic", "## Analogy: tweet", "Scaling",
                    "SMOKE RUN"):
        assert heading in report
    assert all((tmp_path / f"{part}.png").is_file() for part in ("chat_vector", "negation", "analogy",
                                                                 "analogy_tweets"))
    assert not list((tmp_path / "cache" / "merges").glob("merge-*"))
