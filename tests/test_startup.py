"""Each command imports the code it runs, not every command's: `bincache --version` none of the
package's machinery, `list` and `install` not the packer, and none of them ruamel.yaml when
there is no configuration file to read (ruamel, the packer and the native core were ~0.2 s of
every command's start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bincache.tree import register_prefix
from tests.conftest import REPO, run_cli

PROBE = ("import json, sys\n"
         "from bincache.cli.main import main\n"
         "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
         "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n")
PACKER = {"bincache.create", "bincache.pipeline", "bincache.tar.pack", "bincache.autopush"}


def _imported(tmp_path, *args: str) -> set[str]:
    env = dict(os.environ, PYTHONPATH=REPO, HOME=str(tmp_path / "home"))
    env.pop("BINCACHE_CONFIG_SCOPES", None)
    p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                       env=env, stdin=subprocess.DEVNULL)
    return set(json.loads(p.stderr.strip().splitlines()[-1]))


def test_each_command_imports_what_it_runs(tmp_path):
    root = str(tmp_path / "root")
    prefix = os.path.join(root, "tiny-1.0")
    os.makedirs(prefix)
    with open(os.path.join(prefix, "README"), "w") as f:
        f.write("tiny\n")
    register_prefix(prefix, "tiny", "1.0", root=root)
    mirror = str(tmp_path / "mirror")
    run_cli("--root", root, "create", "--unsigned", mirror, check=True)

    version = _imported(tmp_path, "--version")
    assert not {m for m in version if m.startswith(("bincache.mirror", "bincache._native",
                                                    "bincache.signing", "ruamel"))}
    assert "bincache.config" not in version
    assert not version & PACKER

    listed = _imported(tmp_path, "list", mirror)
    assert not listed & PACKER and "bincache._native" not in listed
    assert "ruamel.yaml" not in listed  # no configuration file here: nothing to parse

    installed = _imported(tmp_path, "--root", str(tmp_path / "new"), "install", "--unsigned",
                          "--mirror", mirror, "tiny")
    assert "bincache.install.stage" in installed and not installed & PACKER
    assert os.path.isfile(os.path.join(str(tmp_path / "new"), ".spack-db", "index.json"))


def test_a_command_builds_only_its_verbs_parsers_and_errors_read_as_before(tmp_path):
    import argparse
    import importlib

    from bincache.cli import main as cli

    # The table a command picks its verb's module from is what the modules register.
    for module in cli.VERB_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        assert {v for v, m in cli.VERBS.items() if m == module} == set(sub.choices), module
    # And a command of one verb gets a parser that parses it (create's module builds only it).
    for verb, module in cli.VERBS.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub, verb)
        assert verb in sub.choices, verb
    sub = argparse.ArgumentParser().add_subparsers()
    importlib.import_module("bincache.cli.create").register(sub, "push")
    assert set(sub.choices) == {"create", "push"}

    env = dict(os.environ, PYTHONPATH=REPO, HOME=str(tmp_path / "home"))
    imported = _imported(tmp_path, "--root", str(tmp_path), "create", "--help")
    assert "bincache.cli.create" in imported and "bincache.cli.lifecycle" not in imported
    # Usage errors read as the whole parser gives them (its usage line, every verb named).
    p = subprocess.run([sys.executable, "-m", "bincache", "create", "--no-such-flag", "m"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2
    assert p.stderr.splitlines()[-1] == "error: unrecognized arguments: --no-such-flag"
    assert p.stderr.startswith("usage: bincache [-h]")
    p = subprocess.run([sys.executable, "-m", "bincache", "--root", "demo", "creat"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "invalid choice: 'creat'" in p.stderr and "'sync'" in p.stderr


def test_a_profiled_command_still_writes_its_profile(tmp_path):
    """The command leaves without the interpreter's teardown, but not under a profiler, whose
    results are written after the program ends (`python -m cProfile -o OUT -m bincache ...`)."""
    import pstats

    env = dict(os.environ, PYTHONPATH=REPO, HOME=str(tmp_path / "home"))
    out, mirror = tmp_path / "list.prof", tmp_path / "mirror"
    mirror.mkdir()
    p = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "bincache",
                        "list", str(mirror)], capture_output=True, text=True, env=env,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and "no packages" in p.stdout
    names = {func for (_file, _line, func) in pstats.Stats(str(out)).stats}
    assert "main" in names
