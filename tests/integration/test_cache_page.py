"""The cache page (`update-index --html`, `browse -o`), checked in a real headless browser.

Debian's chromium loads the page from the directory mirror (file://) and from a static http
server; its DOM after the page's script ran (`--dump-dom`) must list every package, link the
dependencies, name the verified signer, and filter on the search words that the URL carries
(`#q=` / `?q=`) or that are typed into the box (a same-origin harness page types them).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
from html.parser import HTMLParser

import pytest

from tests.conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup)")

# name -> (version, dependencies)
STACK = {"zlib": ("1.3.1", []), "libpng": ("1.6.43", ["zlib"]), "libgreet": ("2.0", []),
         "hello": ("1.0", ["libgreet", "zlib"]), "tools": ("0.9", ["hello", "libpng"])}


class Dom(HTMLParser):
    """The rows of #packages (id, hidden, cell texts, links) and the #count text."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: list[dict] = []
        self.count = ""
        self.urls: list[str] = []
        self._in_count = self._in_tbody = self._in_url = False
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody:
            self.rows.append({"id": a.get("id"), "hidden": "hidden" in a, "cells": [], "links": []})
        elif tag == "td" and self._in_tbody:
            self._cell = []
        elif tag == "a" and self._in_tbody and self.rows:
            self.rows[-1]["links"].append(a.get("href"))
        if a.get("id") == "count":
            self._in_count = True
        if "mirror-url" in (a.get("class") or ""):
            self._in_url = True
            self.urls.append("")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_tbody = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1]["cells"].append("".join(self._cell).strip())
            self._cell = None
        elif tag in ("span", "code"):
            self._in_count = self._in_url = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_count:
            self.count += data
        if self._in_url:
            self.urls[-1] += data

    def visible(self) -> list[str]:
        return sorted(r["cells"][0] for r in self.rows if not r["hidden"])


def browser(url: str, screenshot: str | None = None) -> str:
    """The DOM after the page's script ran (or a screenshot of it)."""
    profile = tempfile.mkdtemp(prefix="bcchrome-")
    what = f"--screenshot={screenshot}" if screenshot else "--dump-dom"
    try:
        r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                            f"--user-data-dir={profile}", "--run-all-compositor-stages-before-draw",
                            "--virtual-time-budget=3000", "--window-size=1400,900", what, url],
                           capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    base = tmp_path_factory.mktemp("page")
    home = tempfile.mkdtemp(prefix="bcp", dir="/tmp")
    env = {"BINCACHE_GNUPGHOME": home, "HOME": str(base)}
    root = base / "root"
    prefixes = {}
    for name, (version, deps) in STACK.items():
        prefix = root / "opt" / f"{name}-{version}"
        (prefix / "share").mkdir(parents=True)
        (prefix / "share" / f"{name}.txt").write_text(f"{name} {version}\n" * 50)
        args = ["--root", str(root), "register", str(prefix), "--name", name, "--version", version,
                "--no-autopush"]
        for d in deps:
            args += ["--dep", prefixes[d]]
        run_cli(*args, env=env, check=True)
        prefixes[name] = str(prefix)
    run_cli("keys", "create", "Page Builder", "page@example.com", env=env, check=True)
    mirror = base / "mirror"
    run_cli("--root", str(root), "create", str(mirror), env=env, check=True)
    r = run_cli("update-index", str(mirror), "--html", env=env, check=True)
    hashes = {}
    for name, prefix in prefixes.items():
        doc = json.loads(open(os.path.join(prefix, ".spack", "spec.json")).read())
        hashes[name] = doc["spec"]["nodes"][0]["hash"]
    yield {"mirror": mirror, "env": env, "hashes": hashes, "out": r.stdout, "base": base}
    subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def served(cache):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(cache["mirror"]))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_page_lists_every_package_with_links_signer_and_commands(cache):
    page = cache["mirror"] / "index.html"
    assert "page written" in cache["out"] and page.is_file()
    dom = Dom(browser(page.as_uri()))
    assert dom.visible() == sorted(STACK)
    assert dom.count == f"{len(STACK)} of {len(STACK)} packages"
    rows = {r["cells"][0]: r for r in dom.rows}
    h = cache["hashes"]
    for name, (version, deps) in STACK.items():
        row = rows[name]
        assert row["id"] == f"h-{h[name]}"
        assert row["cells"][1] == version and row["cells"][2] == h[name][:7]
        assert row["cells"][3].startswith("linux-") and row["cells"][4].endswith("B")
        assert row["cells"][5] == "Page Builder <page@example.com>"  # verified here
        assert row["cells"][6].endswith("UTC")
        assert sorted(row["links"]) == sorted(f"#h-{h[d]}" for d in deps)
    # Opened from the mirror itself, the commands name the URL it was loaded from.
    assert set(dom.urls) == {page.parent.as_uri()}
    assert f"bincache install --mirror {page.parent.as_uri()} tools@0.9/{h['tools'][:7]}" in rows["tools"]["cells"][8]


