"""Choosing how to preview a file and how many of its bytes to fetch for it.

Two steps, so a large file costs only what is shown: the page reads a small probe
(`probe_length`), then `choose` decides from its magic bytes (and the name) what the file
is and how many bytes the view needs (`Preview.fetch`): the whole file for images, audio
and video under a size cap, the first 64 KiB for text, the probe itself for hex. Pure.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath

PROBE_BYTES = 4 * 1024             # read first: enough for every magic number we know
TEXT_BYTES = 64 * 1024             # what the text view shows of a file
HEX_BYTES = PROBE_BYTES            # what the hex view shows: the probe, nothing more
# Media is shown whole or not at all; these caps keep a page from pulling in a movie.
MEDIA_CAPS = {"image": 20 * 1024 * 1024, "audio": 50 * 1024 * 1024,
              "video": 100 * 1024 * 1024}

TEXT, IMAGE, AUDIO, VIDEO, HEX, EMPTY = "text", "image", "audio", "video", "hex", "empty"

EXTENSIONS = {
    ".png": (IMAGE, "image/png"), ".jpg": (IMAGE, "image/jpeg"),
    ".jpeg": (IMAGE, "image/jpeg"), ".gif": (IMAGE, "image/gif"),
    ".webp": (IMAGE, "image/webp"), ".wav": (AUDIO, "audio/wav"),
    ".mp3": (AUDIO, "audio/mpeg"), ".ogg": (AUDIO, "audio/ogg"), ".oga": (AUDIO, "audio/ogg"),
    ".mp4": (VIDEO, "video/mp4"), ".m4v": (VIDEO, "video/mp4"), ".webm": (VIDEO, "video/webm"),
}

# st.code language per extension; anything else is shown as plain text.
LANGUAGES = {
    ".py": "python", ".json": "json", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml",
    ".md": "markdown", ".sh": "bash", ".c": "c", ".h": "c", ".cpp": "cpp", ".rs": "rust",
    ".go": "go", ".js": "javascript", ".ts": "typescript", ".html": "html", ".css": "css",
    ".sql": "sql", ".xml": "xml", ".csv": "text", ".txt": "text", ".log": "text",
}


@dataclass(frozen=True, slots=True)
class Preview:
    kind: str                # text, image, audio, video, hex, empty
    mime: str | None = None
    fetch: int = 0           # bytes from offset 0 the view shows (0: none)
    language: str | None = None
    note: str | None = None  # shown beside the view (truncation, size cap)


def probe_length(size: int) -> int:
    """How much to read first: enough to sniff, and all a hex view shows."""
    return max(0, min(size, PROBE_BYTES))


def sniff(head: bytes) -> tuple[str, str] | None:
    """(kind, mime) from magic bytes, or None."""
    h = bytes(head[:64])
    if h.startswith(b"\x89PNG\r\n\x1a\n"):
        return IMAGE, "image/png"
    if h.startswith(b"\xff\xd8\xff"):
        return IMAGE, "image/jpeg"
    if h[:6] in (b"GIF87a", b"GIF89a"):
        return IMAGE, "image/gif"
    if h[:4] == b"RIFF" and h[8:12] == b"WEBP":
        return IMAGE, "image/webp"
    if h[:4] == b"RIFF" and h[8:12] == b"WAVE":
        return AUDIO, "audio/wav"
    if h.startswith(b"ID3"):
        return AUDIO, "audio/mpeg"
    if h.startswith(b"OggS"):
        # Ogg carries both; Theora/VP8 streams say so in the first page's header.
        return (VIDEO, "video/ogg") if b"theora" in h else (AUDIO, "audio/ogg")
    if h[4:8] == b"ftyp":
        brand = h[8:12]
        return (AUDIO, "audio/mp4") if brand in (b"M4A ", b"M4B ") else (VIDEO, "video/mp4")
    if h.startswith(b"\x1a\x45\xdf\xa3") and b"webm" in bytes(head[:4096]):
        return VIDEO, "video/webm"
    return None


def _mp3_frame_sync(h: bytes) -> bool:
    """An MPEG audio frame header (11 sync bits, a valid layer) - weak alone, so it only
    counts when the name says .mp3 as well."""
    return len(h) >= 2 and h[0] == 0xFF and (h[1] & 0xE0) == 0xE0 and (h[1] & 0x06) != 0


def decode_text(head: bytes, truncated: bool) -> str | None:
    """The head as text, or None when it does not look like text."""
    data = bytes(head)
    if b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A cut through a multi-byte character at the end of a truncated head is fine.
        cut = truncated and exc.start >= len(data) - 3 and exc.reason == "unexpected end of data"
        if not cut:
            return None
        text = data[:exc.start].decode("utf-8")
    if not text:
        return text
    controls = sum(1 for ch in text
                   if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f\v\x1b")
    return text if controls <= len(text) // 100 else None


def choose(name: str, size: int, head: bytes) -> Preview:
    """How to show the file `name` of `size` bytes whose first bytes are `head` (the
    probe: what `probe_length` asked for, or more)."""
    if size == 0:
        return Preview(EMPTY, note="empty file")
    ext = PurePosixPath(name).suffix.lower()
    found = sniff(head)
    if found is None and ext == ".mp3" and _mp3_frame_sync(bytes(head[:4])):
        found = EXTENSIONS[".mp3"]
    if found is not None:
        kind, mime = found
        cap = MEDIA_CAPS[kind]
        if size <= cap:
            return Preview(kind, mime, fetch=size)
        return Preview(HEX, mime, fetch=min(size, HEX_BYTES),
                       note=f"{kind} of {size:,} bytes is over the {cap // 2**20} MiB preview "
                            f"cap (download it instead); first {min(size, HEX_BYTES):,} bytes:")
    if decode_text(head, truncated=size > len(head)) is not None:
        fetch = min(size, TEXT_BYTES)
        note = f"first {fetch:,} of {size:,} bytes" if size > fetch else None
        return Preview(TEXT, "text/plain", fetch=fetch, language=LANGUAGES.get(ext, "text"),
                       note=note)
    fetch = min(size, HEX_BYTES)
    note = f"first {fetch:,} of {size:,} bytes" if size > fetch else None
    return Preview(HEX, "application/octet-stream", fetch=fetch, note=note)


def hexdump(data: bytes, offset: int = 0, width: int = 16) -> str:
    """Classic offset / hex / ASCII lines."""
    data = bytes(data)
    lines = []
    for i in range(0, len(data), width):
        row = data[i:i + width]
        hexes = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        lines.append(f"{offset + i:08x}  {hexes:<{width * 3 - 1}}  {text}")
    return "\n".join(lines)
