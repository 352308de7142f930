"""The cache page: one static HTML file listing every package of a mirror, for people.

Dependency-free (CSS and script inline, no fetch), so it loads from a directory mirror opened
in a browser or from any static host. The table is written in the HTML itself (it reads
without script); the script only filters it: the search box, or ``#q=words`` / ``?q=words`` in
the URL, which is how a link (or a test) asks for a filtered view. Every value from the mirror
is escaped: spec names and versions are data from whoever pushed.
"""

from __future__ import annotations

import html
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..atomic import write_atomic
from ..config import mask_url
from ..errors import BincacheError, BlobNotFound, MirrorError, SignatureError, UsageError
from ..index import read_index
from ..mirror.layout_v3 import LayoutV3Cache
from .trust import UnsignedPackage, key_names, verified_package

PAGE_NAME = "index.html"


@dataclass
class PageEntry:
    name: str
    version: str
    hash: str
    arch: str
    size: int
    signature: str  # "verified", "unsigned", "unverified"
    signer: str | None  # fingerprint whose signature verified
    signer_name: str | None
    note: str  # why a signature did not verify
    pushed: float | None  # seconds since the epoch, when the mirror tells
    deps: list[tuple[str, str, str, bool]] = field(default_factory=list)  # name, version, hash, here


def _arch(spec) -> str:
    a = spec.arch
    target = a.get("target")
    if isinstance(target, dict):
        target = target.get("name")
    parts = [str(p) for p in (a.get("platform"), a.get("platform_os"), target) if p]
    return "-".join(parts) or "-"


def _pushed(cache, spec) -> float | None:
    if not isinstance(cache, LayoutV3Cache):  # the push time of a v3 manifest file only
        return None
    path = cache.backend.local_path(cache.manifest_path(spec.name, spec.version, spec.hash))
    return os.stat(path).st_mtime if path is not None else None


def collect(cache, *, jobs: int = 8) -> list[PageEntry]:
    """The page's rows, from the mirror's index; each package's signature checked against the
    trusted keys of this machine (a page says who signed only what verified here)."""
    idx = read_index(cache)
    if idx is None:
        raise MirrorError(f"{mask_url(cache.url)} has no index: run `bincache update-index` first")
    names = key_names()
    packages = idx.packages()

    def row(entry) -> PageEntry:
        s = entry.spec
        signature, signer, note = "unverified", None, ""
        try:
            pkg = verified_package(cache, s, unsigned=False)
            signature, signer = "verified", pkg.signer
        except UnsignedPackage:
            signature = "unsigned"
        except (SignatureError, BlobNotFound, BincacheError) as e:
            note = str(e)
        deps = []
        for d in s.link_run_deps():
            dep = idx.entries.get(d.hash)
            here = dep is not None and dep.in_buildcache
            deps.append((d.name, dep.spec.version if dep is not None else "", d.hash, here))
        return PageEntry(s.name, s.version, s.hash, _arch(s), entry.size, signature, signer,
                         names.get(signer or ""), note, _pushed(cache, s), deps)

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(packages) or 1))) as pool:
        return list(pool.map(row, packages))


