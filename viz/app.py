"""The AegisFS visualizer page: live events, cluster health, namespace browser with block
graphs and previews, upload and download.

    streamlit run viz/app.py -- --broker tcp://127.0.0.1:5550 --events tcp://127.0.0.1:5553

Endpoints: flags, else AEGISFS_BROKER / AEGISFS_BROKER_EVENTS_OUT, else broker.config.
The decisions live in viz.state / viz.graph / viz.preview; this script only lays them out.
"""
from __future__ import annotations

import argparse
import io
import logging
import posixpath
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

# `streamlit run viz/app.py` puts viz/ on sys.path, not the project root.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from broker import config  # noqa: E402
from client.api import AegisClient  # noqa: E402
from viz import preview as pv  # noqa: E402
from viz.events_view import render_events  # noqa: E402
from viz.feed import shared_feed  # noqa: E402
from viz.graph import file_dot  # noqa: E402
from viz.state import human_bytes, plural, short_checksum, when  # noqa: E402

log = logging.getLogger("viz.app")

QUICK = 2.0                  # seconds for status/ls/stat: a down cluster shows up at once
PROBE = 1.0                  # connect timeout of the retries while the cluster is down
TRANSFER = 30.0              # seconds per request while moving blocks
DOWNLOAD_CAP = 512 * 2**20   # the browser download is built in memory; past this use the CLI
REDRAW_EVERY = 3.0           # at most one whole-page redraw per this many seconds for events
FLASH_SECONDS = 10.0         # how long "Stored ..." stays after an upload
CODE_HEIGHT = 480            # pixels of a long text or hex view before it scrolls


# -- plumbing ---------------------------------------------------------------------------------

def endpoints() -> tuple[str, str]:
    """(broker client endpoint, events XPUB endpoint)."""
    # Under AppTest sys.argv is pytest's: tolerate anything we do not know.
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--broker")
    parser.add_argument("--events")
    parser.add_argument("--config")
    args, _ = parser.parse_known_args(sys.argv[1:])
    cfg = config.load(args.config, {"broker": {"client": args.broker, "events_out": args.events}})
    return cfg["broker"]["client"], cfg["broker"]["events_out"]