def test_search_words_in_the_url_filter_the_table(cache):
    page = cache["mirror"] / "index.html"
    dom = Dom(browser(page.as_uri() + "#q=lib"))
    assert dom.visible() == ["libgreet", "libpng", "zlib"] and dom.count == "3 of 5 packages"
    dom = Dom(browser(page.as_uri() + "#q=LIB%201.6"))  # every word, any case
    assert dom.visible() == ["libpng"] and dom.count == "1 of 5 packages"
    dom = Dom(browser(page.as_uri() + "#q=" + cache["hashes"]["zlib"][:10]))
    assert dom.visible() == ["zlib"]


def test_from_a_static_http_host_typing_in_the_box_filters(cache, served):
    dom = Dom(browser(f"{served}/index.html?q=hello"))
    assert dom.visible() == ["hello"]
    assert set(dom.urls) == {served}
    # A harness on the same origin types into the page's search box, as a person would.
    harness = cache["mirror"] / "harness.html"
    harness.write_text("""<!doctype html><body><pre id="out"></pre>
<iframe id="f" src="index.html"></iframe><script>
document.getElementById("f").onload = function () {
  var d = this.contentDocument, box = d.getElementById("search");
  box.value = "1.6";
  box.dispatchEvent(new Event("input"));
  var shown = [].filter.call(d.querySelectorAll("#packages tbody tr"), function (r) { return !r.hidden; })
      .map(function (r) { return r.cells[0].textContent; });
  document.getElementById("out").textContent = JSON.stringify(
      {shown: shown, count: d.getElementById("count").textContent, hash: this.contentWindow.location.hash});
};</script></body>""")
    try:
        out = browser(f"{served}/harness.html")
    finally:
        harness.unlink()
    got = json.loads(out.split('<pre id="out">', 1)[1].split("</pre>", 1)[0])
    assert got == {"shown": ["libpng"], "count": "1 of 5 packages", "hash": "#q=1.6"}


def test_browse_writes_elsewhere_and_a_screenshot_shows_the_table(cache, tmp_path):
    out = tmp_path / "site"
    r = run_cli("browse", str(cache["mirror"]), "-o", str(out), "--url", "https://cache.example.org",
                env=cache["env"], check=True)
    assert "5 packages" in r.stdout
    dom = Dom(browser((out / "index.html").as_uri()))
    assert dom.visible() == sorted(STACK) and set(dom.urls) == {"https://cache.example.org"}
    png = tmp_path / "page.png"
    browser((cache["mirror"] / "index.html").as_uri(), screenshot=str(png))
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    if os.environ.get("BINCACHE_PAGE_SCREENSHOT"):
        shutil.copy(png, os.environ["BINCACHE_PAGE_SCREENSHOT"])


def test_bad_input_is_one_line_and_writes_nothing(cache, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = run_cli("browse", str(cache["mirror"]), "-o", str(a_file), env=cache["env"])
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "is a file" in r.stderr
    assert a_file.read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("browse", str(empty), "-o", str(tmp_path / "out"), env=cache["env"])
    assert r.returncode == 1 and "has no index" in r.stderr
    assert not (tmp_path / "out").exists()
