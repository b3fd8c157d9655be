"""Write the tiny checkpoints behind the mission's worked examples (run once; the files are committed).

Each model is one neuron, ``neuron.weight`` of shape (1, 3) -- (1, 4) for the analogy -- saved as a Hugging Face-style folder.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).parent
MODELS = {
    # one neuron, three input weights: your model and a colleague's, fine-tuned from the same base
    "neuron/base": [1, 2, -1],
    "neuron/mine": [1, 2, -2],
    "neuron/colleague": [3, 2, -1],
    # interference: tasks A and B both change the middle weight
    "relu/base": [0, 0, 0],
    "relu/task_a": [1, 1, 0],
    "relu/task_b": [0, 1, 1],
    # no interference: the tasks change disjoint weights
    "relu/task_a_disjoint": [1, 0, 0],
    "relu/task_b_disjoint": [0, 0, 1],
    # analogy, weights = (general skill, target skill, real style, synthetic style)
    "analogy/base": [0, 0, 0, 0],
    "analogy/general_synthetic": [1, 0, 0, 1],  # A
    "analogy/general_real": [1, 0, 1, 0],  # B
    "analogy/target_synthetic": [0, 1, 0, 1],  # C
}

if __name__ == "__main__":
    for name, weights in MODELS.items():
        folder = HERE / name
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"neuron.weight": torch.tensor([weights], dtype=torch.float32)}, folder / "model.safetensors",
                  metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({"model_type": "one-neuron", "in_features": len(weights)}, indent=2) + "\n")
        print("wrote", folder)
