"""S3's XML: response documents built from plain values, and the two request documents
the gateway reads (DeleteObjects, CompleteMultipartUpload), parsed with a size limit.
"""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import Iterable
from urllib.parse import quote
from xml.sax.saxutils import escape

from .errors import S3Error

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_XML = 2 * 1024 * 1024       # a 1000-key DeleteObjects fits with room to spare


def iso(ts: float) -> str:
    """S3's timestamp, to the millisecond (rounded down).

    Not to the second: `aws s3 sync` uploads a file again when its local mtime is later than
    the object's LastModified, and a file written and uploaded within one second would look
    newer than its own upload if the fraction were dropped.
    """
    ms = int(ts * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def http_date(ts: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(ts))


def doc(root: str, body: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NS}">{body}</{root}>'.encode()


def el(name: str, value: object) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{name}>{escape(str(value))}</{name}>"


def owner(user: str) -> str:
    return f"<Owner>{el('ID', user)}{el('DisplayName', user)}</Owner>"


def key_text(key: str, url: bool) -> str:
    """encoding-type=url: keys (and prefixes) percent-encoded, as S3 does."""
    return quote(key, safe="/") if url else key


def _children(root: ET.Element, name: str) -> Iterable[ET.Element]:
    return [c for c in root if c.tag.rsplit("}", 1)[-1] == name]


def _text(node: ET.Element, name: str) -> str | None:
    for c in _children(node, name):
        return c.text or ""
    return None


def parse(body: bytes, root_name: str) -> ET.Element:
    if len(body) > MAX_XML:
        raise S3Error("MalformedXML", "the XML document is too large")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise S3Error("MalformedXML", "DTDs and entities are not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML") from None
    if root.tag.rsplit("}", 1)[-1] != root_name:
        raise S3Error("MalformedXML", f"the root element must be {root_name}")
    return root


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    """DeleteObjects: ([keys], quiet)."""
    root = parse(body, "Delete")
    keys = []
    for obj in _children(root, "Object"):
        key = _text(obj, "Key")
        if key is None:
            raise S3Error("MalformedXML", "an Object has no Key")
        keys.append(key)
    if not 1 <= len(keys) <= 1000:
        raise S3Error("MalformedXML", "Delete must name 1 to 1000 objects")
    return keys, (_text(root, "Quiet") or "").strip().lower() == "true"


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """CompleteMultipartUpload: [(part number, ETag)] as sent, in order."""
    root = parse(body, "CompleteMultipartUpload")
    parts = []
    for p in _children(root, "Part"):
        number, etag = _text(p, "PartNumber"), _text(p, "ETag")
        if number is None or etag is None or not number.strip().isdigit():
            raise S3Error("MalformedXML", "a Part needs PartNumber and ETag")
        parts.append((int(number), etag.strip().strip('"')))
    if not parts:
        raise S3Error("MalformedXML", "CompleteMultipartUpload names no parts")
    return parts
