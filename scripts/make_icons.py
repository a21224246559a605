"""Writes the agent app's PWA icons (static/app/icon-*.png) with the standard library only.

A rounded square in the app's colour with a white speech bubble: run it again
after changing the colours. `python scripts/make_icons.py`
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "static" / "app"
BLUE = (23, 92, 211)
WHITE = (255, 255, 255)


def pixel(x: float, y: float) -> tuple[int, int, int, int]:
    """x, y in [0, 1): the colour there (maskable: the bubble stays inside the safe 80%)."""
    cx, cy = x - 0.5, y - 0.46
    in_bubble = (cx / 0.28) ** 2 + (cy / 0.2) ** 2 <= 1
    in_tail = 0.34 <= x <= 0.46 and 0.6 <= y <= 0.74 and (x - 0.34) <= (0.74 - y) * 0.9
    dots = any(((x - dx) ** 2 + (y - 0.46) ** 2) <= 0.035**2 for dx in (0.39, 0.5, 0.61))
    if (in_bubble or in_tail) and not dots:
        return (*WHITE, 255)
    return (*BLUE, 255)


def png(size: int) -> bytes:
    rows = b"".join(
        b"\x00" + b"".join(bytes(pixel((i + 0.5) / size, (j + 0.5) / size)) for i in range(size)) for j in range(size)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for size in (192, 512):
        (OUT / f"icon-{size}.png").write_bytes(png(size))
        print(OUT / f"icon-{size}.png")
