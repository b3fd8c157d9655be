"""taskvec eval and taskvec.evaluate: tasks files, the three task types on tiny models built from configs, in-memory
weights, and every tasks-file error as one line."""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import write_model
from taskvec.errors import TaskvecError
from taskvec.evaluate import evaluate, load_tasks, summary

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "film", "the", "is", "very",
         "user", "assistant", ":", "hello", "world", "fine"]

SCORE_PY = '''
import torch

TARGET = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[0.0, 1.0]])}


def closeness(weights: dict[str, torch.Tensor]) -> float:
    return -sum(float(((weights[n].float() - t) ** 2).sum()) for n, t in TARGET.items())


def not_a_number(weights):
    return float("nan")


def text(weights):
    return "high"
'''


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def tasks_file(folder: Path, body: str) -> Path:
    return write(folder / "tasks.yaml", "tasks:\n" + body)


def python_tasks(tmp_path: Path, extra: str = "") -> Path:
    """The README's minimal tasks file, verbatim."""
    write(tmp_path / "score.py", SCORE_PY)
    return tasks_file(tmp_path, "  - name: closeness\n    type: python\n"
                                "    function: score.py:closeness   # def closeness(weights) -> float\n" + extra)


def one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in output and lines[0].startswith("error: "), output
    return lines[0]


# ---- python tasks --------------------------------------------------------------------------------------------------

def test_minimal_python_task_scores_a_model_folder(tmp_path, cli):
    model = write_model(tmp_path / "model", {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.0, 2.0]])})
    tasks = python_tasks(tmp_path)
    code, out = cli("eval", model, "--tasks", tasks, "--json", tmp_path / "out.json")
    # -((1-0)^2 + (2-0)^2 + (0-0)^2 + (2-1)^2) = -6
    assert "closeness" in out and "-6" in out
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["results"][0] | {"seconds": 0} == {
        "name": "closeness", "type": "python", "metric": "score", "score": -6.0, "extra": {}, "normalized": None,
        "examples": 1, "seconds": 0, "weight": 1.0}
    assert data["model"] == str(model) and data["tasks_file"] == str(tasks) and data["device"] == "cpu"
    assert data["summary"] == {"mean_score": -6.0, "mean_normalized": None}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.json")]  # no temp file left


def test_python_task_on_weights_in_memory_needs_no_folder(tmp_path):
    tasks = python_tasks(tmp_path, "    reference: -2.0\n    weight: 3\n")
    weights = {"a": torch.tensor([0.5, 0.0]), "b": torch.tensor([[0.0, 0.0]])}
    [r] = evaluate(weights, tasks)  # -(0.25 + 1) = -1.25; normalized -1.25 / -2
    assert (r.score, r.normalized, r.weight) == (-1.25, 0.625, 3.0)
    assert summary([r]) == {"mean_score": -1.25, "mean_normalized": 0.625}


def test_module_function_form(tmp_path, monkeypatch):
    write(tmp_path / "my_scores.py", SCORE_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    tasks = tasks_file(tmp_path, "  - {name: c, type: python, function: 'my_scores:closeness'}\n")
    [r] = evaluate({"a": torch.zeros(2), "b": torch.tensor([[0.0, 1.0]])}, tasks)
    assert r.score == 0.0


# ---- tiny transformers models --------------------------------------------------------------------------------------

def tokenizer(folder: Path, chat: bool = False):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "vocab.txt", "\n".join(VOCAB) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"))
    if chat:
        tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                             "{% if add_generation_prompt %}assistant :{% endif %}")
    return tok


def bert_config(**kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, **kw)


