"""End to end: a real `taskvec store serve` process on 127.0.0.1, a token made with the CLI, and the client
commands a user types -- login, push, search --base, show, pull, equip -- against it."""

import json

import pytest
import torch
from conftest import read_model, toy_tensors, write_model
from serverkit import ServerProcess
from storekit import CONFIG, other_base


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "store"
    proc = ServerProcess(tmp_path / "server.log", root=root)
    try:
        yield proc.start().url, root
    finally:
        proc.stop()


def test_publish_search_pull_and_equip_through_a_real_server(server, tmp_path, cli, monkeypatch):
    url, root = server
    monkeypatch.setenv("TASKVEC_CONFIG", str(tmp_path / "config"))
    monkeypatch.setenv("TASKVEC_CACHE", str(tmp_path / "cache"))
    for name in ("TASKVEC_STORE", "TASKVEC_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    base = write_model(tmp_path / "base", toy_tensors(0), config=CONFIG)
    ft = write_model(tmp_path / "ft", toy_tensors(1), config=CONFIG)
    tv = tmp_path / "tv"
    cli("extract", "--base", base, "--finetuned", ft, "--out", tv, "--quiet")

    _, out = cli("store", "token", "create", "--root", root, "--org", "acme")
    token = out.strip().splitlines()[-1]
    assert token.startswith("tvs_") and token not in (root / "store.db").read_bytes().decode("latin-1")
    _, out = cli("store", "login", url, "--token", token)
    assert "publishes under acme" in out

    scores = tmp_path / "eval.json"  # what `taskvec eval --json` writes
    scores.write_text(json.dumps({"results": [{"name": "topic", "type": "python", "metric": "score", "score": 0.75,
                                               "normalized": 0.5}]}))
    _, out = cli("push", tv, "acme/topic@1.0.0", "--description", "a toy topic vector", "--tags", "toy,demo",
                 "--license", "mit", "--base-id", "toy/base", "--metrics", scores, "--quiet")
    assert "published acme/topic@1.0.0" in out

    _, out = cli("search", "--base", base, "--json")
    found = json.loads(out[out.index("{"):])
    assert [r["ref"] for r in found["results"]] == ["acme/topic@1.0.0"]
    _, out = cli("search", "--base", other_base(tmp_path), "--json")
    assert json.loads(out[out.index("{"):])["results"] == []
    _, out = cli("search", "topic", "--tag", "toy")
    assert "acme/topic@1.0.0" in out and "toy/base" in out
    _, out = cli("show", "acme/topic@1.0.0")
    assert "taskvec-fp2:" in out and "license: mit" in out
    assert "metrics: topic/score=0.75, topic/normalized=0.5" in out

    _, out = cli("pull", "acme/topic@1.0.0", "--out", tmp_path / "pulled")  # with its progress bar
    assert "digests verified" in out
    assert {p.name: p.read_bytes() for p in tv.iterdir()} == {p.name: p.read_bytes()
                                                              for p in (tmp_path / "pulled").iterdir()}

    cli("equip", base, "acme/topic@1.0.0", "--out", tmp_path / "equipped", "--quiet")
    cli("apply", base, tv, "--out", tmp_path / "applied", "--quiet")
    a, b = read_model(tmp_path / "equipped"), read_model(tmp_path / "applied")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    code, out = cli("equip", tmp_path / "other", "acme/topic@1.0.0", "--out", tmp_path / "wrong", "--quiet", ok=False)
    line = out.strip()
    assert code == 2 and line.startswith("error:") and "\n" not in line, out
    assert "'layers.0.w'" in line and "'layers.1.b'" in line and "--force-base" in line
    assert not (tmp_path / "wrong").exists()

    code, out = cli("push", tv, "acme/topic@1.0.0", "--license", "apache-2.0", "--quiet", ok=False)
    assert code == 2 and "refused (409)" in out and out.strip().count("\n") == 0
