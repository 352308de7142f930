"""The C binary rewrite: relocate_buffer, apply_patches, on buffers and on a real program."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from bincache.errors import CannotGrowString, NativeError

OLD = b"/tmp/bincache-test/a-long-install-root/opt/pkg-1.0"


def test_relocate_buffer_pads_with_slashes_and_keeps_the_length(backend):
    data = bytearray(b"\0" + OLD + b"/lib\0" + OLD + b"\0tail:" + OLD)
    n = backend.relocate_buffer(data, [(OLD, b"/new/pkg")])
    pad = b"/" * (len(OLD) - len(b"/new/pkg"))
    assert n == 3
    assert (
        bytes(data)
        == b"\0" + pad + b"/new/pkg/lib\0" + pad + b"/new/pkg\0tail:" + pad + b"/new/pkg"
    )


def test_relocate_buffer_refuses_to_grow_and_writes_nothing(backend):
    data = bytearray(b"/short/p and /opt/x")
    before = bytes(data)
    with pytest.raises(CannotGrowString, match="from 8 to 14 bytes"):
        backend.relocate_buffer(data, [(b"/opt/x", b"/o"), (b"/short/p", b"/much/longer/p")])
    assert data == before
    # a longer new prefix is fine while it does not occur
    assert backend.relocate_buffer(data, [(b"/opt/x", b"/o"), (b"/absent", b"/much/longer")]) == 1


def test_apply_patches_checks_every_patch_before_writing(backend, tmp_path):
    path = tmp_path / "lib.so"
    content = b"\x7fELF" + b"\0" * 60 + OLD + b"\0" + b"x" * 100 + OLD + b"/bin\0"
    path.write_bytes(content)
    first = content.index(OLD)
    second = content.index(OLD, first + 1)
    with pytest.raises(NativeError, match=f"{path}: offset {second + 1} does not hold"):
        backend.apply_patches(str(path), [(first, OLD, b"/n"), (second + 1, OLD, b"/n")])
    assert path.read_bytes() == content
    with pytest.raises(CannotGrowString, match=f"{path}: cannot grow"):
        backend.apply_patches(str(path), [(first, OLD, b"/n"), (second, OLD, OLD + b"x")])
    assert path.read_bytes() == content
    with pytest.raises(NativeError, match="does not hold"):
        backend.apply_patches(str(path), [(len(content) - 3, OLD, b"/n")])  # past the end
    backend.apply_patches(str(path), [(first, OLD, b"/n"), (second, OLD, b"/new/root")])
    out = path.read_bytes()
    assert len(out) == len(content)
    assert out[first : first + len(OLD)] == b"/" * (len(OLD) - 2) + b"/n"
    assert out[second : second + len(OLD) + 4] == b"/" * (len(OLD) - 9) + b"/new/root/bin"


def test_apply_patches_on_a_missing_file_names_it(backend, tmp_path):
    with pytest.raises(NativeError, match=f"cannot open {tmp_path}/gone: No such file"):
        backend.apply_patches(str(tmp_path / "gone"), [(0, b"a", b"b")])


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_a_relocated_program_prints_its_new_prefix(backend, tmp_path):
    """gcc embeds the prefix as a string constant; after the rewrite the program prints the
    new one (with the slash padding, which the kernel and libc read as one '/')."""
    src = tmp_path / "hello.c"
    src.write_text(
        "#include <stdio.h>\n"
        f'static const char *where = "{OLD.decode()}/share/data.txt";\n'
        "int main(void) { puts(where); return 0; }\n"
    )
    exe = tmp_path / "hello"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    data = bytearray(exe.read_bytes())
    scan = backend.scan_buffer(bytes(data), [OLD])
    assert len(scan) == 1
    patched = tmp_path / "hello2"
    patched.write_bytes(data)
    os.chmod(patched, 0o755)
    backend.apply_patches(str(patched), [(off, OLD, b"/srv/pkg") for _, off in scan])
    out = subprocess.run([str(patched)], check=True, capture_output=True).stdout
    assert out == b"/" * (len(OLD) - 8) + b"/srv/pkg/share/data.txt\n"
    assert os.path.getsize(patched) == os.path.getsize(exe)
    # relocate_buffer does the same thing in memory
    assert backend.relocate_buffer(data, [(OLD, b"/srv/pkg")]) == 1
    assert bytes(data) == patched.read_bytes()