def security() -> dict:
    """The [security] settings of this page: --key FILE and --security on|off, else the
    config's; the key is found like the CLI's (AEGISFS_KEY, [security] key, the local
    cluster's admin key). The viz connects as a user: the admin user by default, or one
    made for it (`aegisfs user add viz`, then --key that file)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    parser.add_argument("--key")
    parser.add_argument("--security", choices=["on", "off"])
    args, _ = parser.parse_known_args(sys.argv[1:])
    return config.load(args.config, {"security": {"mode": args.security, "key": args.key}})[
        "security"]


@contextmanager
def aegis(broker: str, timeout: float = QUICK,
          connect_timeout: float = QUICK) -> Iterator[AegisClient]:
    """A client for this run only: ZeroMQ sockets belong to one thread, and Streamlit may
    run the next rerun on another."""
    sec = security()
    # retry_deadline=0: a dashboard shows that the cluster is down instead of waiting
    # through the outage like a user's program does (client/retry.py)
    client = AegisClient(broker, timeout=timeout, connect_timeout=connect_timeout,
                         config={"security": sec}, key=sec.get("key") or None,
                         retry_deadline=0)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def guarded(what: str) -> Iterator[None]:
    """A section that fails shows one short line and leaves the rest of the page working;
    the traceback goes to the log, not the page. (Streamlit's rerun and stop are
    BaseExceptions and pass through.)"""
    try:
        yield
    except Exception as exc:
        log.exception("%s failed", what)
        st.error(f"{what} failed: {exc}", icon=":material/error:")


def count(value: Any) -> int:
    """Health entries are counts from `status` and lists from `fsck`."""
    if isinstance(value, (list, tuple, set, dict)):
        return len(value)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


# -- cluster --------------------------------------------------------------------------------

@st.fragment(run_every=2)
def cluster_panel(broker: str) -> None:
    ss = st.session_state
    # While the cluster is down the retries are shorter, so the page is not always busy.
    connect = PROBE if ss.get("reachable") is False else QUICK
    status: dict | None
    try:
        with aegis(broker, connect_timeout=connect) as c:
            status = c.status()
        reachable, problem = True, ""
    except OSError as exc:
        status, reachable, problem = None, False, str(exc)
    before = ss.get("reachable")
    ss["reachable"] = reachable
    if before is not False and not reachable:
        log.warning("cluster at %s unreachable: %s", broker, problem)
    elif before is False and reachable:
        log.info("cluster at %s reachable again", broker)
    ss["status"] = status
    if before is not None and before != reachable and not ss.get("page_pass"):
        # A timer run saw the cluster go or come back: redraw the whole page, so the
        # namespace browser follows without anyone pressing a button.
        st.rerun(scope="app")
    if status is None:   # the same as not reachable: status() returns a map
        st.error(f"**Cluster unreachable** at `{broker}`: {problem}. Retrying every few s; "
                 "the page recovers by itself when the cluster is back.",
                 icon=":material/cloud_off:")
        return
    with guarded("The cluster view"):
        render_cluster(status)


def render_cluster(status: dict) -> None:
    health = status.get("health") or {}
    nodes = status.get("nodes") or []
    up = sum(1 for n in nodes if n.get("state") == "up")
    cols = st.columns(7)
    cols[0].metric("DataNodes up", f"{up} / {len(nodes)}")
    cols[1].metric("Files", count(status.get("files")))
    cols[2].metric("Blocks", count(status.get("blocks")))
    cols[3].metric("Stored", human_bytes(sum(count(n.get("used")) for n in nodes)))
    cols[4].metric("Under-replicated", count(health.get("under_replicated")))
    cols[5].metric("Missing", count(health.get("missing")))
    cols[6].metric("Corrupt", count(health.get("corrupt")))
    if status.get("safe_mode") or health.get("safe_mode"):
        st.info("The MDS is in safe mode: waiting for block reports before repairing.",
                icon=":material/hourglass_top:")
    if not nodes:
        st.warning("No DataNode has reported to the MDS yet.")
        return
    per_row = 4
    for start in range(0, len(nodes), per_row):
        row = st.columns(per_row)
        for col, node in zip(row, nodes[start:start + per_row]):
            state = str(node.get("state", "?"))
            used, cap = count(node.get("used")), count(node.get("capacity"))
            with col.container(border=True):
                badge = f":green[● {state}]" if state == "up" else f":red[● {state}]"
                st.markdown(f":material/storage: **{node.get('id')}** · {badge}")
                st.progress(min(1.0, used / cap) if cap else 0.0,
                            text=f"{human_bytes(used)} of {human_bytes(cap)}")
                st.caption(f"{plural(count(node.get('blocks')), 'block')} · last heard "
                           f"{node.get('last_seen', '?')} s ago")


# -- live events --------------------------------------------------------------------------------

@st.fragment(run_every=1)
def events_panel(events: str) -> None:
    ss = st.session_state
    feed = shared_feed(events, tuple(sorted((k, str(v)) for k, v in security().items())))
    v = feed.view(recent=25)
    seen = ss.get("ns_version")
    if (not ss.get("page_pass") and seen is not None and seen != v.namespace_changes
            and time.time() - ss.get("ns_redrawn", 0.0) > REDRAW_EVERY):
        # A file or directory changed: redraw the page so the listing shows it.
        ss["ns_redrawn"] = time.time()
        st.rerun(scope="app")
    if ss.get("page_pass"):
        ss["ns_version"] = v.namespace_changes
    with guarded("The event feed"):
        render_events(events, feed, v)


# -- namespace --------------------------------------------------------------------------------

def navigate(key: str) -> None:
    """Selectbox callback: a directory (or ..) opens it, a file selects it."""
    ss = st.session_state
    choice = ss.get(key)
    if choice is None:
        return
    kind, path = choice
    if kind == "file":
        ss["selected"] = path
    else:
        ss["cwd"], ss["selected"] = path, None
    st.query_params["path"] = path     # the address bar is a bookmark of what is shown


def open_location(broker: str) -> None:
    """A session's first look at the namespace: ?path=... (a directory or a file) if given."""
    ss = st.session_state
    ss["cwd"], ss["selected"] = "/", None
    target = st.query_params.get("path")
    if not target or target == "/":
        return
    target = posixpath.normpath("/" + target.strip("/"))
    try:
        with aegis(broker) as c:
            kind = c.stat(target).get("type")
    except OSError as exc:
        st.warning(f"Cannot open {target}: {exc}")
        return
    if kind == "dir":
        ss["cwd"] = target
    else:
        ss["cwd"], ss["selected"] = posixpath.dirname(target), target


