"""The native core, behind one import.

``BINCACHE_NATIVE=auto`` (default) uses the compiled C core when it is built and falls back to
the pure-Python twin; ``cffi`` insists on the C core; ``python`` forces the twin (tests use it to
compare the two). Both expose the same names:

    TarWriter(out, *, prefixes, level, threads, codec="gzip"|"zstd", pool=None, diff_id=True,
              direct_io="never"|"local"|"any")
                                                  .add_dir/.add_symlink/.add_hardlink/
                                                  .add_file/.add_bytes -> FileScan, .finish -> TarResult
    scan_buffer(data, prefixes) -> [(prefix_index, offset)]
    relocate_buffer(bytearray, [(old, new)]) -> count
    apply_patches(path, [(offset, old, new)])
    compress_buffer(data, level, threads, codec) -> bytes   # one gzip member (the raw deflate ceiling)
    codec_info(codec) -> (available, default level, lowest, highest)
    CompressPool(threads)  # compression threads shared by writers: .close() after them
    Inflater(fd|fileobj, *, offset=0, digest=False)  # gzip reader: .read/.readinto/.hexdigest()
    list_dirs(path, skip_prefix="", since=-inf, threads=1)  # the subdirectories, in one call:
                                                  -> (count, newest ctime, [(name, ctime >= since)])
    BACKEND, DEFAULT_LEVEL, FileScan, TarResult
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import NativeError


def _load(policy: str) -> ModuleType:
    if policy not in ("auto", "cffi", "python"):
        raise NativeError(f"BINCACHE_NATIVE={policy!r}: use auto, cffi or python")
    if policy in ("auto", "cffi"):
        try:
            return importlib.import_module("._cffi", __name__)
        except ImportError as e:
            if policy == "cffi":
                raise NativeError(
                    f"the C core is not built ({e}); run `pip install -e .` to build it"
                ) from None
    return importlib.import_module("._pure", __name__)


if TYPE_CHECKING:
    from . import _pure as _impl  # the C core has the twin's signatures (tests compare them)
else:
    _impl = _load(os.environ.get("BINCACHE_NATIVE", "auto"))

TarWriter = _impl.TarWriter
CompressPool = _impl.CompressPool
FileScan = _impl.FileScan
TarResult = _impl.TarResult
scan_buffer = _impl.scan_buffer
relocate_buffer = _impl.relocate_buffer
apply_patches = _impl.apply_patches
compress_buffer = _impl.compress_buffer
codec_info = _impl.codec_info
Inflater = _impl.Inflater
list_dirs = _impl.list_dirs
BACKEND: str = _impl.BACKEND
DEFAULT_LEVEL: int = _impl.DEFAULT_LEVEL
CODECS = ("gzip", "zstd")
KIND_TEXT, KIND_BINARY, KIND_ELF = "text", "binary", "elf"
IS_NATIVE = _impl.__name__.endswith("_cffi")
