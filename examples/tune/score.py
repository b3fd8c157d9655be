"""A score with a known best point, for trying `taskvec tune`: how close the merged neuron is to the one wanted.

base (1, 2, -1), mine (1, 2, -2), colleague (3, 2, -1): base + 0.5 * (mine - base) + 0.75 * (colleague - base)
= (2.5, 2, -1.5), so the best weights are 0.5 for mine and 0.75 for the colleague (score 0, the highest).
"""

import torch

WANTED = torch.tensor([[2.5, 2.0, -1.5]])


def wanted_neuron(weights: dict[str, torch.Tensor]) -> float:
    return -float(((weights["neuron.weight"].float() - WANTED) ** 2).sum())
