"""PEFT LoRA adapters as task vectors, checked against PEFT itself: `taskvec apply BASE ADAPTER` equals PEFT's
merge_and_unload() within float32 rounding for every adapter option taskvec reads, and refuses the others."""

import json

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from conftest import read_model, run  # noqa: E402

from taskvec import MergeOptions, TaskvecError, TaskVector, parse_recipe  # noqa: E402

Q = MergeOptions(progress=False)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(folder, seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return model


def lora(base_folder, out, seed=1, **options):
    """A LoRA with random (non-zero) factors, saved as PEFT saves it; and PEFT's own merge of it."""
    model = transformers.LlamaForCausalLM.from_pretrained(base_folder)
    torch.manual_seed(seed)
    config = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "init_lora_weights": False,
                                **options})
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "modules_to_save" in name or name.endswith("lora_B.bias"):
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(out)
    merged = peft_model.merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def assert_close(folder, expected):
    got = read_model(folder)
    for name, want in expected.items():
        assert name in got, name
        torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama") / "base"
    tiny_llama(folder)
    return folder


@pytest.mark.parametrize("options", [
    {},
    {"r": 8, "lora_alpha": 16, "use_rslora": True},
    {"rank_pattern": {"layers.1.self_attn.q_proj": 2, "down_proj": 6}, "alpha_pattern": {"v_proj": 3}},
    {"target_modules": TARGETS + ["embed_tokens"], "modules_to_save": ["lm_head"]},
    {"target_modules": ["q_proj", "v_proj"], "lora_alpha": 5, "r": 3},
], ids=["plain", "rslora", "patterns", "embedding+modules_to_save", "two-targets"])
def test_apply_equals_peft_merge_and_unload(base, tmp_path, options):
    expected = lora(base, tmp_path / "adapter", **options)
    TaskVector.from_adapter(tmp_path / "adapter", base).apply(base, tmp_path / "applied", options=Q)
    assert_close(tmp_path / "applied", expected)


def test_the_cli_scales_an_adapter_and_a_recipe_reads_base_plus_adapter(base, tmp_path, cli):
    expected = lora(base, tmp_path / "adapter")
    original = read_model(base)
    cli("apply", base, f"{tmp_path / 'adapter'}:0.5", "--out", tmp_path / "half", "--quiet")
    half = read_model(tmp_path / "half")
    for name, want in expected.items():  # base + 0.5 * (merged - base)
        torch.testing.assert_close(half[name], original[name] + 0.5 * (want - original[name]), rtol=1e-5,
                                   atol=1e-6)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                      f"  - model: {base}+{tmp_path / 'adapter'}\n    parameters: {{weight: 1.0}}\n")
    cli("merge", recipe, "--out", tmp_path / "merged", "--quiet")
    assert_close(tmp_path / "merged", expected)


def test_ties_of_two_adapters_equals_ties_of_the_two_merged_models(base, tmp_path):
    models = []
    for seed in (1, 2):
        merged = lora(base, tmp_path / f"adapter{seed}", seed=seed)
        folder = tmp_path / f"full{seed}"
        model = transformers.LlamaForCausalLM.from_pretrained(base)
        model.load_state_dict(merged)
        model.save_pretrained(folder)
        models.append(folder)

    def ties(refs, out):
        run(parse_recipe({"merge_method": "ties", "base_model": str(base), "parameters": {"density": 0.5},
                          "models": [{"model": r, "parameters": {"weight": 1.0}} for r in refs]}), out)
        return read_model(out)

    from_adapters = ties([f"{base}+{tmp_path / 'adapter1'}", str(tmp_path / "adapter2")], tmp_path / "a")
    from_models = ties([str(m) for m in models], tmp_path / "m")
    assert from_adapters.keys() == from_models.keys()
    for name in from_models:  # the full models were rounded to float32 once more: TIES may cut one entry apart
        close = torch.isclose(from_adapters[name], from_models[name], rtol=1e-5, atol=1e-6)
        assert close.float().mean() > 0.999, name


