"""Image tokens: the tile formula (gpt-4o family, o1/o3, gpt-4o-mini constants) and the patch formula
(gpt-4.1-mini/nano, o4-mini, gpt-5 mini/nano); width and height read from ``data:`` URL headers
(PNG/JPEG/GIF/WebP, stdlib only). No I/O."""

from __future__ import annotations

import binascii
import math
import struct

from ..values import value


@value
class ImageProfile:
    name: str
    base: int = 0  # tile models: tokens for the low-detail / base image
    tile: int = 0  # tile models: tokens per 512px tile
    multiplier: float = 0.0  # patch models (0 for tile models)
    verified: bool = False


_TILE_4O = ImageProfile("tile-85-170", 85, 170, verified=True)
_TILE_4O_MINI = ImageProfile("tile-2833-5667", 2833, 5667, verified=True)
_TILE_O = ImageProfile("tile-75-150", 75, 150, verified=True)
_TILE_GPT5 = ImageProfile("tile-70-140", 70, 140)
_TILE_CUP = ImageProfile("tile-65-129", 65, 129)
_TILE_UNKNOWN = ImageProfile("tile-85-170?", 85, 170)
_IMAGE_PREFIXES: tuple[tuple[str, ImageProfile], ...] = (
    ("gpt-4o-mini", _TILE_4O_MINI),
    ("gpt-4.1-mini", ImageProfile("patch-1.62", multiplier=1.62)),
    ("gpt-4.1-nano", ImageProfile("patch-2.46", multiplier=2.46)),
    ("o4-mini", ImageProfile("patch-1.72", multiplier=1.72)),
    ("gpt-4o", _TILE_4O),
    ("chatgpt-4o", _TILE_4O),
    ("gpt-4.1", _TILE_4O),
    ("gpt-4.5", _TILE_4O),
    ("o1", _TILE_O),
    ("o3", _TILE_O),
    ("computer-use-preview", _TILE_CUP),
)
ASSUMED_SIZE = (1024, 1024)  # remote URL / unreadable data: conservative, high detail


def image_profile_for_model(model: str) -> ImageProfile:
    lowered = model.lower().removeprefix("ft:")
    for prefix, profile in _IMAGE_PREFIXES:
        if lowered.startswith(prefix):
            return profile
    if lowered.startswith("gpt-5"):
        if "-nano" in lowered:
            return ImageProfile("patch-2.46", multiplier=2.46)
        if "-mini" in lowered:
            return ImageProfile("patch-1.62", multiplier=1.62)
        return _TILE_GPT5
    return _TILE_UNKNOWN


def tile_image_tokens(width: int, height: int, detail: str, base: int, tile: int) -> int:
    """OpenAI vision guide: fit in 2048x2048, then shortest side to 768 (only if larger), 512px tiles."""
    if detail == "low":
        return base
    w, h = width, height
    if max(w, h) > 2048:
        w, h = w * 2048 // max(w, h), h * 2048 // max(w, h)
    if min(w, h) > 768:
        w, h = w * 768 // min(w, h), h * 768 // min(w, h)
    return base + tile * (-(-w // 512)) * (-(-h // 512))


def patch_image_tokens(width: int, height: int, multiplier: float) -> int:
    """32px patches, downscaled to at most 1536 patches, times the model's multiplier."""
    patches = -(-width // 32) * -(-height // 32)
    if patches > 1536:
        r = math.sqrt(32 * 32 * 1536 / (width * height))
        wr, hr = width * r / 32, height * r / 32
        r *= min(math.floor(wr) / wr, math.floor(hr) / hr)
        wr, hr = width * r / 32, height * r / 32
        patches = min(math.ceil(wr - 1e-9) * math.ceil(hr - 1e-9), 1536)
    return math.ceil(patches * multiplier)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG/GIF/WebP/JPEG header, or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return (int(w), int(h)) if w and h else None
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return (int(w), int(h)) if w and h else None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return (w & 0x3FFF, h & 0x3FFF) if w & 0x3FFF and h & 0x3FFF else None
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # standalone markers
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return (int(w), int(h)) if w and h else None
        i += 2 + length
    return None


def data_url_image_size(url: str) -> tuple[int, int] | None:
    """Decode only as much of a base64 ``data:`` URL as the header needs (JPEG may need it all)."""
    if not url.startswith("data:"):
        return None
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    for chunk in (payload[:4096], payload[:262_144], payload):
        try:
            size = image_size(binascii.a2b_base64(chunk[: len(chunk) // 4 * 4]))
        except (binascii.Error, ValueError, struct.error):
            size = None
        if size is not None or len(chunk) == len(payload):
            return size
    return None
