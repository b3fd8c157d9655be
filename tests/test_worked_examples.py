"""The mission's worked examples, run through the CLI on the tiny checkpoints under examples/."""

import subprocess
import sys

import pytest
import torch
from conftest import EXAMPLES, read_model


def relu_output(w: torch.Tensor, x) -> float:
    return float(torch.relu(w.reshape(-1) @ torch.tensor(x, dtype=torch.float32)))


def merged(cli, tmp_path, recipe: str) -> torch.Tensor:
    out = tmp_path / recipe.removesuffix(".yaml")
    cli("merge", EXAMPLES / recipe, "--out", out, "-q")
    return read_model(out)["neuron.weight"].reshape(-1)


def test_adding_a_colleagues_task_vector_to_your_model(cli, tmp_path):
    assert merged(cli, tmp_path, "neuron_add_colleague.yaml").tolist() == [3.0, 2.0, -2.0]


def test_apply_short_form_adds_the_colleagues_vector_to_your_model(cli, tmp_path):
    tv = tmp_path / "colleague.tv"
    cli("extract", "--base", EXAMPLES / "neuron/base", "--finetuned", EXAMPLES / "neuron/colleague", "--out", tv, "-q")
    # "mine" is not the vector's base (it was fine-tuned from it): refused unless said on purpose, nothing written
    code, output = cli("apply", EXAMPLES / "neuron/mine", f"{tv}:1.0", "--out", tmp_path / "out", "-q", ok=False)
    assert code != 0 and "neuron.weight" in output and "--force-base" in output
    assert not (tmp_path / "out").exists()
    cli("apply", EXAMPLES / "neuron/mine", f"{tv}:1.0", "--out", tmp_path / "out", "-q", "--force-base")
    assert read_model(tmp_path / "out")["neuron.weight"].reshape(-1).tolist() == [3.0, 2.0, -2.0]


def test_merging_tasks_that_share_a_weight_breaks_both(cli, tmp_path):
    w = merged(cli, tmp_path, "relu_interference.yaml")
    assert w.tolist() == [1.0, 2.0, 1.0]
    task_a, task_b = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 1.0])
    assert relu_output(task_a, [2, 1, 0]) == 3 and relu_output(w, [2, 1, 0]) == 4
    assert relu_output(task_b, [0, 2, 3]) == 5 and relu_output(w, [0, 2, 3]) == 7


def test_merging_tasks_with_disjoint_weights_keeps_both(cli, tmp_path):
    w = merged(cli, tmp_path, "relu_disjoint.yaml")
    assert w.tolist() == [1.0, 0.0, 1.0]
    assert relu_output(w, [2, 1, 0]) == 2 == relu_output(torch.tensor([1.0, 0, 0]), [2, 1, 0])
    assert relu_output(w, [0, 2, 3]) == 3 == relu_output(torch.tensor([0, 0, 1.0]), [0, 2, 3])


def test_negation_example(cli, tmp_path):
    assert merged(cli, tmp_path, "neuron_negation.yaml").tolist() == [0.0, 2.0, -2.0]


def test_analogy_example_gives_the_target_skill_in_the_real_style(cli, tmp_path):
    assert merged(cli, tmp_path, "neuron_analogy.yaml").tolist() == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("cwd_is_examples", [True, False])
def test_recipe_paths_resolve_from_cwd_or_recipe_folder(cli, tmp_path, cwd_is_examples):
    cwd = EXAMPLES if cwd_is_examples else tmp_path
    cli("merge", EXAMPLES / "relu_disjoint.yaml", "--out", tmp_path / "o", "-q", cwd=cwd)
    assert read_model(tmp_path / "o")["neuron.weight"].reshape(-1).tolist() == [1.0, 0.0, 1.0]


def test_installed_entry_point_runs(tmp_path):
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-m", "taskvec.cli", "merge", str(EXAMPLES / "relu_disjoint.yaml"), "--out", str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stderr and (out / "model.safetensors").is_file()
