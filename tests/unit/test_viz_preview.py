"""viz/preview.py: preview kind from magic bytes and name, and the bytes each view fetches."""
from __future__ import annotations

import pytest

from viz.preview import (AUDIO, EMPTY, HEX, HEX_BYTES, IMAGE, MEDIA_CAPS, PROBE_BYTES, TEXT,
                         TEXT_BYTES, VIDEO, choose, decode_text, hexdump, probe_length, sniff)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(100)
MAGIC = [
    ("a.png", PNG, IMAGE, "image/png"),
    ("a.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(50), IMAGE, "image/jpeg"),
    ("a.gif", b"GIF89a" + bytes(50), IMAGE, "image/gif"),
    ("a.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(50), IMAGE, "image/webp"),
    ("a.wav", b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(50), AUDIO, "audio/wav"),
    ("a.mp3", b"ID3\x04\x00" + bytes(50), AUDIO, "audio/mpeg"),
    ("a.ogg", b"OggS\x00\x02" + bytes(22) + b"\x01vorbis" + bytes(20), AUDIO, "audio/ogg"),
    ("a.mp4", b"\x00\x00\x00\x20ftypisom" + bytes(50), VIDEO, "video/mp4"),
    ("a.webm", b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm" + bytes(50), VIDEO,
     "video/webm"),
]


@pytest.mark.parametrize("name,head,kind,mime", MAGIC)
def test_media_by_magic_fetches_the_whole_file(name, head, kind, mime):
    p = choose(name, 5000, head)
    assert (p.kind, p.mime, p.fetch) == (kind, mime, 5000)


@pytest.mark.parametrize("name,head,kind,mime", MAGIC)
def test_magic_wins_over_a_wrong_name(name, head, kind, mime):
    assert choose("misnamed.txt", 5000, head).kind == kind


def test_media_over_the_cap_is_a_notice_and_a_small_hex_view():
    size = MEDIA_CAPS[VIDEO] + 1
    p = choose("big.mp4", size, b"\x00\x00\x00\x20ftypisom" + bytes(PROBE_BYTES - 12))
    assert p.kind == HEX and p.fetch == HEX_BYTES
    assert "preview cap" in p.note and "video" in p.note
    assert choose("big.png", MEDIA_CAPS[IMAGE], PNG).fetch == MEDIA_CAPS[IMAGE]


def test_mp3_frame_sync_needs_the_name_too():
    frame = b"\xff\xfb\x90\x64" + bytes(200)
    assert choose("song.mp3", 3000, frame).kind == AUDIO
    assert choose("song.bin", 3000, frame).kind == HEX
    assert sniff(b"\xff\xd8\xff") == (IMAGE, "image/jpeg")   # JPEG is not an MP3 frame


def test_small_text_is_fetched_whole_large_text_only_its_head():
    assert choose("a.py", 12, b"print('hi')\n") == choose("a.py", 12, b"print('hi')\n")
    p = choose("a.py", 12, b"print('hi')\n")
    assert (p.kind, p.fetch, p.language, p.note) == (TEXT, 12, "python", None)
    size = 10 * 2**20
    p = choose("big.log", size, b"line\n" * (PROBE_BYTES // 5))
    assert (p.kind, p.fetch, p.language) == (TEXT, TEXT_BYTES, "text")
    assert p.note == f"first {TEXT_BYTES:,} of {size:,} bytes"
    assert choose("notes.unknown", 5, b"hello").language == "text"


def test_text_cut_inside_a_multibyte_character():
    head = ("é" * (PROBE_BYTES // 2)).encode()[:PROBE_BYTES - 1]   # ends mid-character
    assert choose("fr.txt", 10 * PROBE_BYTES, head).kind == TEXT
    # ... but a file that really ends like that is not UTF-8 text.
    assert decode_text(head, truncated=False) is None


def test_binary_is_hex_and_fetches_only_what_is_shown():
    blob = bytes(range(256)) * 16
    p = choose("blob.bin", 1 << 30, blob[:PROBE_BYTES])
    assert (p.kind, p.fetch) == (HEX, HEX_BYTES)
    assert p.note == f"first {HEX_BYTES:,} of {1 << 30:,} bytes"
    p = choose("small.bin", 3, b"\x00\x01\x02")
    assert (p.kind, p.fetch, p.note) == (HEX, 3, None)
    # Mostly text with a few control bytes is still binary.
    assert choose("x", 200, b"abc\x01\x02\x03" * 30).kind == HEX


def test_empty_file():
    p = choose("e.png", 0, b"")
    assert (p.kind, p.fetch) == (EMPTY, 0)


def test_probe_length():
    assert probe_length(0) == 0
    assert probe_length(10) == 10
    assert probe_length(10**12) == PROBE_BYTES
    # Every view fits within the probe or asks for more explicitly.
    assert HEX_BYTES <= PROBE_BYTES <= TEXT_BYTES


def test_hexdump_layout():
    out = hexdump(b"AegisFS\x00\x01" + bytes(range(0x41, 0x41 + 10)), offset=0x100)
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0] == "00000100  41 65 67 69 73 46 53 00 01 41 42 43 44 45 46 47  AegisFS..ABCDEFG"
    assert lines[1].startswith("00000110  48 49 4a") and lines[1].endswith("HIJ")
    assert len(lines[1]) == len(lines[0]) - 13
    assert hexdump(b"") == ""
