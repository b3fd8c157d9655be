"""AdaMerging: label-free coefficients on tiny BERT models built here, their recipes, and a hand-checkable case."""

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import read_model, run
from taskvec import parse_recipe
from taskvec.errors import TaskvecError
from taskvec.evaluate import load_tasks
from taskvec.tune.adamerging import _Stacks, _Vectors, adamerge, merged_weights, plot_coefficients, recipe_for
from test_eval import VOCAB, bert_config, tasks_file, tokenizer, write

WORDS = VOCAB[5:12] + VOCAB[15:18]
FROZEN = "embeddings.position_embeddings.weight"  # equal to the base in every model
LAST_NORM = "encoder.layer.1.output.LayerNorm"


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small gain nothing from threads, which only stall when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))) for _ in range(n)]


def data_csv(path: Path, labels: list[str], n: int = 12) -> Path:
    return write(path, "text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(texts(n), labels)))


def head(path: Path, classes: int, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    save_file({"weight": torch.randn(classes, 32, generator=g) * 3, "bias": torch.zeros(classes)}, path)
    return path


def save(model, folder: Path, with_tokenizer: bool = False) -> Path:
    model.save_pretrained(folder)
    if with_tokenizer:
        tokenizer(folder).save_pretrained(folder)
    return folder


@pytest.fixture
def classifiers(tmp_path):
    """A BERT classifier base (names carry 'bert.') and three fine-tunes: every float tensor but FROZEN perturbed.
    Task 'sent' uses the model's own classifier; task 'topic' a head file over the encoder."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    base = BertForSequenceClassification(bert_config(num_labels=2))
    save(base, tmp_path / "base", with_tokenizer=True)
    models = []
    for k in range(3):
        model = BertForSequenceClassification(bert_config(num_labels=2))
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not name.endswith(FROZEN):
                    p.add_(torch.randn_like(p) * 0.1)
        models.append(save(model, tmp_path / f"ft{k}"))
    head(tmp_path / "topic.safetensors", 3, seed=1)
    labels = ["a", "b", "c"] * 4
    data_csv(tmp_path / "sent.csv", ["pos", "neg"] * 6)
    data_csv(tmp_path / "topic.csv", labels)
    shuffled = labels[:]
    random.Random(1).shuffle(shuffled)
    data_csv(tmp_path / "topic_scrambled.csv", shuffled)
    data_csv(tmp_path / "sent_scrambled.csv", ["neg"] * 12)
    return tmp_path, tmp_path / "base", models


def tasks(folder: Path, suffix: str = "") -> list:
    return load_tasks(tasks_file(folder, f"  - {{name: sent, type: classification, data: sent{suffix}.csv}}\n"
                                         f"  - {{name: topic, type: classification, data: topic{suffix}.csv, "
                                         f"head: topic.safetensors}}\n"))


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_labels_are_never_read(classifiers, granularity):
    """Scrambled (and constant) labels give the very same coefficients; a different seed draws other batches."""
    folder, base, models = classifiers
    models = models[:2]
    kw = dict(granularity=granularity, steps=4, lr=0.01, batch_size=3)
    a = adamerge(base, models, tasks(folder), **kw)
    b = adamerge(base, models, tasks(folder, "_scrambled"), **kw)
    assert a.coefficients == b.coefficients and a.history == b.history
    assert any(v != 0.3 for c in a.coefficients for v in c.values())  # they did move
    assert FROZEN not in a.coefficients[0] or granularity == "task"
    other = adamerge(base, models, tasks(folder), seed=1, **kw)
    assert other.coefficients != a.coefficients


@pytest.fixture
def norm_scaled(tmp_path):
    """A BERT encoder whose last LayerNorm has zero bias: its weight scales the pooled states and so every logit
    of a zero-bias head. Model 'up' scales it by 1.5, model 'down' by 0.5, nothing else changes. The merged scale is
    1 + 0.5 * (lambda_up - lambda_down), and the entropy of softmax(s * z) falls as s grows: lambda_up must rise and
    lambda_down fall."""
    from transformers import BertModel

    torch.manual_seed(0)
    base = BertModel(bert_config())
    with torch.no_grad():
        base.get_submodule(LAST_NORM).bias.zero_()
    save(base, tmp_path / "base", with_tokenizer=True)
    models = []
    for label, factor in (("up", 1.5), ("down", 0.5)):
        model = BertModel(bert_config())
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            model.get_submodule(LAST_NORM).weight.mul_(factor)
        models.append(save(model, tmp_path / label))
    head(tmp_path / "h1.safetensors", 3, seed=1)
    head(tmp_path / "h2.safetensors", 4, seed=2)
    data_csv(tmp_path / "t1.csv", ["x"] * 8, n=8)
    data_csv(tmp_path / "t2.csv", ["y"] * 8, n=8)
    body = "".join(f"  - {{name: t{i}, type: classification, data: t{i}.csv, head: h{i}.safetensors}}\n"
                   for i in (1, 2))
    spec = load_tasks(tasks_file(tmp_path, body))
    return tmp_path / "base", models, spec


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_first_adam_step_moves_each_lambda_by_lr(norm_scaled, granularity):
    base, models, spec = norm_scaled
    still = adamerge(base, models, spec, granularity=granularity, steps=0)
    assert still.history == [] and {v for c in still.coefficients for v in c.values()} == {0.3}
    one = adamerge(base, models, spec, granularity=granularity, steps=1, lr=1e-3)
    weight = f"{LAST_NORM}.weight"
    up, down = one.coefficients[0][weight], one.coefficients[1][weight]
    # Adam's first step is lr * g / (|g| + eps): lr against the gradient's sign
    assert up == pytest.approx(0.3 + 1e-3, abs=1e-6) and down == pytest.approx(0.3 - 1e-3, abs=1e-6)
    if granularity == "layer":  # only the scaled tensor has lambdas; the rest is frozen
        assert list(one.coefficients[0]) == [weight] and FROZEN in one.frozen and weight not in one.frozen
    else:
        assert one.task_coefficients == [up, down]


def test_entropy_falls_step_by_step(norm_scaled):
    base, models, spec = norm_scaled
    seen = []
    result = adamerge(base, models, spec, steps=12, lr=0.02, progress=lambda step, h: seen.append((step, h)))
    entropy = [h["entropy"] for h in result.history]
    assert seen == [(h["step"], h["entropy"]) for h in result.history] and len(seen) == 12
    assert all(b < a for a, b in zip(entropy, entropy[1:])), entropy
    assert entropy[-1] < entropy[0] - 0.01
    assert result.task_coefficients[0] > 0.5 and result.task_coefficients[1] < 0.1
    assert set(result.history[0]["per_task"]) == {"t1", "t2"}


@pytest.mark.parametrize("granularity,plus", [("task", False), ("layer", False), ("task", True), ("layer", True)])
def test_recipe_reproduces_the_learned_merge_bit_for_bit(classifiers, tmp_path, granularity, plus):
    """`taskvec merge` of recipe_for's recipe equals merged_weights exactly: the same float32 operations in the same
    order (the engine sums the models sorted by reference, and so does AdaMerging)."""
    folder, base, models = classifiers
    models = [models[1], models[2], models[0]]  # not in the engine's order: sums of three depend on it
    result = adamerge(base, models, tasks(folder), granularity=granularity, plus=plus, density=0.3, steps=3, lr=0.05,
                      batch_size=4)
    mine = merged_weights(result, base, models)
    recipe = recipe_for(result, str(base), [str(m) for m in models])
    assert recipe["merge_method"] == ("ties" if plus else "task_arithmetic")
    run(parse_recipe(recipe), tmp_path / "out")
    theirs = read_model(tmp_path / "out")
    assert set(theirs) == set(mine)
    different = [n for n in mine if not torch.equal(mine[n], theirs[n])]
    assert not different, different
    # what learning computes (matrix-vector products) is the same merge up to float32 rounding
    vectors = _Vectors(base, models, plus, 0.3, "cpu")
    names = [n for n in vectors.names if n not in vectors.frozen]
    stacks = _Stacks(vectors, names)
    for name in names:
        lambdas = torch.tensor([c[name] for c in result.coefficients], dtype=torch.float32)
        assert torch.allclose(stacks.merge(name, lambdas), mine[name], rtol=0, atol=1e-6), name
    # and the coefficients matter: the plain task-arithmetic merge at 0.3 is another model
    if plus:
        assert result.density == 0.3 and recipe["models"][0]["parameters"]["density"] == 0.3
    weight = "bert.encoder.layer.0.attention.self.query.weight"
    base_w = read_model(base)[weight]
    plain = base_w + sum(0.3 * (read_model(m)[weight] - base_w) for m in models)
    assert not torch.allclose(mine[weight], plain, atol=1e-5)


def test_layer_recipe_conditions_pick_each_tensor(classifiers):
    """Longest names first, so that no filter is a substring of a later tensor's name; a final catch-all."""
    from taskvec.parameters import evaluate

    folder, base, models = classifiers
    result = adamerge(base, models[:2], tasks(folder), granularity="layer", steps=2, lr=0.05)
    recipe = recipe_for(result, str(base))
    for k, entry in enumerate(recipe["models"]):
        conditions = entry["parameters"]["weight"]
        assert "filter" not in conditions[-1]
        for name, value in result.coefficients[k].items():
            assert evaluate(conditions, name, 0.0) == value
    assert len(set(result.coefficients[0].values())) > 1


def test_non_classification_task_is_one_error_line(norm_scaled, tmp_path):
    base, models, spec = norm_scaled
    write(tmp_path / "text.txt", "the movie is good\n")
    lm = load_tasks(tasks_file(tmp_path, "  - {name: lm, type: language_modeling, data: text.txt}\n"))
    with pytest.raises(TaskvecError) as e:
        adamerge(base, models, spec + lm, steps=1)
    message = str(e.value)
    assert "\n" not in message and "task 'lm'" in message and "classification tasks only" in message


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_plot_and_json(norm_scaled, tmp_path, granularity):
    base, models, spec = norm_scaled
    result = adamerge(base, models, spec, granularity=granularity, steps=2)
    plot_coefficients(result, tmp_path / "lambdas.png")
    assert (tmp_path / "lambdas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = result.to_json()
    assert data["granularity"] == granularity and len(data["history"]) == 2
    assert data["models"] == [str(m) for m in models]


@pytest.mark.parametrize("extra", [[], ["--plus"]])
def test_tune_adamerging_cli_writes_a_recipe_that_merge_reproduces(classifiers, cli, extra):
    """`taskvec tune --adamerging`: coefficients JSON, plot, a recipe, held-out scores, and --merge equal to
    `taskvec merge best.yaml`. A recipe with searched values is refused (AdaMerging picks the weights)."""
    import json

    import yaml

    folder, base, models = classifiers
    write(folder / "data.csv", "text,label,split\n" + "".join(
        f"{t},{y},{s}\n" for t, y, s in zip(texts(16), ["a", "b", "c", "a"] * 4, ["val", "test"] * 8)))
    tasks_path = tasks_file(folder, "  - {name: topic, type: classification, data: data.csv, split_column: split,"
                                    " split: test, tune_split: val, head: topic.safetensors, reference: 0.5}\n")
    recipe = write(folder / "r.yaml", "merge_method: task_arithmetic\nbase_model: base\nmodels:\n"
                   "  - {model: ft0, parameters: {weight: 1}}\n  - {model: ft1, parameters: {weight: 1}}\n")
    code, out = cli("tune", recipe, "--tasks", tasks_path, "--out", folder / "o" / "best.yaml", "--adamerging",
                    "layer", "--steps", "3", "--lr", "0.01", "--merge", folder / "merged", "-q", *extra)
    assert "held-out" in out and "topic" in out
    learned = json.loads((folder / "o" / "best.adamerging.json").read_text())
    assert learned["granularity"] == "layer" and learned["plus"] == bool(extra)
    assert learned["held_out"]["results"][0]["examples"] == 8
    assert (folder / "o" / "best.adamerging.png").stat().st_size > 1000
    best = yaml.safe_load((folder / "o" / "best.yaml").read_text())
    assert best["merge_method"] == ("ties" if extra else "task_arithmetic")
    assert best["models"][0]["model"] == "../ft0" and isinstance(best["models"][0]["parameters"]["weight"], list)
    cli("merge", folder / "o" / "best.yaml", "--out", folder / "again", "-q")
    again, merged = read_model(folder / "again"), read_model(folder / "merged")
    assert all(torch.equal(again[n], merged[n]) for n in again)
    searched = write(folder / "s.yaml", recipe.read_text().replace("weight: 1}", "weight: {search: [0, 1]}}"))
    code, out = cli("tune", searched, "--tasks", tasks_path, "--out", folder / "x.yaml", "--adamerging", "task",
                    ok=False)
    assert code == 2 and "AdaMerging learns the weights itself" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_on_cuda_the_coefficients_match_the_cpu(classifiers, granularity):
    """--device cuda differentiates on the GPU: the same coefficients as the CPU up to float32 rounding, and the
    merged model --merge writes (back on the CPU) loads like any other. One exception, measured on an H200: the
    entropy does not depend on attention key biases (softmax ignores a shift shared by all keys), so their gradients
    are rounding noise (~1e-13) that Adam scales up differently on each device (up to 8e-5 apart after 4 steps)."""
    folder, base, models = classifiers
    kw = dict(granularity=granularity, steps=4, lr=0.01, batch_size=3)
    cpu = adamerge(base, models[:2], tasks(folder), **kw)
    gpu = adamerge(base, models[:2], tasks(folder), device="cuda", **kw)
    assert [c.keys() for c in gpu.coefficients] == [c.keys() for c in cpu.coefficients]
    for c, g in zip(cpu.coefficients, gpu.coefficients):
        for name in c:
            tolerance = 1e-3 if name.endswith("attention.self.key.bias") and granularity == "layer" else 1e-5
            assert g[name] == pytest.approx(c[name], abs=tolerance), name
    assert [h["entropy"] for h in gpu.history] == pytest.approx([h["entropy"] for h in cpu.history], rel=1e-4)
    weights = merged_weights(gpu, base, device="cuda")
    on_cpu = merged_weights(gpu, base)
    assert all(weights[n].device.type == "cpu" and torch.allclose(weights[n], on_cpu[n], atol=1e-6) for n in on_cpu)
