"""The web catalog: pages in-process (escaping, 404s, private mode, the login cookie that reads but never writes),
then in a real browser -- headless Chromium from the system's packages, driven by Selenium -- against a real
`taskvec store serve` process, as a person would use it: search, open a vector, copy the equip command, follow the
org link, and sign in to a private store."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serverkit import ServerProcess
from storekit import Store, make_vector

from taskvec.store.auth import COOKIE, create_token
from taskvec.store.catalog import equip_command, human_size
from taskvec.store.client import StoreClient
from taskvec.store.db import Database

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
XSS = '<img src=x onerror="document.title=\'pwned\'"> & <script>document.title="pwned"</script>'


@pytest.fixture
def vectors(tmp_path):
    models = tmp_path / "models"
    return make_vector(models, "topic", seed=1), make_vector(models, "senti", seed=2, compress="sparse:0.5")


def publish_two(store: Store, vectors) -> None:
    topic, senti = vectors
    r = store.publish(topic, "acme/topic@1.0.0", description="BBC news topics " + XSS, tags=["news", "text"],
                      base_id="toy/base", metrics={"accuracy": 0.9125})
    assert r.status_code == 201, r.text
    assert store.publish(senti, "acme/sentiment@2.1.0", description="Movie review sentiment",
                         tags=["text"]).status_code == 201


def test_pages_escape_what_publishers_write_and_show_the_equip_command(tmp_path, vectors):
    store = Store(tmp_path / "store")
    publish_two(store, vectors)
    page = store.http.get("/v/acme/topic/1.0.0")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>document" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in page.text
    assert "taskvec equip toy/base acme/topic@1.0.0 --out topic-equipped" in page.text
    manifest = store.http.get("/api/packages/acme/topic/1.0.0").json()["manifest"]
    for f in manifest["files"]:
        assert f["sha256"] in page.text and f["path"] in page.text
    assert manifest["base"]["fingerprint"] in page.text and "0.9125" in page.text
    senti = store.http.get("/v/acme/sentiment/2.1.0").text
    assert "taskvec equip BASE acme/sentiment@2.1.0 --out sentiment-equipped" in senti and "sparse:0.5" in senti

    def listed(path: str) -> list[str]:
        r = store.http.get(path)
        assert r.status_code == 200, r.text
        return sorted(x for x in ("acme/topic", "acme/sentiment") if f'href="/v/{x}/' in r.text)

    assert listed("/") == ["acme/sentiment", "acme/topic"]
    assert listed("/?q=bbc") == ["acme/topic"] and listed("/?tags=text,news") == ["acme/topic"]
    assert listed(f"/?base={manifest['base']['fingerprint']}") == ["acme/sentiment", "acme/topic"]
    assert listed("/?base=" + "0" * 64) == [] and listed("/?architecture=ToyModel&q=movie") == ["acme/sentiment"]
    assert listed("/o/acme") == ["acme/sentiment", "acme/topic"] and listed("/v/acme/topic") == ["acme/topic"]
    assert "Nothing matches" in store.http.get("/?q=nothing-like-this").text


@pytest.mark.parametrize("hint,shown", [
    ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
    ("/models/base-v1", "/models/base-v1"), ("--force-base", "BASE"), ("x; rm -rf ~", "BASE"),
    ("$(curl evil)", "BASE"), ("a\nb", "BASE"), ("", "BASE")])
def test_the_equip_command_names_the_base_only_when_the_hint_is_plain(hint, shown):
    manifest = {"name": "acme/topic", "version": "1.0.0", "base": {"id_hint": hint}}
    assert equip_command(manifest) == f"taskvec equip {shown} acme/topic@1.0.0 --out topic-equipped"


@pytest.mark.parametrize("path,status", [("/v/acme/nothing/1.0.0", 404), ("/v/acme/nothing", 404),
                                         ("/o/globex", 404), ("/v/acme/..x/1.0.0", 400), ("/o/-bad", 400),
                                         ("/static/../store.db", 404), ("/static/secret.txt", 404)])
def test_missing_and_bad_names_are_pages_not_tracebacks(tmp_path, path, status):
    store = Store(tmp_path / "store")
    r = store.http.get(path)
    assert r.status_code == status and "Traceback" not in r.text and "store.db" not in r.text.replace(path, "")


def test_a_private_store_shows_pages_only_after_sign_in_and_the_cookie_never_writes(tmp_path, vectors):
    store = Store(tmp_path / "store", private=True)
    publish_two(store, vectors)
    for path in ("/", "/v/acme/topic/1.0.0", "/o/acme", "/v/acme/topic"):
        r = store.http.get(path)
        assert r.status_code == 401 and 'action="/login"' in r.text and "BBC news" not in r.text
        assert 'class="results"' not in r.text and 'id="ref"' not in r.text
    bad = store.http.post("/login", data={"token": "tvs_wrong", "next": "/o/acme"}, follow_redirects=False)
    assert bad.status_code == 401 and "unknown or revoked" in bad.text and COOKIE not in bad.headers.get(
        "set-cookie", "")
    evil = store.http.post("/login", data={"token": store.token, "next": "//evil.example/x"}, follow_redirects=False)
    assert evil.status_code == 303 and evil.headers["location"] == "/"  # no redirect off this server
    ok = store.http.post("/login", data={"token": store.token, "next": "/o/acme"}, follow_redirects=False)
    cookie = ok.headers["set-cookie"]
    assert ok.status_code == 303 and ok.headers["location"] == "/o/acme"
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    browser = TestClient(store.app, cookies={COOKIE: store.token})
    assert 'href="/v/acme/topic/1.0.0"' in browser.get("/o/acme").text
    digest = browser.get("/api/packages/acme/topic/1.0.0").json()["manifest"]["files"][0]["sha256"]
    assert browser.get(f"/api/blobs/{digest}").status_code == 200  # the page's download links
    data = b"written with a cookie"
    put = browser.put(f"/api/blobs/{hashlib.sha256(data).hexdigest()}", content=data)
    assert put.status_code == 401  # writes take only the Authorization header: no cross-site publishing
    out = browser.post("/logout", follow_redirects=False)
    assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]


def test_templates_ship_as_package_data():
    from importlib.resources import files

    root = files("taskvec.store")
    assert {"base.html", "index.html", "version.html", "package.html", "org.html", "login.html"} <= {
        p.name for p in (root / "templates").iterdir()}
    assert (root / "static" / "catalog.css").is_file() and (root / "static" / "catalog.js").is_file()
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '"taskvec.store" = ["templates/*.html", "static/*.css", "static/*.js"]' in pyproject


# ---- in a real browser ----------------------------------------------------------------------------------------

@pytest.fixture
def browser(monkeypatch):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}); Debian: apt-get install chromium "
                    "chromium-driver")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a browser or driver (and
    # with both paths given below, it is not even asked)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="taskvec-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--window-size=1200,900",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def served(tmp_path, vectors):
    """A real server process with two vectors pushed by the real client, and one private server; both stopped."""
    servers = []
    try:
        for private in (False, True):
            root = tmp_path / ("private" if private else "public")
            root.mkdir()
            db = Database(f"sqlite:///{root / 'store.db'}")
            token = create_token(db, ["acme"])[1]
            db.close()
            server = ServerProcess(tmp_path / f"{root.name}.log", root=root, private=private).start()
            servers.append(server)
            with StoreClient(server.url, token, cache=tmp_path / "cache") as client:
                client.push(vectors[0], "acme/topic@1.0.0", license="mit", description="BBC news topics " + XSS,
                            tags=["news"], base_id="toy/base")
                client.push(vectors[1], "acme/sentiment@2.1.0", license="mit", description="Movie sentiment")
            server.token = token
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_a_person_searches_opens_a_vector_copies_the_equip_command_and_follows_the_org(browser, served, vectors):
    from selenium.webdriver.common.by import By

    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.wait import WebDriverWait

    def wait(condition):
        return WebDriverWait(browser, 15).until(condition)

    public, private = served
    browser.get(public.url + "/")
    assert browser.find_element(By.ID, "count").text == "2 versions, newest first"
    box = browser.find_element(By.CSS_SELECTOR, "form.search input[name=q]")
    box.send_keys("bbc news")
    box.submit()
    wait(seen.text_to_be_present_in_element((By.ID, "count"), "matching"))
    assert browser.find_element(By.ID, "count").text == "1 matching version"
    links = browser.find_elements(By.CSS_SELECTOR, ".results a.ref")
    assert [a.text for a in links] == ["acme/topic"]
    links[0].click()
    wait(seen.url_to_be(public.url + "/v/acme/topic/1.0.0"))
    assert browser.find_element(By.ID, "ref").text == "acme/topic@1.0.0"
    description = browser.find_element(By.ID, "description")
    assert XSS in description.text and description.find_elements(By.CSS_SELECTOR, "img, script") == []
    assert browser.title != "pwned"
    vm = json.loads((vectors[0] / "taskvec.json").read_text())
    size = sum(p.stat().st_size for p in vectors[0].iterdir())
    assert browser.find_element(By.ID, "base-fingerprint").text == vm["base"]["fingerprint"]
    assert browser.find_element(By.ID, "base-hint").text == "toy/base"
    assert browser.find_element(By.ID, "size").text == f"{human_size(size)} ({size:,} bytes)"
    command = "taskvec equip toy/base acme/topic@1.0.0 --out topic-equipped"
    assert browser.find_element(By.ID, "equip-command").text == command
    files = {row.find_elements(By.TAG_NAME, "td")[0].text: row.find_elements(By.TAG_NAME, "td")[2].text
             for row in browser.find_elements(By.CSS_SELECTOR, "table.files tbody tr")}
    assert files == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in vectors[0].iterdir()}

    browser.execute_cdp_cmd("Browser.grantPermissions", {"origin": public.url, "permissions": [
        "clipboardReadWrite", "clipboardSanitizedWrite"]})
    browser.find_element(By.ID, "copy-equip").click()
    wait(seen.text_to_be_present_in_element((By.ID, "copy-equip"), "Copied"))
    pasted = browser.execute_async_script("var done = arguments[0]; navigator.clipboard.readText().then(done, "
                                          "e => done('error: ' + e))")
    assert pasted == command

    browser.find_element(By.ID, "org-link").click()
    wait(seen.url_to_be(public.url + "/o/acme"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "acme"
    assert sorted(a.text for a in browser.find_elements(By.CSS_SELECTOR, ".results a.ref")) == [
        "acme/sentiment", "acme/topic"]

    # a private store: the page asks for a token, a wrong one is refused, the right one shows the page
    browser.get(private.url + "/v/acme/sentiment/2.1.0")
    assert browser.find_elements(By.ID, "ref") == [] and "Movie sentiment" not in browser.page_source
    browser.find_element(By.ID, "token").send_keys("tvs_not-a-token")
    browser.find_element(By.ID, "sign-in").click()
    assert "unknown or revoked token" in wait(seen.presence_of_element_located((By.ID, "login-error"))).text
    browser.find_element(By.ID, "token").send_keys(private.token)
    browser.find_element(By.ID, "sign-in").click()
    wait(seen.url_to_be(private.url + "/v/acme/sentiment/2.1.0"))
    assert browser.find_element(By.ID, "ref").text == "acme/sentiment@2.1.0"
    assert browser.get_cookie(COOKIE)["httpOnly"] is True
    link = browser.find_element(By.CSS_SELECTOR, "table.files a").get_attribute("href")
    browser.get(private.url + "/api/health")  # a page without the catalog's CSP, which forbids scripts' fetch
    status = browser.execute_async_script("var done = arguments[1]; fetch(arguments[0]).then("
                                          "r => done(r.status), e => done('error: ' + e))", link)
    assert status == 200  # the download links work with the login cookie