@pytest.fixture
def classifier(tmp_path):
    """A BERT classifier whose zeroed classifier and bias (0, 5) make it answer 'pos' for every text."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    folder = tmp_path / "clf"
    model = BertForSequenceClassification(bert_config(num_labels=2, id2label={0: "neg", 1: "pos"},
                                                      label2id={"neg": 0, "pos": 1}))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 5.0]))
    model.save_pretrained(folder)
    tokenizer(folder).save_pretrained(folder)
    return folder


SENTIMENT = """text,label,split
good movie,pos,test
the film is good,pos,test
very good,pos,test
fine film,pos,test
bad movie,neg,test
the film is bad,neg,test
bad,neg,train
very bad,neg,train
bad bad,neg,validation
"""


def test_classification_accuracy_and_macro_f1(tmp_path, classifier, cli):
    write(tmp_path / "data.csv", SENTIMENT)
    tasks = tasks_file(tmp_path, "  - {name: sentiment, type: classification, data: data.csv, split_column: split,"
                                 " split: test, batch_size: 4, reference: 0.8}\n")
    [r] = evaluate(classifier, tasks)
    # always 'pos' on the test split: 4 of 6 right; F1(pos) = 8/10, F1(neg) = 0 -> macro 0.4
    assert (r.metric, r.examples) == ("accuracy", 6)
    assert r.score == pytest.approx(4 / 6) and r.extra["macro_f1"] == pytest.approx(0.4)
    assert r.normalized == pytest.approx(4 / 6 / 0.8)
    code, out = cli("eval", classifier, "--tasks", tasks)
    assert "sentiment" in out and "0.666667" in out and "sentiment: macro_f1=0.4" in out


def test_classification_scores_weights_held_in_memory(tmp_path, classifier):
    """The folder gives config and tokenizer; the candidate's weights (bias flipped to 'neg') are never written."""
    from transformers import AutoModelForSequenceClassification

    write(tmp_path / "data.csv", SENTIMENT)
    tasks = tasks_file(tmp_path, "  - {name: s, type: classification, data: data.csv, split_column: split,"
                                 " split: test}\n")
    weights = AutoModelForSequenceClassification.from_pretrained(classifier).state_dict()
    weights["classifier.bias"] = torch.tensor([5.0, 0.0])
    before = sorted(p.name for p in classifier.iterdir())
    [r] = evaluate(weights, tasks, model_folder=classifier)
    assert r.score == pytest.approx(2 / 6)
    assert sorted(p.name for p in classifier.iterdir()) == before


def test_classification_with_a_head_file_over_an_encoder(tmp_path):
    """An encoder saved alone, with head.safetensors beside it (the proof suite's layout): the head's bias picks
    class 2 ('c') whatever the pooled states are."""
    from safetensors.torch import save_file
    from transformers import BertModel

    torch.manual_seed(0)
    folder = tmp_path / "encoder"
    BertModel(bert_config()).save_pretrained(folder)
    tokenizer(folder).save_pretrained(folder)
    save_file({"weight": torch.zeros(3, 32), "bias": torch.tensor([0.0, 0.0, 1.0])}, folder / "head.safetensors")
    rows = [("good movie", "a"), ("bad film", "c"), ("hello", "b"), ("world", "c"), ("fine", "a")]
    write(tmp_path / "data.jsonl", "".join(json.dumps({"sentence": t, "y": y}) + "\n" for t, y in rows))
    tasks = tasks_file(tmp_path, "  - {name: abc, type: classification, data: data.jsonl, text_column: sentence,"
                                 " label_column: y, labels: [a, b, c], head: encoder/head.safetensors}\n")
    [r] = evaluate(folder, tasks)
    # always 'c': 2 of 5 right; F1(c) = 2·2 / (2·2 + 3 + 0) = 4/7, F1(a) = F1(b) = 0
    assert r.score == pytest.approx(2 / 5) and r.extra["macro_f1"] == pytest.approx((4 / 7) / 3)


