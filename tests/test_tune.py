"""taskvec tune: the search space written in the recipe and its errors, TPE finding a known optimum, best.yaml
round-trips through `taskvec merge`, candidates merged in memory equal the merge on disk bit for bit, a resumed
study, tuning vs held-out splits, and Ray workers equal to the serial search."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import EXAMPLES, read_model, toy_tensors, write_model
from taskvec.errors import TaskvecError
from taskvec.tune import space
from taskvec.tune.search import TuneOptions, load_search, tune
from taskvec.tune.worker import Worker

PEAK_PY = '''
import torch

def peak(weights):
    """Highest (0) where the merged row is (0.7, 0.3, 0): task_arithmetic weights a=0.7, b=0.3."""
    return -float(((weights["w"].float() - torch.tensor([0.7, 0.3, 0.0])) ** 2).sum())
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def peak(tmp_path):
    """base 0, model a = row (1, 0, 0), model b = row (0, 1, 0); a python task peaking at weights (0.7, 0.3)."""
    write_model(tmp_path / "base", {"w": torch.zeros(4, 3)})
    write_model(tmp_path / "a", {"w": torch.tensor([[1.0, 0, 0]] * 4)})
    write_model(tmp_path / "b", {"w": torch.tensor([[0, 1.0, 0]] * 4)})
    write(tmp_path / "score.py", PEAK_PY)
    write(tmp_path / "tasks.yaml", "tasks:\n  - {name: peak, type: python, function: score.py:peak}\n")
    return tmp_path


def recipe(folder: Path, a, b, method="task_arithmetic", extra: str = "") -> Path:
    return write(folder / "recipe.yaml", f"merge_method: {method}\nbase_model: base\nmodels:\n"
                 f"  - {{model: a, parameters: {{weight: {a}}}}}\n  - {{model: b, parameters: {{weight: {b}}}}}\n"
                 + extra)


# ---- the search space ----------------------------------------------------------------------------------------------

def test_dimensions_are_found_anywhere_a_value_sits():
    raw = {"merge_method": "ties", "base_model": "b",
           "models": [{"model": "x", "parameters": {"weight": {"search": [0, 1.5]},
                                                    "density": [{"search": [0.1, 1]}, 0.5, {"choices": [0.2, 1]}]}},
                      {"model": "y", "parameters": {"weight": [{"filter": "mlp", "value": {"choices": [1, 2]}},
                                                               {"value": 1.0}]}}],
           "parameters": {"lambda": {"search": [0.1, 10], "log": True}}}
    dims = space.find_dimensions(raw)
    assert [d.name for d in dims] == ["models[0].weight", "models[0].density[0]", "models[0].density[2]",
                                      "models[1].weight[0].value", "lambda"]
    assert (dims[0].low, dims[0].high, dims[4].log, dims[2].choices) == (0.0, 1.5, True, (0.2, 1))
    plain = space.substitute(raw, dims, {"models[0].weight": 0.25, "models[0].density[0]": 0.5,
                                         "models[0].density[2]": 1, "models[1].weight[0].value": 2, "lambda": 1.0})
    assert plain["models"][0]["parameters"] == {"weight": 0.25, "density": [0.5, 0.5, 1]}
    assert plain["models"][1]["parameters"]["weight"] == [{"filter": "mlp", "value": 2}, {"value": 1.0}]
    assert plain["parameters"] == {"lambda": 1.0} and raw["parameters"]["lambda"] == {"search": [0.1, 10], "log": True}


def test_grid_points():
    lin = space.Dimension("w", ("parameters", "w"), low=0.0, high=1.0)
    log = space.Dimension("l", ("parameters", "l"), low=0.01, high=1.0, log=True)
    pick = space.Dimension("d", ("parameters", "d"), choices=(0.2, 0.5))
    assert lin.grid(5) == [0.0, 0.25, 0.5, 0.75, 1.0] and lin.grid(1) == [0.0]
    assert log.grid(3) == pytest.approx([0.01, 0.1, 1.0]) and log.grid(3)[-1] <= 1.0
    combos = space.grid([lin, pick], 3)
    assert len(combos) == 6 and combos[:2] == [{"w": 0.0, "d": 0.2}, {"w": 0.0, "d": 0.5}]


@pytest.mark.parametrize("models, params, message", [
    ("  - {model: a, parameters: {weight: 1}}\n", "", "nothing to search"),
    ("  - {model: a, parameters: {weight: {search: [1]}}}\n", "", "two numbers [lo, hi]"),
    ("  - {model: a, parameters: {weight: {search: [2, 1]}}}\n", "", "finite lo <= hi"),
    ("  - {model: a, parameters: {weight: {search: [0, 1], choices: [1]}}}\n", "", "not both"),
    ("  - {model: a, parameters: {weight: {search: [0, 1], step: 0.1}}}\n", "", "unknown key 'step'"),
    ("  - {model: a, parameters: {weight: {choices: []}}}\n", "", "non-empty list"),
    ("  - {model: a, parameters: {weight: {choices: [1, 1]}}}\n", "", "repeat a value"),
    ("  - {model: a, parameters: {weight: {search: [0, 1], log: true}}}\n", "", "needs lo > 0"),
    ("  - {model: {search: [0, 1]}}\n", "", "only parameter values"),
    ("  - {model: a, parameters: {weight: 1, density: {search: [0.0, 0.5]}}}\n", "", "density"),
    ("  - {model: a, parameters: {weight: 1}}\n", "parameters: {lambda: {choices: [1, x]}}\n", "lambda"),
])
def test_bad_search_spaces_are_one_line(tmp_path, models, params, message):
    path = write(tmp_path / "r.yaml", "merge_method: ties\nbase_model: base\nmodels:\n" + models + params)
    with pytest.raises(TaskvecError) as e:
        load_search(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_density_range_reaching_zero_names_the_field_and_the_values(tmp_path):
    path = write(tmp_path / "r.yaml", "merge_method: ties\nbase_model: base\nmodels:\n"
                 "  - {model: a, parameters: {weight: 1, density: {search: [0.0, 0.5]}}}\n")
    with pytest.raises(TaskvecError, match=r"models\[0\]\.parameters\.density.*models\[0\]\.density=0\.0.*narrow"):
        load_search(path)


# ---- searching -----------------------------------------------------------------------------------------------------

def test_tpe_finds_the_known_optimum_of_the_worked_example(tmp_path):
    """examples/tune: the score peaks at weights (0.5, 0.75); 40 TPE trials (seed 0) land within 0.05 of it."""
    result = tune(EXAMPLES / "tune" / "neuron.yaml", EXAMPLES / "tune" / "tasks.yaml", tmp_path / "best.yaml",
                  TuneOptions(trials=40, progress=False), log=lambda _: None)
    mine, colleague = result.best_values["models[0].weight"], result.best_values["models[1].weight"]
    assert abs(mine - 0.5) < 0.05 and abs(colleague - 0.75) < 0.05, (mine, colleague)
    assert len(result.trials) == 40 and result.objective == max(t["objective"] for t in result.trials)
    # the best point's score by hand: the merged neuron is (1 + 2c, 2, -1 - m); wanted (2.5, 2, -1.5)
    by_hand = -((1 + 2 * colleague - 2.5) ** 2 + (-1 - mine + 1.5) ** 2)
    assert result.objective == pytest.approx(by_hand, abs=1e-6)


def test_best_yaml_is_a_plain_recipe_that_merge_runs_from_anywhere(peak, cli, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    code, out = cli("tune", recipe(peak, "{choices: [0.5, 0.7]}", "{search: [0.0, 0.6]}"), "--tasks",
                    peak / "tasks.yaml", "--out", elsewhere / "tuned" / "best.yaml", "--search", "grid",
                    "--grid-points", "3", "--merge", elsewhere / "merged", "-q")
    best = yaml.safe_load((elsewhere / "tuned" / "best.yaml").read_text())
    assert best["base_model"] == os.path.relpath(peak / "base", elsewhere / "tuned")
    assert best["models"] == [{"model": os.path.relpath(peak / "a", elsewhere / "tuned"), "parameters": {"weight": 0.7}},
                              {"model": os.path.relpath(peak / "b", elsewhere / "tuned"), "parameters": {"weight": 0.3}}]
    assert not space.find_dimensions(best)
    # taskvec merge runs it unchanged, from another folder; the same bits as --merge wrote
    cli("merge", elsewhere / "tuned" / "best.yaml", "--out", elsewhere / "again", "-q", cwd=tmp_path_factory.mktemp("x"))
    assert torch.equal(read_model(elsewhere / "again")["w"], torch.tensor([[0.7, 0.3, 0.0]] * 4))
    assert read_model(elsewhere / "again")["w"].equal(read_model(elsewhere / "merged")["w"])
    trace = json.loads((elsewhere / "tuned" / "best.trace.json").read_text())
    assert len(trace["trials"]) == 6 and trace["best"]["values"] == {"models[0].weight": 0.7, "models[1].weight": 0.3}
    csv = (elsewhere / "tuned" / "best.trace.csv").read_text().splitlines()
    assert csv[0] == "trial,models[0].weight,models[1].weight,objective,peak,seconds" and len(csv) == 7
    assert (elsewhere / "tuned" / "best.trace.png").stat().st_size > 1000


@pytest.mark.parametrize("method, extra", [
    ("ties", "parameters: {density: {choices: [0.4, 1.0]}, lambda: 1.2}\nout_dtype: bfloat16\n"),
    ("dare_ties", "parameters: {density: {choices: [0.5, 0.9]}}\n"),
    ("task_arithmetic", "parameters: {lambda: {search: [0.5, 1.5]}}\n"),
])
def test_candidates_in_memory_equal_the_merge_on_disk_bit_for_bit(tmp_path, cli, method, extra):
    write_model(tmp_path / "base", toy_tensors(0))
    write_model(tmp_path / "a", toy_tensors(1))
    write_model(tmp_path / "b", toy_tensors(2))
    search = load_search(recipe(tmp_path, "{search: [0.2, 1.0]}", 0.8, method, extra))
    write(tmp_path / "s.py", "def f(w):\n    return 0.0\n")
    worker = Worker(str(write(tmp_path / "t.yaml", "tasks:\n  - {name: p, type: python, function: s.py:f}\n")),
                    None)
    for values in space.corners(search.dims):
        candidate = search.candidate(values)
        in_memory = worker.weights(candidate)
        path = write(tmp_path / "plain.yaml", yaml.safe_dump(candidate))
        shutil.rmtree(tmp_path / "disk", ignore_errors=True)
        cli("merge", path, "--out", tmp_path / "disk", "-q")
        on_disk = read_model(tmp_path / "disk")
        assert set(in_memory) == set(on_disk)
        for name, t in on_disk.items():
            assert in_memory[name].dtype == t.dtype and torch.equal(in_memory[name], t), (values, name)


def test_a_study_resumes_where_it_stopped(peak):
    path = recipe(peak, "{search: [0.0, 1.5]}", "{search: [0.0, 1.5]}")
    opts = TuneOptions(trials=6, progress=False)
    first = tune(path, peak / "tasks.yaml", peak / "o" / "best.yaml", opts, log=lambda _: None)
    lines = []
    opts.trials = 9
    second = tune(path, peak / "tasks.yaml", peak / "o" / "best.yaml", opts, log=lines.append)
    assert any("resuming" in line and "6 trial(s) already done" in line for line in lines)
    assert len(second.trials) == 9 and second.trials[:6] == first.trials
    # another seed is another study in the same file: it starts from scratch
    other = tune(path, peak / "tasks.yaml", peak / "o" / "best.yaml", TuneOptions(trials=3, seed=1, progress=False),
                 log=lambda _: None)
    assert len(other.trials) == 3


def test_cmaes_needs_two_ranges_and_grid_ignores_trials(peak):
    path = recipe(peak, "{search: [0.0, 1.5]}", 1.0)
    with pytest.raises(TaskvecError, match="at least two searched ranges"):
        tune(path, peak / "tasks.yaml", peak / "o" / "best.yaml", TuneOptions(search="cmaes", progress=False))
    lines = []
    result = tune(path, peak / "tasks.yaml", peak / "g" / "best.yaml",
                  TuneOptions(search="grid", grid_points=3, trials=50, progress=False), log=lines.append)
    assert len(result.trials) == 3 and any("--trials 50 is ignored" in line for line in lines)
    both = tune(recipe(peak, "{search: [0.0, 1.5]}", "{search: [0.0, 1.5]}"), peak / "tasks.yaml",
                peak / "c" / "best.yaml", TuneOptions(search="cmaes", trials=12, progress=False), log=lambda _: None)
    assert len(both.trials) == 12 and both.objective > -1.0


def test_unknown_search_and_a_missing_tasks_file_fail_before_any_model_is_read(peak, cli):
    path = recipe(peak, "{search: [0.0, 1.5]}", 1.0)
    code, out = cli("tune", path, "--tasks", peak / "tasks.yaml", "--out", peak / "b.yaml", "--search", "random",
                    ok=False)
    assert code == 2 and "choose one of grid, tpe, cmaes" in out
    code, out = cli("tune", path, "--tasks", peak / "nope.yaml", "--out", peak / "b.yaml", ok=False)
    assert code == 2 and "nope.yaml" in out and len(out.strip().splitlines()) == 1


# ---- classification: tuning split vs held-out split ---------------------------------------------------------------

SPLITS = """text,label,split
good movie,pos,val
the film is good,pos,val
very good,pos,val
bad movie,neg,val
good,pos,test
bad,neg,test
the film is bad,neg,test
very bad,neg,test
fine film,pos,test
"""


def test_classification_tunes_on_tune_split_and_reports_the_held_out_split(tmp_path):
    """Model a always says 'pos' (bias 0, 5), model b always 'neg' (bias 5, 0), over a zero base bias. The tuning
    split is 3/4 'pos', so the best weights make 'pos' win (3/4 right); the held-out split is 3/5 'neg', so that
    pick scores 2/5 there -- reported, not hidden."""
    from transformers import BertForSequenceClassification

    from test_eval import bert_config, tokenizer

    torch.manual_seed(0)
    model = BertForSequenceClassification(bert_config(num_labels=2, id2label={0: "neg", 1: "pos"},
                                                      label2id={"neg": 0, "pos": 1}))
    for name, bias in (("base", [0.0, 0.0]), ("a", [0.0, 5.0]), ("b", [5.0, 0.0])):
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(bias))
        model.save_pretrained(tmp_path / name)
        tokenizer(tmp_path / name).save_pretrained(tmp_path / name)
    write(tmp_path / "data.csv", SPLITS)
    tasks = write(tmp_path / "tasks.yaml", "tasks:\n  - {name: s, type: classification, data: data.csv, "
                  "split_column: split, split: test, tune_split: val, reference: 0.8}\n")
    result = tune(recipe(tmp_path, "{choices: [0.0, 1.0]}", "{choices: [0.0, 1.0]}"), tasks, tmp_path / "best.yaml",
                  TuneOptions(search="grid", progress=False), log=lambda _: None)
    assert result.best_values == {"models[0].weight": 1.0, "models[1].weight": 0.0}
    assert result.objective == pytest.approx(0.75 / 0.8) and result.objective_name == "mean_normalized"
    [held] = result.held_out["results"]
    assert held["examples"] == 5 and held["score"] == pytest.approx(2 / 5)
    assert all(t["scores"]["s"] in (0.25, 0.75) for t in result.trials)  # 4 tuning examples per candidate


# ---- Ray ----------------------------------------------------------------------------------------------------------

def test_grid_on_two_ray_workers_equals_the_serial_grid(peak):
    pytest.importorskip("ray")
    path = recipe(peak, "{search: [0.0, 1.5]}", "{choices: [0.1, 0.3, 0.5]}")
    serial = tune(path, peak / "tasks.yaml", peak / "s" / "best.yaml",
                  TuneOptions(search="grid", grid_points=3, progress=False), log=lambda _: None)
    parallel = tune(path, peak / "tasks.yaml", peak / "p" / "best.yaml",
                    TuneOptions(search="grid", grid_points=3, workers=2, progress=False), log=lambda _: None)
    strip = [{k: t[k] for k in ("trial", "values", "objective", "scores")} for t in serial.trials]
    assert [{k: t[k] for k in ("trial", "values", "objective", "scores")} for t in parallel.trials] == strip
    assert len(strip) == 9 and parallel.best_values == serial.best_values
    assert not math.isnan(parallel.objective)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_classification_grid_scores_like_the_cpu(tmp_path):
    """--device cuda scores candidates on the GPU: the same trials, scores and pick as the CPU grid."""
    from transformers import BertForSequenceClassification

    from test_eval import bert_config, tokenizer

    torch.manual_seed(0)
    model = BertForSequenceClassification(bert_config(num_labels=2, id2label={0: "neg", 1: "pos"},
                                                      label2id={"neg": 0, "pos": 1}))
    for name, bias in (("base", [0.0, 0.0]), ("a", [0.0, 5.0]), ("b", [5.0, 0.0])):
        with torch.no_grad():
            model.classifier.weight.normal_(0, 0.5)
            model.classifier.bias.copy_(torch.tensor(bias))
        model.save_pretrained(tmp_path / name)
        tokenizer(tmp_path / name).save_pretrained(tmp_path / name)
    write(tmp_path / "data.csv", SPLITS)
    tasks = write(tmp_path / "tasks.yaml", "tasks:\n  - {name: s, type: classification, data: data.csv, "
                  "split_column: split, split: test, tune_split: val, reference: 0.8}\n")
    path = recipe(tmp_path, "{choices: [0.0, 0.5, 1.0]}", "{search: [0.0, 1.0]}")
    runs = {device: tune(path, tasks, tmp_path / device / "best.yaml",
                         TuneOptions(search="grid", grid_points=3, progress=False, device=device), log=lambda _: None)
            for device in ("cpu", "cuda")}
    cpu, gpu = runs["cpu"], runs["cuda"]
    assert gpu.best_values == cpu.best_values
    assert [t["scores"] for t in gpu.trials] == [t["scores"] for t in cpu.trials]
    assert gpu.held_out["results"][0]["score"] == cpu.held_out["results"][0]["score"]
