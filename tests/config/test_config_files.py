"""Config files are parsed once per process and edited through one round-trip parser."""

from __future__ import annotations

import os

import pytest

from bincache import config, yamlfile
from bincache.mirror import config as mirrors
from bincache.mirror.config import MirrorChanges


@pytest.fixture(autouse=True)
def _fresh_config():
    config.reset()
    yield
    config.reset()


def test_a_file_is_parsed_once_however_often_it_is_asked_for(_isolated_home, monkeypatch):
    path = _isolated_home / ".bincache" / "config.yaml"
    path.parent.mkdir()
    path.write_text("config:\n  gnupghome: ./one\n")
    parses = []
    real = yamlfile.parse
    monkeypatch.setattr(yamlfile, "parse", lambda text, file: parses.append(file) or real(text, file))
    for _ in range(20):  # what verifying 20 manifests asks (the GnuPG home each time)
        assert config.get_value("gnupghome") == "./one"
    assert parses == [str(path)]
    # A changed file is read again.
    path.write_text("config:\n  gnupghome: ./two\n")
    os.utime(path, ns=(1, 1))
    assert config.get_value("gnupghome") == "./two"
    assert len(parses) == 2


def test_an_insecure_mirror_is_written_with_a_warning_that_spack_refuses_it(_isolated_home):
    result = mirrors.add_mirror("reg", "oci+http://127.0.0.1:5000/c", MirrorChanges(insecure=True))
    assert any("Spack refuses a mirrors.yaml that holds it" in w for w in result.warnings)
    assert mirrors.add_mirror("plain", "./p").warnings == []


def test_duplicate_keys_name_both_lines_at_any_depth(tmp_path):
    text = "mirrors:\n  a:\n    url: /x\n    signed: true\n    url: /y\n"
    with pytest.raises(config.ConfigError,
                       match=r"^f.yaml:5: mirrors:a:url: duplicate key \(the first one is on line 3\)$"):
        yamlfile.parse(text, "f.yaml")
