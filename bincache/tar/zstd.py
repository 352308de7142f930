"""Reading zstd tarballs: bounded memory, and truncation is an error.

python-zstandard's stream reader hands out bounded pieces (so a bomb of zeros cannot fill
memory) and reads across frames (bincache writes one frame per 1 MiB piece), but it ends
quietly when the input stops in the middle of a frame. `FrameWalker` follows the frame and
block headers of the compressed bytes as they pass (RFC 8878; payloads are skipped, not
decoded) and says whether the stream ended where a frame ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, cast

from ..errors import ExtractError
from ..limits import MAX_ZSTD_WINDOW, too_large

MAGIC = 0xFD2FB528
_SKIPPABLE = 0x184D2A50  # ..0x184D2A5F
_FCS_BYTES = (0, 2, 4, 8)
_DICT_BYTES = (0, 1, 2, 4)


class FrameWalker:
    """Feed it the compressed bytes in order; ``complete`` when they end on a frame boundary
    (and at least one frame was seen)."""

    def __init__(self) -> None:
        self._need = 4  # bytes of the current header wanted
        self._head = bytearray()
        self._state = "magic"
        self._skip = 0  # payload bytes to pass over
        self._last = False  # the block being skipped is the frame's last
        self._checksum = False
        self.frames = 0

    @property
    def complete(self) -> bool:
        return self.frames > 0 and self._state == "magic" and not self._head and not self._skip

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                k = min(self._skip, len(view))
                self._skip -= k
                view = view[k:]
                if not self._skip:
                    self._after_payload()
                continue
            k = min(self._need - len(self._head), len(view))
            self._head += view[:k]
            view = view[k:]
            if len(self._head) == self._need:
                head, self._head = bytes(self._head), bytearray()
                self._header(head)

    def _after_payload(self) -> None:
        if self._state == "skippable":
            self._end_frame()
        elif not self._last:
            self._state, self._need = "block-header", 3
        elif self._checksum:
            self._state, self._need = "checksum", 4
        else:
            self._end_frame()

    def _end_frame(self) -> None:
        self.frames += 1
        self._state, self._need = "magic", 4

    def _header(self, head: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(head, "little")
            if magic == MAGIC:
                self._state, self._need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == _SKIPPABLE:
                self._state, self._need = "skippable-size", 4
            else:
                raise ExtractError("damaged zstd data: bytes after a frame are not another frame")
        elif state == "skippable-size":
            self._state, self._skip = "skippable", int.from_bytes(head, "little")
            if not self._skip:
                self._end_frame()
        elif state == "descriptor":
            fhd = head[0]
            single = bool(fhd & 0x20)
            self._checksum = bool(fhd & 0x04)
            fcs = _FCS_BYTES[fhd >> 6] or (1 if single else 0)
            rest = (0 if single else 1) + _DICT_BYTES[fhd & 3] + fcs
            self._state = "frame-header"
            self._need = rest
            if not rest:
                self._state, self._need = "block-header", 3
        elif state == "frame-header":
            self._state, self._need = "block-header", 3
        elif state == "block-header":
            bh = int.from_bytes(head, "little")
            self._last = bool(bh & 1)
            kind, size = (bh >> 1) & 3, bh >> 3
            if kind == 3:
                raise ExtractError("damaged zstd data: a block of the reserved type")
            self._state = "block"
            self._skip = 1 if kind == 1 else size
            if not self._skip:
                self._after_payload()
        elif state == "checksum":
            self._end_frame()


class _Tee:
    """A raw reader that shows every byte it hands out to a FrameWalker."""

    def __init__(self, raw: BinaryIO, walker: FrameWalker):
        self._raw, self._walker = raw, walker

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._walker.feed(data)
        return data


def chunks(raw: BinaryIO, size: int) -> Iterator[bytes]:
    """The decompressed bytes of a zstd stream (one or more frames), ``size`` at most at a time.

    Raises ExtractError for damaged or truncated data, and LimitError for a frame that needs
    a window over MAX_ZSTD_WINDOW (the memory a decoder must hold).
    """
    import zstandard

    walker = FrameWalker()
    tee = _Tee(raw, walker)
    reader = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW).stream_reader(
        cast(BinaryIO, tee), read_size=1 << 17, read_across_frames=True)
    while True:
        try:
            block = reader.read(size)
        except zstandard.ZstdError as e:
            if "too much memory" in str(e):
                raise too_large("a zstd frame's window", MAX_ZSTD_WINDOW) from None
            raise ExtractError(f"damaged zstd data: {e}") from None
        if not block:
            break
        yield block
    # The reader may stop before the source is drained: the walker must see every byte.
    while tee.read(1 << 17):
        pass
    if not walker.complete:
        raise ExtractError("truncated zstd stream (the tarball is incomplete)")
