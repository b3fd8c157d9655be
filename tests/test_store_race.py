"""Two publishers racing for one version (different content) through two `taskvec store serve` processes sharing
one database -- SQLite, and PostgreSQL where it is installed: exactly one wins (201), the other is refused with 409
and a clear message, and both servers show the winner's content."""

from __future__ import annotations

import threading

import httpx
from serverkit import postgresql, stack  # noqa: F401 -- fixtures
from storekit import make_vector

from taskvec.store.package import make_manifest


def test_two_publishers_racing_for_one_version_through_two_servers_one_wins_the_other_gets_409(stack, tmp_path):
    one, two = stack.serve(), stack.serve()  # two processes, one database: the database decides
    a, b = make_vector(tmp_path / "models", "a", seed=1), make_vector(tmp_path / "models", "b", seed=2)
    rounds = 4
    bodies = {}
    for label, vector in (("a", a), ("b", b)):
        for r in range(rounds):
            manifest, files = make_manifest(vector, f"acme/race@1.0.{r}", license="mit", publisher="acme",
                                            description=f"from {label}")
            bodies[label, r] = manifest.model_dump_json().encode()
        for d, p in files.items():
            assert httpx.put(f"{one.url}/api/blobs/{d}", content=p.read_bytes(),
                             headers=stack.headers()).status_code in (200, 201)
    for r in range(rounds):
        start, answers = threading.Barrier(2), {}

        def publish(label, server):
            with httpx.Client(timeout=30) as http:
                start.wait(10)
                answers[label] = http.put(f"{server.url}/api/packages/acme/race/1.0.{r}", content=bodies[label, r],
                                          headers={**stack.headers(), "Content-Type": "application/json"})

        threads = [threading.Thread(target=publish, args=x) for x in (("a", one), ("b", two))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        codes = {label: resp.status_code for label, resp in answers.items()}
        assert sorted(codes.values()) == [201, 409], {k: v.text for k, v in answers.items()}
        winner = next(label for label, code in codes.items() if code == 201)
        loser = answers["b" if winner == "a" else "a"].json()["error"]
        assert "already published with other content" in loser and "publish a new version" in loser
        for server in (one, two):
            shown = httpx.get(f"{server.url}/api/packages/acme/race/1.0.{r}").json()["manifest"]
            assert shown["description"] == f"from {winner}"
    assert httpx.get(f"{two.url}/api/packages", params={"name": "acme/race"}).json()["total"] == rounds
