"""Models that carry extra modules: a LLaMA code model (ForCausalLM: an LM head) and a reward model
(ForSequenceClassification: a score head, no LM head) fine-tuned from the same base, merged with --carry-missing.
The folder keeps both heads, loads as either class (--architecture), and computes what a hand-built model does."""

import pytest
import torch

from conftest import read_model
from taskvec.errors import TaskvecError
from taskvec.merge import MergeOptions, describe_recipe, merge_recipe

transformers = pytest.importorskip("transformers")


def config(**extra):
    return transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                                    pad_token_id=0, **extra)


def steps(model, seed: int, loss_of) -> None:
    """A little fine-tuning: three Adam steps on random token ids."""
    torch.manual_seed(seed)
    ids = torch.randint(1, 64, (4, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        loss_of(model, ids).backward()
        optimizer.step()


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("extra-modules")
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config())
    base.save_pretrained(root / "base")
    code = transformers.LlamaForCausalLM.from_pretrained(root / "base")
    steps(code, 1, lambda m, ids: m(input_ids=ids, labels=ids).loss)
    code.save_pretrained(root / "code")
    reward = transformers.LlamaForSequenceClassification(config(num_labels=1))
    reward.model.load_state_dict(base.model.state_dict())  # the same base; a new score head
    steps(reward, 2, lambda m, ids: (m(input_ids=ids).logits - 1.0).pow(2).mean())
    reward.save_pretrained(root / "reward")
    (root / "recipe.yaml").write_text(
        "merge_method: task_arithmetic\nbase_model: base\nmodels:\n"
        "  - {model: code, parameters: {weight: 1.0}}\n  - {model: reward, parameters: {weight: 1.0}}\n")
    return root


def expected(root) -> dict[str, torch.Tensor]:
    """By hand: the shared body is base + τ_code + τ_reward; the LM head base + τ_code (the reward model has none:
    its task vector is zero there); the score head the reward model's own (the base has none)."""
    base, code, reward = (read_model(root / n) for n in ("base", "code", "reward"))
    out = {n: base[n] + (code[n] - base[n]) + (reward[n] - base[n]) for n in base if n.startswith("model.")}
    out["lm_head.weight"] = base["lm_head.weight"] + (code["lm_head.weight"] - base["lm_head.weight"])
    out["score.weight"] = reward["score.weight"]
    return out


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "LlamaForSequenceClassification"])
def test_both_heads_are_kept_and_the_folder_loads_as_the_class_asked(family, tmp_path, architecture):
    out = tmp_path / "merged"
    merge_recipe(family / "recipe.yaml", out, MergeOptions(progress=False, on_missing="carry"),
                 architecture=architecture)
    merged, by_hand = read_model(out), expected(family)
    assert set(merged) == set(by_hand)
    for name, tensor in by_hand.items():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=1e-6, msg=name)
    cls = getattr(transformers, architecture)
    model = cls.from_pretrained(out).eval()
    assert model.config.architectures == [architecture]
    reference = cls(model.config).eval()
    missing, unexpected = reference.load_state_dict(by_hand, strict=False)
    assert not missing and set(unexpected) == {"score.weight", "lm_head.weight"} - set(reference.state_dict())
    ids = torch.tensor([[5, 9, 3, 17, 2]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=1e-5)
    if architecture == "LlamaForSequenceClassification":
        assert model.config.num_labels == 1 and model(input_ids=ids).logits.shape == (1, 1)


def test_the_plan_says_what_happens_to_each_head_and_a_wrong_class_is_one_line(family, tmp_path, cli):
    view = describe_recipe(family / "recipe.yaml", MergeOptions(progress=False, on_missing="carry"))
    paths = {row[0]: row[1] for row in view.rows}
    order = list(view.models)
    assert paths["score.weight"] == "copy from reward"
    assert paths["lm_head.weight"] == f"reference (m{order.index('reward') + 1}: base value)"
    assert paths["model.layers.0.mlp.up_proj.weight"] == "fused"
    with pytest.raises(TaskvecError, match=r"--architecture BertModel: no merged model's config.json lists it "
                                           r"\(they list LlamaForCausalLM, LlamaForSequenceClassification\)"):
        merge_recipe(family / "recipe.yaml", tmp_path / "never", MergeOptions(progress=False, on_missing="carry"),
                     architecture="BertModel")
    assert not (tmp_path / "never").exists()
    code, out = cli("merge", family / "recipe.yaml", "--out", tmp_path / "cli", "--carry-missing", "--architecture",
                    "LlamaForSequenceClassification", "-q")
    assert transformers.AutoConfig.from_pretrained(tmp_path / "cli").architectures == ["LlamaForSequenceClassification"]
    code, out = cli("merge", family / "recipe.yaml", "--dry-run", "--carry-missing")
    assert "copy from reward" in out


@pytest.mark.parametrize("method, params", [("linear", {}), ("ties", {"density": 0.5}),
                                            ("ties", {"density": 0.5, "trim_scope": "global"})])
def test_a_lacking_head_keeps_the_base_value_under_every_kind_of_method(family, tmp_path, method, params):
    """linear averages weights (the reward model counts with the base's lm_head), ties trims task vectors (the
    reward model's is zero there), also with selections over the whole task vector."""
    import yaml

    recipe = yaml.safe_load((family / "recipe.yaml").read_text())
    recipe.update(merge_method=method, parameters=params)
    if method == "linear":
        del recipe["base_model"]
    path = family / f"recipe-{method}-{len(params)}.yaml"  # beside the models it names
    path.write_text(yaml.safe_dump(recipe))
    merge_recipe(path, tmp_path / "out", MergeOptions(progress=False, on_missing="carry"))
    merged, base, code = (read_model(p) for p in (tmp_path / "out", family / "base", family / "code"))
    head = "lm_head.weight"
    if method == "linear":  # without a base the missing head is copied from the model that has it
        assert torch.equal(merged[head], code[head])
    else:  # TIES of (τ_code, 0): τ_code trimmed to its top half, disjoint mean over the one model that has it
        tau = code[head] - base[head]
        kept = tau.abs() >= tau.abs().flatten().kthvalue(tau.numel() - tau.numel() // 2 + 1).values  # the top half
        if params.get("trim_scope") != "global":
            torch.testing.assert_close(merged[head], base[head] + tau * kept, rtol=0, atol=1e-6)
        else:
            assert not torch.equal(merged[head], base[head])
