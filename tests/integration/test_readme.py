"""The README's "Use" block runs as written on a machine with gcc and bincache, and the
installed program runs from its new prefix."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def _use_block() -> str:
    text = open(os.path.join(REPO, "README.md")).read()
    section = text[text.index("\n## Use\n"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_the_readme_use_block_runs_as_written(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "bincache").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bincache "$@"\n')
    (bindir / "bincache").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=REPO,
               TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", _use_block()], capture_output=True,
                          text=True, env=env, stdin=subprocess.DEVNULL, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(r"^pushed   hello@1\.0/", proc.stdout, re.M)
    assert re.search(r"^skipped  hello@1\.0/\w+ +\(already in the mirror", proc.stdout, re.M)
    [installed] = re.findall(r"^installed hello@1\.0/\S+ +\S+ \S+  (\S+)$", proc.stdout, re.M)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("hello from ")
    assert os.path.normpath(last[len("hello from "):]) == f"{installed}/share"