def test_classification_labels_as_numbers(tmp_path, classifier):
    """JSONL labels 0/1 and YAML `labels: [0, 1]` compare as text; class 1 always wins."""
    rows = [("good", 1), ("bad", 0), ("fine", 1)]
    write(tmp_path / "data.jsonl", "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    tasks = tasks_file(tmp_path, "  - {name: n, type: classification, data: data.jsonl, labels: [0, 1]}\n")
    [r] = evaluate(classifier, tasks)
    assert r.score == pytest.approx(2 / 3)


def test_classification_folder_without_a_head_is_an_error(tmp_path):
    from transformers import BertModel

    folder = tmp_path / "encoder"
    BertModel(bert_config()).save_pretrained(folder)
    tokenizer(folder).save_pretrained(folder)
    write(tmp_path / "data.csv", SENTIMENT)
    tasks = tasks_file(tmp_path, "  - {name: s, type: classification, data: data.csv}\n")
    with pytest.raises(TaskvecError, match="task 's'.*classifier.*'head'"):
        evaluate(folder, tasks)


def test_weights_in_memory_can_supply_the_head_the_folder_lacks(tmp_path, classifier):
    """A headless encoder folder gives config and tokenizer; the candidate's classifier comes from the dict (and
    tensors named without the 'bert.' prefix, as a bare encoder saves them, find their place)."""
    from transformers import AutoModelForSequenceClassification, BertModel

    folder = tmp_path / "encoder"
    BertModel(bert_config(num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
              ).save_pretrained(folder)
    tokenizer(folder).save_pretrained(folder)
    full = AutoModelForSequenceClassification.from_pretrained(classifier).state_dict()
    weights = {n.removeprefix("bert."): t for n, t in full.items()}
    write(tmp_path / "data.csv", SENTIMENT)
    tasks = tasks_file(tmp_path, "  - {name: s, type: classification, data: data.csv, split_column: split,"
                                 " split: test}\n")
    [r] = evaluate(weights, tasks, model_folder=folder)
    assert r.score == pytest.approx(4 / 6)
    with pytest.raises(TaskvecError, match="lacks classifier"):
        evaluate({n: t for n, t in weights.items() if not n.startswith("classifier")}, tasks, model_folder=folder)


@pytest.fixture
def llama(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path / "llama"
    config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer(folder, chat=True).save_pretrained(folder)
    return folder


def direct_nll(folder: Path, examples: list[tuple[list[int], int]]) -> float:
    """Mean NLL per scored token, one example at a time through transformers' own loss."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    total = tokens = 0
    with torch.no_grad():
        for ids, skip in examples:
            labels = torch.tensor([[-100] * skip + ids[skip:]])
            loss = model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
            n = len(ids) - max(skip, 1)
            total, tokens = total + loss * n, tokens + n
    return total / tokens


def test_language_modeling_nll_per_token(tmp_path, llama, cli):
    from transformers import AutoTokenizer

    lines = ["the movie is very good", "bad", "hello world", "the film is fine and good"]  # 'and' is [UNK]
    write(tmp_path / "text.txt", "\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    tasks = tasks_file(tmp_path, "  - {name: lm, type: language_modeling, data: text.txt, batch_size: 3}\n")
    [r] = evaluate(llama, tasks)
    tok = AutoTokenizer.from_pretrained(llama)
    expected = direct_nll(llama, [(tok(t)["input_ids"], 0) for t in lines])
    assert (r.metric, r.examples) == ("neg_nll", 4)
    assert r.extra["nll"] == pytest.approx(expected, rel=1e-5) and r.score == -r.extra["nll"]
    assert r.extra["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert r.extra["tokens"] == sum(len(tok(t)["input_ids"]) - 1 for t in lines)
    code, out = cli("eval", llama, "--tasks", tasks)
    assert "neg_nll" in out and "higher is better" in out


def test_language_modeling_chat_scores_only_the_response(tmp_path, llama):
    from transformers import AutoTokenizer

    pairs = [("hello", "good movie"), ("the film is", "very bad")]
    write(tmp_path / "chat.jsonl", "".join(json.dumps({"prompt": p, "response": a}) + "\n" for p, a in pairs))
    tasks = tasks_file(tmp_path, "  - {name: chat, type: language_modeling, data: chat.jsonl, chat: true}\n")
    [r] = evaluate(llama, tasks)
    tok = AutoTokenizer.from_pretrained(llama)
    examples = []
    for p, a in pairs:  # the template, written out: "user : P assistant :" then " A " scored
        prompt = tok(f"user : {p} assistant :", add_special_tokens=False)["input_ids"]
        examples.append((prompt + tok(f" {a} ", add_special_tokens=False)["input_ids"], len(prompt)))
    assert r.extra["tokens"] == 4
    assert r.extra["nll"] == pytest.approx(direct_nll(llama, examples), rel=1e-5)
    assert r.extra["nll"] != pytest.approx(direct_nll(llama, [(ids, 0) for ids, _ in examples]), rel=1e-3)


# ---- bad tasks files: one error line, status 2 ---------------------------------------------------------------------

BAD = {
    "unknown field": ("  - {name: c, type: python, function: 'score.py:closeness', wieght: 2}\n",
                      ["task 'c'", "unknown field 'wieght'"]),
    "unknown type": ("  - {name: c, type: regression}\n", ["task 'c'", "unknown type 'regression'",
                                                             "language_modeling"]),
    "missing field": ("  - {name: c, type: classification}\n", ["task 'c'", "missing required field 'data'"]),
    "missing data file": ("  - {name: c, type: classification, data: nope.csv}\n",
                          ["task 'c'", "nope.csv does not exist"]),
    "missing column": ("  - {name: c, type: classification, data: data.csv, text_column: sentence}\n",
                       ["task 'c'", "no column 'sentence'", "columns found: text, label, split"]),
    "unknown label": ("  - {name: c, type: classification, data: data.csv, labels: [pos]}\n",
                      ["task 'c'", "label 'neg' in data.csv is not in labels"]),
    "empty split": ("  - {name: c, type: classification, data: data.csv, split_column: split, split: dev}\n",
                    ["task 'c'", "split 'dev' of data.csv has no rows; splits found: test, train, validation"]),
    "function not found": ("  - {name: c, type: python, function: 'score.py:nearness'}\n",
                           ["task 'c'", "score.py has no function 'nearness'"]),
    "function file missing": ("  - {name: c, type: python, function: 'scores.py:closeness'}\n",
                              ["task 'c'", "scores.py does not exist"]),
    "not finite": ("  - {name: c, type: python, function: 'score.py:not_a_number'}\n",
                   ["task 'c'", "returned nan", "finite"]),
    "not a number": ("  - {name: c, type: python, function: 'score.py:text'}\n",
                     ["task 'c'", "returned str, not a number"]),
    "duplicate name": ("  - {name: c, type: python, function: 'score.py:closeness'}\n"
                       "  - {name: c, type: python, function: 'score.py:closeness'}\n", ["'c' appears twice"]),
    "no tasks": ("", ["non-empty list 'tasks'"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_tasks_file_is_one_error_line(tmp_path, cli, case):
    body, fragments = BAD[case]
    model = write_model(tmp_path / "model", {"a": torch.zeros(2), "b": torch.zeros(1, 2)})
    write(tmp_path / "score.py", SCORE_PY)
    write(tmp_path / "data.csv", SENTIMENT)
    tasks = tasks_file(tmp_path, body)
    code, out = cli("eval", model, "--tasks", tasks, "--json", tmp_path / "out.json", ok=False)
    line = one_error_line(out)
    assert code == 2 and str(tasks) in line, line
    assert all(f in line for f in fragments), line
    assert not (tmp_path / "out.json").exists()


def test_missing_tasks_file_and_model(tmp_path, cli):
    code, out = cli("eval", tmp_path, "--tasks", tmp_path / "none.yaml", ok=False)
    assert code == 2 and "none.yaml" in one_error_line(out)
    tasks = python_tasks(tmp_path)
    code, out = cli("eval", tmp_path / "nomodel", "--tasks", tasks, ok=False)
    assert code == 2 and "nomodel" in one_error_line(out)


def test_transformers_task_without_a_folder_says_so(tmp_path):
    write(tmp_path / "data.csv", SENTIMENT)
    tasks = load_tasks(tasks_file(tmp_path, "  - {name: s, type: classification, data: data.csv}\n"))
    with pytest.raises(TaskvecError, match="task 's'.*model_folder"):
        evaluate({"x": torch.zeros(1)}, tasks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_scores_match_the_cpu(tmp_path, classifier, llama):
    write(tmp_path / "data.csv", SENTIMENT)
    write(tmp_path / "text.txt", "the movie is very good\nhello world\n")
    tasks = tasks_file(tmp_path, "  - {name: lm, type: language_modeling, data: text.txt}\n")
    [cpu], [gpu] = evaluate(llama, tasks), evaluate(llama, tasks, device="cuda")
    assert gpu.extra["nll"] == pytest.approx(cpu.extra["nll"], rel=1e-4)
    tasks = tasks_file(tmp_path, "  - {name: s, type: classification, data: data.csv}\n")
    assert evaluate(classifier, tasks, device="cuda")[0].score == pytest.approx(4 / 9)


def test_an_evaluator_reuses_its_models_and_restores_what_a_candidate_lacks(tmp_path, classifier):
    """Candidate 1 flips the bias to 'neg'; candidate 2 gives only the classifier weight: its bias is the folder's
    ('pos' again), not candidate 1's. A buffer the model computes (position_ids) is not an unknown tensor."""
    from transformers import AutoModelForSequenceClassification

    from taskvec.evaluate import Evaluator

    write(tmp_path / "data.csv", SENTIMENT)
    tasks = tasks_file(tmp_path, "  - {name: s, type: classification, data: data.csv, split_column: split,"
                                 " split: test}\n")
    weights = AutoModelForSequenceClassification.from_pretrained(classifier).state_dict()
    evaluator = Evaluator(tasks, classifier)
    flipped = dict(weights, **{"classifier.bias": torch.tensor([5.0, 0.0]),
                               "bert.embeddings.position_ids": torch.arange(64).unsqueeze(0)})
    assert evaluator.score(flipped)[0].score == pytest.approx(2 / 6)
    assert evaluator.score({"classifier.weight": weights["classifier.weight"]})[0].score == pytest.approx(4 / 6)
    assert evaluator.score(flipped)[0].score == pytest.approx(2 / 6)
    assert evaluator.score(None)[0].score == pytest.approx(4 / 6)
    assert len(evaluator._models._models) == 1  # one model, built once
    with pytest.raises(TaskvecError, match="the weights hold 'bert.encoder.layer.9.output.dense.weight'"):
        evaluator.score({"bert.encoder.layer.9.output.dense.weight": torch.zeros(2)})
