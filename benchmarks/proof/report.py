"""REPORT.md from the results JSON files: every table, the plots, and the machine the numbers came from."""

import json
from pathlib import Path

INTRO = """# Proof: merging on a real model and real data

Produced by `python benchmarks/proof/run.py` (results in `results/*.json`; this file is rewritten by the script).
Models: all-MiniLM-L6-v2 (BERT, 22.7M parameters) for addition and analogy; SmolLM2-135M-Instruct (LLaMA) for
negation. All merges go through taskvec's public API. Seeds are fixed: a re-run reproduces these numbers.
"""


STRONG_TITLE = ("### The same with stronger fine-tuning (`run.py --strong`: twice the steps, four times the encoder "
                "learning rate, no subsets)")


def write(results_dir: Path, path: Path) -> None:
    sections = [INTRO]
    for part in ("addition", "interference", "negation", "analogy"):
        f = results_dir / f"{part}.json"
        if not f.is_file():
            sections.append(f"## {part.capitalize()}\n\nNot run yet (`--parts {part}`).\n")
            continue
        result = json.loads(f.read_text())
        module = __import__(part)
        sections.append(module.markdown(result, path.parent))
        strong = results_dir / f"{part}-strong.json"
        if strong.is_file():
            sections.append(module.markdown(json.loads(strong.read_text()), path.parent, STRONG_TITLE))
        m = result.get("machine", {})
        sections.append(f"_{part}: {result.get('seconds', 0):.0f} s on {m.get('cpus')} CPUs (models and accuracies "
                        f"already in the cache are reused), {m.get('platform')}, "
                        f"torch {m.get('torch')}{' — SMOKE RUN: pipeline check only, numbers meaningless' if result.get('smoke') else ''}._\n")
    path.write_text("\n".join(sections))