def _size(n: float) -> str:
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d232a;background:#f7f8fa}
header{padding:16px 24px;background:#1f3a5f;color:#fff}
header h1{margin:0 0 4px;font-size:20px}header p{margin:0;opacity:.85}
header code{background:rgba(255,255,255,.12);padding:1px 5px;border-radius:3px}
.bar{display:flex;gap:16px;align-items:center;padding:12px 24px}
#search{flex:1;max-width:520px;font-size:15px;padding:7px 10px;border:1px solid #aab;border-radius:4px}
#count{color:#555}
table{border-collapse:collapse;margin:0 24px 24px;background:#fff;min-width:calc(100% - 48px)}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef1f5;font-weight:600;position:sticky;top:0}
td.hash,td.arch,pre{font-family:ui-monospace,monospace;font-size:12px}
tr:target{background:#fff6d5}.name{font-weight:600}
.sig-verified{color:#1a7f37}.sig-unsigned{color:#9a6700}.sig-unverified{color:#cf222e}
.deps a{margin-right:8px;white-space:nowrap}.absent{color:#777;margin-right:8px}
details pre{margin:4px 0;white-space:pre-wrap;background:#f3f4f6;padding:6px;border-radius:3px}
"""

_SCRIPT = """
(function () {
  var box = document.getElementById("search");
  var rows = [].slice.call(document.querySelectorAll("#packages tbody tr"));
  var count = document.getElementById("count");
  function apply() {
    var terms = box.value.toLowerCase().split(/\\s+/).filter(Boolean), shown = 0;
    rows.forEach(function (r) {
      var text = r.getAttribute("data-search");
      var ok = terms.every(function (t) { return text.indexOf(t) >= 0; });
      r.hidden = !ok;
      if (ok) shown++;
    });
    count.textContent = shown + " of " + rows.length + " packages";
  }
  function fromUrl() {
    var m = /^#q=(.*)$/.exec(location.hash) || /[?&]q=([^&]*)/.exec(location.search);
    if (m) box.value = decodeURIComponent(m[1].replace(/\\+/g, " "));
    else if (/^#h-/.test(location.hash)) box.value = "";  // a dependency link: show its row
  }
  box.addEventListener("input", function () {
    try { history.replaceState(null, "", box.value ? "#q=" + encodeURIComponent(box.value)
                                                  : location.pathname + location.search); }
    catch (e) { /* some file:// setups refuse; the filter still works */ }
    apply();
  });
  window.addEventListener("hashchange", function () { fromUrl(); apply(); });
  var here = document.body.getAttribute("data-at-root") === "1" && /^(https?|file):$/.test(location.protocol);
  if (here) {  // served from the mirror itself: the commands name the URL it was loaded from
    var url = location.href.replace(/[?#].*$/, "").replace(/\\/[^\\/]*$/, "");
    [].forEach.call(document.querySelectorAll(".mirror-url"), function (e) { e.textContent = url; });
  }
  fromUrl();
  apply();
})();
"""


def _row(e: PageEntry, mirror_url: str) -> str:
    esc = html.escape
    short = f"{e.name}@{e.version}/{e.hash[:7]}"
    deps = []
    for name, version, h, here in e.deps:
        label = esc(f"{name}@{version}" if version else name)
        if here:
            deps.append(f'<a href="#h-{esc(h)}" title="/{esc(h)}">{label}</a>')
        else:
            deps.append(f'<span class="absent" title="/{esc(h)}: not in this cache (external, '
                        f'or pushed elsewhere)">{label}</span>')
    if e.signature == "verified":
        who = esc(e.signer_name or e.signer or "")
        sig = f'<span class="sig-verified" title="{esc(e.signer or "")}">{who}</span>'
    elif e.signature == "unsigned":
        sig = '<span class="sig-unsigned">unsigned</span>'
    else:
        sig = f'<span class="sig-unverified" title="{esc(e.note)}">signed, not verified here</span>'
    pushed = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.pushed)) + " UTC" if e.pushed else "-"
    url = f'<span class="mirror-url">{esc(mirror_url)}</span>'
    flag = "" if e.signature == "verified" else " --unsigned"
    commands = (f"bincache keys install {url} --trust\n"
                f"bincache install --mirror {url}{flag} {esc(short)}\n"
                f"spack mirror add mycache {url}\nspack buildcache install /{esc(e.hash)}")
    search = esc(" ".join([e.name, e.version, e.hash, e.arch, e.signer_name or "", e.signature]).lower())
    return (f'<tr id="h-{esc(e.hash)}" data-search="{search}">'
            f'<td class="name">{esc(e.name)}</td><td>{esc(e.version)}</td>'
            f'<td class="hash" title="{esc(e.hash)}">{esc(e.hash[:7])}</td>'
            f'<td class="arch">{esc(e.arch)}</td><td>{_size(e.size)}</td><td>{sig}</td>'
            f'<td>{pushed}</td><td class="deps">{"".join(deps) or "-"}</td>'
            f'<td><details><summary>install</summary><pre>{commands}</pre></details></td></tr>')


def render(entries: list[PageEntry], mirror_url: str, *, at_root: bool) -> str:
    """The whole page as one string."""
    esc = html.escape
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    body = "\n".join(_row(e, mirror_url) for e in entries)
    data = json.dumps({"mirror": mirror_url, "packages": len(entries)}).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Build cache {esc(mirror_url)}</title><style>{_CSS}</style></head>
<body data-at-root="{1 if at_root else 0}">
<header><h1>Build cache</h1>
<p><code class="mirror-url">{esc(mirror_url)}</code> &middot; {len(entries)} packages &middot;
generated {generated} by bincache</p></header>
<div class="bar"><input id="search" type="search" placeholder="Search name, version, hash, architecture, signer"
 aria-label="Search packages"><span id="count">{len(entries)} of {len(entries)} packages</span></div>
<table id="packages"><thead><tr><th>Package</th><th>Version</th><th>Hash</th><th>Architecture</th>
<th>Size</th><th>Signed by</th><th>Pushed</th><th>Dependencies</th><th>Install</th></tr></thead>
<tbody>
{body}
</tbody></table>
<script type="application/json" id="cache-data">{data}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


@dataclass
class PageResult:
    path: str  # where the page was written (a path, or the mirror URL + /index.html)
    packages: int


def write_page(cache, out_dir: str | None = None, *, mirror_url: str | None = None,
               jobs: int = 8) -> PageResult:
    """Write the page into the mirror (``index.html`` at its root, beside the layouts) or,
    with ``out_dir``, into that local directory (any mirror, OCI registries included)."""
    if out_dir is not None:
        out_dir = os.path.abspath(out_dir)
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise UsageError(f"{out_dir} is a file, not a directory: give a directory for the page")
    backend = cache.backend
    if out_dir is None and backend is None:
        raise UsageError(f"{mask_url(cache.url)}: a registry cannot serve a web page; write it "
                         "elsewhere with `bincache browse MIRROR -o DIR`")
    entries = collect(cache, jobs=jobs)
    url = mirror_url or mask_url(cache.url)
    if out_dir is None:
        assert backend is not None
        backend.write(PAGE_NAME, render(entries, url, at_root=True).encode())
        return PageResult(f"{mask_url(cache.url)}/{PAGE_NAME}", len(entries))
    root = backend.root if backend is not None else None
    at_root = root is not None and os.path.realpath(root) == os.path.realpath(out_dir)
    page = render(entries, url, at_root=at_root and mirror_url is None).encode()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, PAGE_NAME)
    write_atomic(path, page, prefix=".tmp-")
    return PageResult(path, len(entries))
