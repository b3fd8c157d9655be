"""REPORT.md from the results JSON files: every table, the plots, and the machine the numbers came from."""

import functools
import json
from pathlib import Path

INTRO = """# Proof: merging on a real model and real data

Produced by `python benchmarks/proof/run.py` (results in `results/*.json`; this file is rewritten by the script).
Models: all-MiniLM-L6-v2 (BERT, 22.7M parameters) for addition and interference; SmolLM2-135M-Instruct (LLaMA) for
the chat vector, negation and analogy. All merges go through taskvec's public API. Seeds are fixed: a re-run
reproduces these numbers.
"""

LM_PARTS = ("chat_vector", "negation", "analogy", "analogy_tweets")  # SmolLM2; negation and analogy reuse
# chat_vector's new-language model
PARTS = ("addition", "interference") + LM_PARTS  # interference reads addition's results


def reporter(part: str):
    """The function that writes a part's section: markdown(result, out_dir) of its module, or lm_report's."""
    if part in LM_PARTS:
        import lm_report

        if part.startswith("analogy"):
            return functools.partial(lm_report.analogy, part=part)
        return getattr(lm_report, part)
    return __import__({"addition": "addition_report"}.get(part, part)).markdown


def write(results_dir: Path, path: Path) -> None:
    sections = [INTRO]
    for part in PARTS:
        f = results_dir / f"{part}.json"
        if not f.is_file():
            sections.append(f"## {part.replace('_', ' ').capitalize()}\n\nNot run yet (`--parts {part}`).\n")
            continue
        result = json.loads(f.read_text())
        sections.append(reporter(part)(result, path.parent))
        m = result.get("machine", {})
        smoke = " — SMOKE RUN: pipeline check only, numbers meaningless" if result.get("smoke") else ""
        sections.append(f"_{part}: {result.get('seconds', 0):.0f} s on {m.get('cpus')} CPUs (models and accuracies "
                        f"already in the cache are reused), {m.get('platform')}, torch {m.get('torch')}{smoke}._\n")
    import lm_report

    sections.append(lm_report.SCALING + "\n")
    path.write_text("\n".join(sections))
