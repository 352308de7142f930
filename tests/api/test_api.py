"""The Python API fails loudly: a misspelled option, an option the mirror's kind does not take,
and a string where a list goes are named, never ignored or iterated character by character."""

from __future__ import annotations

import os

import pytest

from bincache import api
from bincache.errors import UsageError


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    prefix = root / "data-1.0"
    (prefix / "share").mkdir(parents=True)
    (prefix / "share" / "where").write_text(f"{prefix}\n")
    api.register(str(prefix), "data", "1.0", root=str(root))
    return str(root)


def test_a_misspelled_option_is_named(tree, tmp_path):
    mirror = str(tmp_path / "mirror")
    with pytest.raises(UsageError, match=r"push\(\) got unknown option: forse \(did you mean force\?\)"):
        api.push(mirror, root=tree, signed=False, forse=True)
    assert not os.path.exists(mirror)
    with pytest.raises(UsageError, match=r"install\(\) got unknown options: jbos \(did you mean jobs\?\), x"):
        api.install(["data"], mirrors=[mirror], root=str(tmp_path / "new"), jbos=2, x=1)
    with pytest.raises(UsageError, match=r"register\(\) got unknown option: dep \(did you mean deps\?\)"):
        api.register(os.path.join(tree, "data-1.0"), "data", "1.0", dep=[])


def test_an_oci_option_on_a_directory_mirror_is_refused(tree, tmp_path):
    mirror = str(tmp_path / "mirror")
    with pytest.raises(UsageError, match=r"base_image apply only to OCI mirrors \(oci://...\); .*mirror is not one"):
        api.push(mirror, root=tree, signed=False, base_image="ubuntu:24.04")
    with pytest.raises(UsageError, match="tag apply only to OCI mirrors"):
        api.push(mirror, root=tree, signed=False, tag="v1")
    assert not os.path.exists(mirror)


def test_a_string_where_a_list_goes_is_one_item(tree, tmp_path):
    mirror = str(tmp_path / "mirror")
    result = api.push(mirror, "data", root=tree, signed=False)  # specs="data", not "d", "a", ...
    assert [p.spec.name for p in result.pushed] == ["data"]
    new = tmp_path / "new"
    installed = api.install("data", mirrors=mirror, root=str(new), unsigned=True)
    [pkg] = installed.installed
    assert open(os.path.join(pkg.prefix, "share", "where")).read() == f"{pkg.prefix}\n"
    got = api.download("data", str(tmp_path / "dl"), mirrors=mirror, unsigned=True)
    assert [d.spec.name for d in got] == ["data"]
    with pytest.raises(UsageError, match="mirrors takes a list, not int"):
        api.install("data", mirrors=3, root=str(new))
