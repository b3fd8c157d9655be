"""`make store-demo` on tiny data (a few fine-tuning steps): the worked example's flow works end to end through the
CLI -- publish with metrics, search by base, equip == apply, a wrong base refused, eval -- not its accuracy."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_store_demo_smoke(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "store_demo.py"), "--smoke", "--cache",
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-3000:]
    for task in ("tweet-sentiment", "language-id"):
        assert f"published proof/{task}@1.0.0: 3 blob(s) uploaded" in out
    found, none = out.split("no task vectors match")[0], out.split("no task vectors match")[1]
    assert "2 task vector(s)" in found and "proof/language-id@1.0.0" in found  # the base finds both ...
    assert "metrics: tweet-sentiment/accuracy=" in none  # ... a fine-tune finds none; show gives the eval scores
    assert "error: proof/tweet-sentiment@1.0.0: different architecture" in out  # equip onto a fine-tune: refused
    assert not (tmp_path / "store-demo" / "wrong").exists()
    assert "equip == local apply of the same vectors, bit for bit: True" in out
    assert (tmp_path / "store-demo" / "eval-equipped.json").is_file() and "pooled gain kept:" in out
