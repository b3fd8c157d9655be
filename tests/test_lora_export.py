"""LoRA out: `taskvec extract-lora` writes an adapter that PEFT loads, and PEFT's merge of it onto the base gives the
fine-tune back -- exactly where the fine-tune's changes have the adapter's rank, the best rank-k approximation
otherwise."""

import json

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from conftest import read_model  # noqa: E402

from taskvec import TaskvecError  # noqa: E402
from taskvec.lora_export import extract_lora, split_svd  # noqa: E402


def llama_pair(tmp_path, delta_rank=2):
    """A tiny LLaMA and a 'fine-tune': rank-`delta_rank` changes to q/v/down, a changed norm and embedding rows."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(t in name for t in ("q_proj", "v_proj", "down_proj")):
                p.add_(torch.randn(p.shape[0], delta_rank) @ torch.randn(delta_rank, p.shape[1]) * 0.01)
            elif name.endswith("norm.weight") or "embed_tokens" in name:
                p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path / "ft")
    return tmp_path / "base", tmp_path / "ft"


def peft_merge(base, adapter, cls=transformers.LlamaForCausalLM):
    model = peft.PeftModel.from_pretrained(cls.from_pretrained(base), adapter)
    return {k: v.detach() for k, v in model.merge_and_unload().state_dict().items()}


def test_an_exact_rank_adapter_gives_the_fine_tune_back_through_peft(tmp_path):
    base, ft = llama_pair(tmp_path)
    export = extract_lora(base, ft, tmp_path / "adapter", rank=2)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 2 and "model.layers.0.self_attn.q_proj" in config["target_modules"]
    assert set(config["modules_to_save"]) >= {"model.embed_tokens", "model.norm", "model.layers.1.input_layernorm"}
    assert all(e > 0.999999 for _, e in export.factors.values())  # rank 2 holds all of a rank-2 change
    merged, want = peft_merge(base, tmp_path / "adapter"), read_model(ft)
    for name, value in want.items():
        torch.testing.assert_close(merged[name], value, rtol=1e-5, atol=2e-6, msg=name)


def test_energy_picks_ranks_per_matrix_and_peft_reads_the_pattern(tmp_path):
    base, ft = llama_pair(tmp_path, delta_rank=6)
    export = extract_lora(base, ft, tmp_path / "adapter", energy=0.5)
    ranks = {m: k for m, (k, _) in export.factors.items()}
    assert min(ranks.values()) >= 1 and max(ranks.values()) <= 6
    assert all(e >= 0.5 for _, e in export.factors.values())
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["rank_pattern"] == config["alpha_pattern"] == {m: k for m, k in ranks.items() if k != config["r"]}
    merged, want, original = peft_merge(base, tmp_path / "adapter"), read_model(ft), read_model(base)
    name = "model.layers.0.self_attn.q_proj.weight"  # the best rank-k approximation, as the SVD says
    a, b, _ = split_svd(want[name] - original[name], ranks["model.layers.0.self_attn.q_proj"], None)
    torch.testing.assert_close(merged[name], original[name] + b @ a, rtol=1e-5, atol=2e-6)


def test_gpt2_conv1d_weights_and_their_biases(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "c_attn" in name or "c_fc" in name or "wte" in name:
                p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path / "ft")
    want = read_model(tmp_path / "ft")
    for embeddings in (False, True):  # with LoRA on embeddings PEFT refuses lora_bias: the biased layers go whole
        out = tmp_path / f"adapter-{embeddings}"
        extract_lora(tmp_path / "base", tmp_path / "ft", out, rank=32, lora_embeddings=embeddings)  # full rank
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["fan_in_fan_out"] and config["lora_bias"] != embeddings
        merged = peft_merge(tmp_path / "base", out, transformers.GPT2LMHeadModel)
        for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
                     "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.bias", "transformer.wte.weight"):
            torch.testing.assert_close(merged[name], want[name], rtol=1e-5, atol=2e-6, msg=name)


def test_the_command_prints_energy_and_size_and_refuses_bad_options(tmp_path, cli):
    base, ft = llama_pair(tmp_path)
    _, out = cli("extract-lora", "--base", base, "--finetuned", ft, "--out", tmp_path / "a", "--rank", "2")
    assert "LoRA matrices, rank 2-2, energy kept mean 1.000" in out and "MB" in out
    code, out = cli("extract-lora", "--base", base, "--finetuned", ft, "--out", tmp_path / "b", ok=False)
    assert code != 0 and "give --rank R or --energy E" in out
    with pytest.raises(TaskvecError, match="--energy must be in"):
        extract_lora(base, ft, tmp_path / "c", energy=1.5)


def test_lora_on_embeddings_when_asked(tmp_path):
    base, ft = llama_pair(tmp_path)
    extract_lora(base, ft, tmp_path / "adapter", rank=32, lora_embeddings=True)  # 32 = the embeddings' full rank
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert "model.embed_tokens" in config["target_modules"]
    assert "model.embed_tokens" not in (config["modules_to_save"] or [])
    merged, want = peft_merge(base, tmp_path / "adapter"), read_model(ft)
    torch.testing.assert_close(merged["model.embed_tokens.weight"], want["model.embed_tokens.weight"], rtol=1e-5,
                               atol=2e-6)


def test_taskvec_reads_back_what_it_wrote(tmp_path):
    from taskvec import MergeOptions, TaskVector

    base, ft = llama_pair(tmp_path)
    extract_lora(base, ft, tmp_path / "adapter", rank=32, lora_embeddings=True)
    TaskVector.from_adapter(tmp_path / "adapter", base).apply(base, tmp_path / "out",
                                                              options=MergeOptions(progress=False))
    got, want = read_model(tmp_path / "out"), read_model(ft)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=2e-6, msg=name)


def test_a_merge_written_as_an_adapter_is_the_merge(tmp_path, cli):
    base, ft = llama_pair(tmp_path)  # two rank-2 fine-tunes: their sum has rank 4 at most
    other = transformers.LlamaForCausalLM.from_pretrained(ft)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if "q_proj" in name:
                p.add_(torch.randn(p.shape[0], 2) @ torch.randn(2, p.shape[1]) * 0.01)
    other.save_pretrained(tmp_path / "ft2")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                      f"  - model: {ft}\n    parameters: {{weight: 0.5}}\n"
                      f"  - model: {tmp_path / 'ft2'}\n    parameters: {{weight: 0.5}}\n")
    cli("merge", recipe, "--out", tmp_path / "full", "--quiet")
    _, out = cli("merge", recipe, "--out", tmp_path / "adapter", "--out-format", "lora", "--rank", "4", "--quiet")
    assert "LoRA matrices" in out and not any(p.name.startswith(".adapter") for p in tmp_path.iterdir())
    merged, want = peft_merge(base, tmp_path / "adapter"), read_model(tmp_path / "full")
    for name, value in want.items():
        torch.testing.assert_close(merged[name], value, rtol=1e-5, atol=2e-6, msg=name)
    code, out = cli("merge", recipe, "--out", tmp_path / "x", "--out-format", "lora", ok=False)
    assert code != 0 and "give --rank R or --energy E" in out and not (tmp_path / "x").exists()