def namespace_panel(broker: str) -> None:
    ss = st.session_state
    if "cwd" not in ss:
        open_location(broker)
    cwd = ss["cwd"]
    try:
        with aegis(broker) as c:
            entries = c.ls(cwd, detail=True)
    except FileNotFoundError:
        ss["cwd"], ss["selected"] = "/", None
        st.warning(f"{cwd} no longer exists; back to /.")
        return
    except OSError as exc:
        st.warning(f"Cannot list {cwd}: {exc}")
        return
    entries = sorted(entries, key=lambda e: (e.get("type") != "dir", entry_name(e)))
    nav, detail = st.columns([2, 3], gap="large")
    with nav:
        listing(broker, cwd, entries)
    selected = ss.get("selected")
    with detail:
        if selected and posixpath.dirname(selected) == (cwd.rstrip("/") or "/"):
            file_panel(broker, selected)
        else:
            st.caption("Choose a file to see its blocks, replicas and contents.")


def listing(broker: str, cwd: str, entries: list[dict]) -> None:
    st.markdown(f":material/folder_open: `{cwd}` · {plural(len(entries), 'entry', 'entries')}")
    options: list[tuple[str, str]] = []
    if cwd != "/":
        options.append(("up", posixpath.dirname(cwd.rstrip("/")) or "/"))
    options += [(e.get("type", "file"), posixpath.join(cwd, entry_name(e))) for e in entries]
    sizes = {posixpath.join(cwd, entry_name(e)): e.get("size") for e in entries}
    key = f"open:{cwd}"
    st.selectbox("Open a directory or file", options, index=None, key=key,
                 placeholder="Choose…", on_change=navigate, args=(key,),
                 format_func=lambda o: option_label(o, sizes))
    if entries:
        rows = [{"name": entry_name(e) + ("/" if e.get("type") == "dir" else ""),
                 "size": "" if e.get("type") == "dir" else human_bytes(count(e.get("size"))),
                 "modified": when(e.get("mtime")), "replication": e.get("replication")}
                for e in entries]
        df = pd.DataFrame(rows).set_index("name")
        if df["replication"].isna().all():   # `ls` may not carry it
            df = df.drop(columns="replication")
        st.table(df.fillna(""))
    else:
        st.caption("Empty directory.")
    upload_form(broker, cwd)


def entry_name(e: dict) -> str:
    return str(e.get("name") or posixpath.basename(str(e.get("path", "")).rstrip("/")))


def option_label(option: tuple[str, str], sizes: dict) -> str:
    kind, path = option
    if kind == "up":
        return "↑ .."
    name = posixpath.basename(path)
    if kind == "dir":
        return f"▸ {name}/"
    return f"{name} · {human_bytes(count(sizes.get(path)))}"


def upload_form(broker: str, cwd: str) -> None:
    ss = st.session_state
    flash = ss.get("flash")
    if flash:
        # Kept a while: the upload's own events redraw the page a moment later.
        message, until = flash
        if time.time() < until:
            st.success(message, icon=":material/check_circle:")
        else:
            del ss["flash"]
    with st.expander(f"Upload into {cwd}", icon=":material/upload:"):
        with st.form("upload", clear_on_submit=True):
            up = st.file_uploader("File to upload")
            name = st.text_input("Store as (name in this directory; default: the file's name)")
            if not st.form_submit_button("Store in AegisFS") or up is None:
                return
        remote = posixpath.join(cwd, name.strip() or up.name)
        try:
            with aegis(broker, TRANSFER) as c:
                c.put(up, remote)      # UploadedFile is a file object: streamed block by block
        except OSError as exc:
            st.error(f"Upload of {remote} failed: {exc}")
            return
        ss["flash"] = (f"Stored {remote} ({human_bytes(up.size)}).", time.time() + FLASH_SECONDS)
        ss["selected"] = remote
        st.rerun()


# -- one file -----------------------------------------------------------------------------------

@st.cache_data(ttl=120, max_entries=16, show_spinner=False)
def fetch_preview(broker: str, path: str, size: int, mtime: Any) -> tuple[pv.Preview, bytes]:
    """The preview of one version of a file (size and mtime key it), fetching only what the
    view shows."""
    with aegis(broker, TRANSFER) as c:
        probe = bytes(c.read_bytes(path, 0, pv.probe_length(size)))
        plan = pv.choose(posixpath.basename(path), size, probe)
        data = probe if plan.fetch <= len(probe) else bytes(c.read_bytes(path, 0, plan.fetch))
    return plan, data[:plan.fetch]


