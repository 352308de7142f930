"""Developer sessions: `nox -s tests`, `nox -s tests-python`, `nox -s tests-asan`, `nox -s lint`,
`nox -s bench`, `nox -s build`.

System packages (gcc, gpg, docker-registry, skopeo, umoci...) come from ./scripts/setup.
Posargs go to pytest.
"""

import nox

nox.options.sessions = ["tests", "lint"]


@nox.session
def tests(session):
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(name="tests-python")
def tests_python(session):
    """The same suite on the pure-Python twin of the C core."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs, env={"BINCACHE_NATIVE": "python"})


@nox.session(name="tests-asan")
def tests_asan(session):
    """The native and property tests on the C core built with ASan and UBSan (scripts/test-asan);
    any finding fails the session. The normal build of the core is not touched."""
    session.install(".[test]")  # the dependencies; the tests import this tree
    session.run("./scripts/test-asan", *session.posargs, external=True)


@nox.session
def lint(session):
    """ruff, then mypy with the configuration of pyproject.toml (strict on the public API)."""
    session.install("-e", ".[dev,s3]")  # mypy reads the dependencies' own types
    session.run("ruff", "check", "bincache", "tests", "benchmarks")
    session.run("mypy")


@nox.session
def bench(session):
    session.install("-e", ".")
    session.run("python", "benchmarks/run_all.py", *session.posargs)


@nox.session
def build(session):
    session.install("build")
    session.run("python", "-m", "build")