def test_an_adapter_saved_as_a_task_vector_carries_its_bases_fingerprint(base, tmp_path):
    expected = lora(base, tmp_path / "adapter", modules_to_save=["lm_head"])
    stored = TaskVector.from_adapter(tmp_path / "adapter", base).save(tmp_path / "tv", options=Q)
    manifest = json.loads((stored / "taskvec.json").read_text())
    assert manifest["base"]["fingerprint"].startswith("taskvec-fp2:")
    TaskVector.load(stored).apply(base, tmp_path / "applied", options=Q)
    assert_close(tmp_path / "applied", expected)


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "DoRA"),
    ({"peft_type": "LOHA"}, "'LOHA' adapter; taskvec reads LoRA adapters only"),
    ({"layer_replication": [[0, 2], [1, 2]]}, "layer_replication"),
    ({"r": 0}, "r must be a positive number"),
    ({"init_lora_weights": "pissa"}, "not a delta of the unchanged base; convert it with PEFT"),
])
def test_unsupported_adapters_are_refused_with_one_line(base, tmp_path, change, message):
    lora(base, tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(TaskvecError, match=message):
        TaskVector.from_adapter(tmp_path / "adapter", base).apply(base, tmp_path / "out", options=Q)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bias", [{"bias": "all"}, {"lora_bias": True}], ids=["bias-all", "lora_bias"])
def test_gpt2_conv1d_adapter_fan_in_fan_out(tmp_path, bias):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2")
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                                            fan_in_fan_out=True, init_lora_weights=False, **bias))
    with torch.no_grad():  # bias "all": every bias trains and is saved whole; lora_bias: B's own bias
        for name, p in peft_model.named_parameters():
            if name.endswith(".bias") and p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    TaskVector.from_adapter(tmp_path / "adapter", tmp_path / "gpt2").apply(tmp_path / "gpt2", tmp_path / "out",
                                                                           options=Q)
    got, original = read_model(tmp_path / "out"), read_model(tmp_path / "gpt2")
    assert not torch.equal(expected["transformer.h.0.attn.c_attn.bias"], original["transformer.h.0.attn.c_attn.bias"])
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight",
                 "transformer.h.0.attn.c_attn.bias", "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f.bias"):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_model_plus_adapter_is_that_model_with_the_adapter_merged_in(base, tmp_path):
    model = transformers.LlamaForCausalLM.from_pretrained(base)
    with torch.no_grad():  # a fine-tune of the base, on which the adapter is then trained
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path / "ft")
    expected = lora(tmp_path / "ft", tmp_path / "adapter")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                      f"  - model: {tmp_path / 'ft'}+{tmp_path / 'adapter'}\n    parameters: {{weight: 1.0}}\n")
    run(recipe, tmp_path / "out")
    assert_close(tmp_path / "out", expected)


def test_an_adapters_names_are_matched_to_a_base_saved_without_the_task_head(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, num_labels=3)
    classifier = transformers.BertForSequenceClassification(config)
    classifier.bert.save_pretrained(tmp_path / "bert")  # the encoder alone: names without the 'bert.' prefix
    peft_model = peft.get_peft_model(classifier, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                                 init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    TaskVector.from_adapter(tmp_path / "adapter", tmp_path / "bert").apply(tmp_path / "bert", tmp_path / "out",
                                                                           options=Q)
    got = read_model(tmp_path / "out")
    for name in ("encoder.layer.0.attention.self.query.weight", "encoder.layer.1.attention.self.value.weight"):
        torch.testing.assert_close(got[name], expected["bert." + name], rtol=1e-5, atol=1e-6)
    # a base that lacks what the adapter changes: one error naming the tensor
    t = read_model(tmp_path / "bert")
    del t["encoder.layer.1.attention.self.value.weight"]
    from conftest import write_model

    write_model(tmp_path / "cut", t)
    with pytest.raises(TaskvecError, match="changes 'bert.encoder.layer.1.attention.self.value.weight', but the base "
                                           "has no tensor of that name"):
        TaskVector.from_adapter(tmp_path / "adapter", tmp_path / "cut").apply(tmp_path / "cut", tmp_path / "x",
                                                                              options=Q)