def download(broker: str, path: str) -> bytes:
    """Runs when the download button is pressed (Streamlit's deferred data)."""
    buf = io.BytesIO()
    with aegis(broker, TRANSFER) as c:
        c.get(path, buf)
    return buf.getvalue()


def file_panel(broker: str, path: str) -> None:
    try:
        with aegis(broker) as c:
            stat = c.stat(path)
    except FileNotFoundError:
        st.session_state["selected"] = None
        st.warning(f"{path} is gone.")
        return
    except OSError as exc:
        st.warning(f"Cannot stat {path}: {exc}")
        return
    status = st.session_state.get("status") or {}
    size, blocks = count(stat.get("size")), stat.get("blocks") or []
    st.subheader(f":material/description: {path}")
    cols = st.columns(4)
    cols[0].metric("Size", human_bytes(size))
    cols[1].metric("Blocks", len(blocks))
    cols[2].metric("Replication", stat.get("replication", "?"))
    cols[3].metric("Modified", when(stat.get("mtime")))
    name = posixpath.basename(path)
    if size <= DOWNLOAD_CAP:
        st.download_button(f"Download {name}", data=lambda: download(broker, path),
                           file_name=name, on_click="ignore", key=f"dl:{path}",
                           icon=":material/download:")
    else:
        st.caption(f"Too large to download here; use `aegisfs get {path} .`")
    st.graphviz_chart(file_dot(stat, status.get("nodes") or []), width="content")
    if blocks:
        with st.expander(f"Blocks ({len(blocks)})", expanded=len(blocks) <= 8):
            st.table(pd.DataFrame([{
                "#": i, "block": str(b.get("id", "")),
                "size": human_bytes(count(b.get("size"))),
                "crc32c": short_checksum(b.get("checksum", "")),
                "replicas": ", ".join(map(str, b.get("replicas") or []))}
                for i, b in enumerate(blocks)]).set_index("#"))
    render_preview(broker, path, size, stat.get("mtime"))


def render_preview(broker: str, path: str, size: int, mtime: Any) -> None:
    st.markdown("**Preview**")
    try:
        plan, data = fetch_preview(broker, path, size, mtime)
    except OSError as exc:
        st.warning(f"Cannot read {path}: {exc}")
        return
    if plan.note:
        st.caption(plan.note)
    if plan.kind == pv.IMAGE:
        st.image(data, caption=posixpath.basename(path))
    # preview.choose() gives every media kind its mime; without one, the hex view below
    elif plan.kind == pv.AUDIO and plan.mime is not None:
        st.audio(data, format=plan.mime)
    elif plan.kind == pv.VIDEO and plan.mime is not None:
        st.video(data, format=plan.mime)
    elif plan.kind == pv.EMPTY:
        st.caption("Empty file.")
    elif plan.kind == pv.TEXT and (text := pv.decode_text(data, len(data) < size)) is not None:
        st.code(text, language=plan.language, height=code_height(text))
    else:
        # Binary, or text whose head turned binary past the probe: hex of the start.
        dump = pv.hexdump(data[:pv.HEX_BYTES])
        st.code(dump, language=None, height=code_height(dump))


def code_height(text: str) -> int | Literal["content"]:
    """Long views scroll in a box instead of stretching the page."""
    return CODE_HEIGHT if text.count("\n") > 24 else "content"


# -- the page ---------------------------------------------------------------------------------

def main() -> None:
    st.set_page_config(page_title="AegisFS", page_icon=":material/shield:", layout="wide")
    st.title("AegisFS")
    try:
        broker, events = endpoints()
    except config.ConfigError as exc:
        st.error(f"Configuration error: {exc}")
        return
    st.caption(f"Live view of the cluster behind broker `{broker}`")
    ss = st.session_state
    # Tells the cluster fragment this is a whole-page run, so it never asks for another.
    ss["page_pass"] = True
    try:
        cluster_panel(broker)
        st.header("Live events")
        events_panel(events)
        st.header("Namespace")
        if ss.get("reachable"):
            with guarded("The namespace browser"):
                namespace_panel(broker)
        else:
            st.info("The namespace browser returns when the cluster is reachable.")
    finally:
        ss["page_pass"] = False


main()
