"""The gateway's own records under /.s3meta, read and written with its own identity
(`meta`): sidecars, bucket records and upload records, small JSON files; `secure_meta`
keeps that tree private. A part of ``client.s3.store.Store``: the base of its bucket and
multipart parts (buckets.py, multipart.py).
"""
from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING

from . import naming

if TYPE_CHECKING:
    from ..api import AegisClient

log = logging.getLogger(__name__)


class MetaRecords:
    """Small JSON records under /.s3meta, the base of Store's parts."""

    if TYPE_CHECKING:    # set by Store.__init__ (see there), used by every part
        fs: AegisClient
        meta: AegisClient
        user: str
        owner: str | None

    def _read_json(self, path: str) -> dict | None:
        try:
            return json.loads(self.meta.read_bytes(path))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except ValueError:
            return None

    def secure_meta(self) -> None:
        """Make /.s3meta the gateway's own (docs/s3.md, "Metadata sidecars"): sidecars
        and bucket records tell ETags, content types, user metadata and key names of
        objects that a native user may not be able to read, so no native user may list
        or read them; the gateway reads them only after the user's own request on the
        object passed. The root and .uploads are META_MODE/UPLOADS_MODE (users pass
        through to their own upload directory, 0700), everything else directly below is
        PRIVATE_MODE; a sidecar tree made later is made so (_write_sidecar_json). Creates
        what is missing and narrows what an older gateway left 0755; idempotent."""
        for path, mode in ((naming.META_ROOT, naming.META_MODE),
                           (naming.BUCKETS, naming.PRIVATE_MODE),
                           (naming.UPLOADS, naming.UPLOADS_MODE)):
            try:
                self.meta.mkdir(path, mode=mode)
            except FileExistsError:
                pass
        changes: list[tuple[str, dict]] = []
        if self.meta.stat(naming.META_ROOT, blocks=False)["mode"] & 0o7777 != naming.META_MODE:
            changes.append((naming.META_ROOT, {"mode": naming.META_MODE}))
        for e in self.meta.ls(naming.META_ROOT, detail=True):
            path = f"{naming.META_ROOT}/{e['name']}"
            mode = naming.UPLOADS_MODE if path == naming.UPLOADS else naming.PRIVATE_MODE
            if e["mode"] & 0o7777 != mode:
                changes.append((path, {"mode": mode}))
        for (path, _), out in zip(changes, self.meta.set_attrs(changes)):
            if isinstance(out, OSError) and not isinstance(out, FileNotFoundError):
                raise out
        if changes:
            log.info("/.s3meta: made %d entr%s private", len(changes),
                     "y" if len(changes) == 1 else "ies")

    def _write_sidecar_json(self, bucket: str, path: str, value: dict) -> None:
        """A sidecar: into its directory if that exists; else the bucket's sidecar tree
        is made first, private (PRIVATE_MODE) - never by write_bytes' parents, which
        would make it 0755 - and the directories below it then."""
        data = json.dumps(value).encode()
        try:
            self.meta.write_bytes(path, data, parents=False)
            return
        except FileNotFoundError:
            pass
        tree = naming.meta_bucket(bucket)
        try:
            self.meta.mkdir(tree, mode=naming.PRIVATE_MODE)
        except FileExistsError:
            pass
        except FileNotFoundError:          # /.s3meta itself is gone: make it again
            self.secure_meta()
            try:
                self.meta.mkdir(tree, mode=naming.PRIVATE_MODE)
            except FileExistsError:
                pass
        self.meta.write_bytes(path, data)

    def _read_many(self, paths: list[str]) -> list[dict | None]:
        if not paths:
            return []
        outs = [io.BytesIO() for _ in paths]
        results = self.meta.get_many(list(zip(paths, outs)), errors="return")
        found: list[dict | None] = []
        for out, res in zip(outs, results):
            try:
                found.append(json.loads(out.getvalue()) if isinstance(res, dict) else None)
            except ValueError:
                found.append(None)
        return found
