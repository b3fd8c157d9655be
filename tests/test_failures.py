"""A merge that fails or is interrupted halfway leaves no output folder, no debris, and untouched inputs."""

import dataclasses
import hashlib

import pytest
import torch
from conftest import write_model
from typer.testing import CliRunner

from taskvec import MergeOptions, merge_recipe, parse_recipe
from taskvec.cli import app
from taskvec.methods import _REGISTRY, get_method


def digest_tree(folder):
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def big_family(tmp_path, n_tensors=24):
    g = torch.Generator().manual_seed(0)
    base = {f"layers.{i}.w": torch.randn(64, 64, generator=g) for i in range(n_tensors)}
    ft = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    return write_model(tmp_path / "base", base, shards=3), write_model(tmp_path / "ft", ft, shards=2)


def failing_after(n, exc):
    """The task_arithmetic method, made to raise `exc` on its n-th tensor."""
    method = get_method("task_arithmetic")
    calls = {"n": 0}

    def fn(*args):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return method.fn(*args)

    return dataclasses.replace(method, fn=fn), calls


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failure_halfway_leaves_no_output_and_inputs_untouched(tmp_path, monkeypatch, exc):
    base, ft = big_family(tmp_path)
    before = digest_tree(tmp_path)
    broken, calls = failing_after(12, exc)
    monkeypatch.setitem(_REGISTRY, "task_arithmetic", broken)
    data = {"merge_method": "task_arithmetic", "base_model": str(base),
            "models": [{"model": str(ft), "parameters": {"weight": 1.0}}]}
    with pytest.raises(type(exc)):
        merge_recipe(parse_recipe(data), tmp_path / "out", MergeOptions(progress=False, shard_size=20_000, workers=2))
    assert calls["n"] >= 12
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ft"]  # no temporary folder left behind
    assert digest_tree(tmp_path) == before


def test_failed_forced_merge_keeps_the_previous_output(tmp_path, monkeypatch):
    base, ft = big_family(tmp_path, n_tensors=6)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("previous merge")
    broken, _ = failing_after(3, RuntimeError("boom"))
    monkeypatch.setitem(_REGISTRY, "task_arithmetic", broken)
    data = {"merge_method": "task_arithmetic", "base_model": str(base),
            "models": [{"model": str(ft), "parameters": {"weight": 1.0}}]}
    with pytest.raises(RuntimeError, match="boom"):
        merge_recipe(parse_recipe(data), tmp_path / "out", MergeOptions(progress=False, force=True))
    assert (tmp_path / "out" / "keep.txt").read_text() == "previous merge"


def test_ctrl_c_in_the_cli_exits_130_with_a_message(tmp_path, monkeypatch, cli):
    base, ft = big_family(tmp_path, n_tensors=6)
    broken, _ = failing_after(2, KeyboardInterrupt())
    monkeypatch.setitem(_REGISTRY, "task_arithmetic", broken)
    code, output = cli("apply", base, ft, "--out", tmp_path / "out", ok=False)
    assert code == 130 and "interrupted: no output was written" in output
    assert not (tmp_path / "out").exists()


def test_cli_user_error_is_one_line_with_exit_status_2(tmp_path, cli):
    code, output = cli("apply", tmp_path / "missing", tmp_path / "also-missing", "--out", tmp_path / "o", ok=False)
    assert code == 2
    assert output.strip().startswith("error:") and "no such file or folder" in output and "Traceback" not in output


def test_unknown_command_names_it_and_lists_taskvecs_commands():
    result = CliRunner().invoke(app, ["frobnicate"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == ("error: No such command 'frobnicate'. The commands are: merge, apply, extract, extract-lora, "
                             "fingerprint, inspect, eval, tune, methods, version, push, pull, search, show, equip, "
                             "store. See 'taskvec --help'.\n")


def test_unknown_option_on_merge_is_one_line_with_exit_status_2(tmp_path):
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"), "--bogus"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: No such option: --bogus") and result.stderr.count("\n") == 1
    assert "taskvec merge --help" in result.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, expected", [
    (["push", "{tmp}/nothing", "acme/x@1", "--store", "http://127.0.0.1:9"], "not a task vector folder"),
    (["push", "{tmp}", "acme/..x@1", "--store", "http://127.0.0.1:9"], "package name '..x'"),
    (["pull", "acme/x", "--out", "{tmp}/o", "--store", "http://127.0.0.1:9"], "no version"),
    (["pull", "acme/x@1", "--out", "{tmp}/o", "--store", "http://127.0.0.1:9"], "cannot reach it"),
    (["search", "--store", "ftp://x"], "give its URL"),
    (["show", "acme/x@1"], "which store?"),
    (["equip", "{tmp}/base", "acme/x@1", "--out", "{tmp}/o", "--store", "http://127.0.0.1:9"], "no such file"),
    (["equip", "{tmp}", "acme/x@1", "--method", "nope", "--out", "{tmp}/o", "--store", "http://127.0.0.1:9"],
     "nope"),
    (["store", "serve"], "where is the store?"),
    (["store", "token", "create", "--org", "acme"], "which store?"),
    (["store", "token", "create", "--root", "{tmp}/s", "--org", "../x"], "not a valid org"),
    (["store", "login", "127.0.0.1:9"], "give its URL"),
])
def test_store_commands_fail_in_one_line_with_exit_status_2(tmp_path, monkeypatch, args, expected):
    monkeypatch.setenv("TASKVEC_CONFIG", str(tmp_path / "config"))
    monkeypatch.setenv("TASKVEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TASKVEC_STORE", raising=False)
    monkeypatch.delenv("TASKVEC_TOKEN", raising=False)
    result = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert expected in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()
