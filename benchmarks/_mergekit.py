"""mergekit in a virtual environment of its own: compared against, never imported (it is LGPL and heavy)."""

import subprocess
import sys
from pathlib import Path


def ensure_mergekit(venv: Path) -> Path:
    """The `mergekit-yaml` of a venv, created on first use (`pip install torch==2.13.0`, then `mergekit==0.1.5`)."""
    exe = venv / "bin" / "mergekit-yaml"
    if not exe.exists():
        print(f"installing mergekit 0.1.5 into {venv} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)
        subprocess.run(pip + ["mergekit==0.1.5"], check=True)
    return exe
