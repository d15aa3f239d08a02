"""The Streamlit page under AppTest against a real cluster: live events from a put, the
namespace browser, previews, the block graph, and the banner when the broker is down."""
from __future__ import annotations

import time
from pathlib import Path

import msgpack
import pytest
import zmq
from streamlit.testing.v1 import AppTest

from viz.feed import Feed

from .conftest import make_png, make_wav, start_cluster

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "viz" / "app.py")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two DataNodes are enough for the page (the shared fixture starts three); `fs` from
    conftest uses this one."""
    c = start_cluster(tmp_path_factory.mktemp("vizcluster"), datanodes=2)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def app(cluster, monkeypatch) -> AppTest:
    # The page reads its endpoints the way a deployment sets them: environment variables.
    monkeypatch.setenv("AEGISFS_BROKER", cluster.broker)
    monkeypatch.setenv("AEGISFS_BROKER_EVENTS_OUT", cluster.endpoints["events_out"])
    monkeypatch.setenv("AEGISFS_KEY", str(cluster.key))     # the viz connects as a user
    return AppTest.from_file(APP, default_timeout=30)


def run_until(at: AppTest, check, timeout: float = 20.0, what: str = "condition") -> AppTest:
    """Rerun the page until check(at) holds (the feed and the MDS catch up in the
    background)."""
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        if check(at):
            return at
        if time.monotonic() > deadline:
            texts = [m.value for m in at.markdown] + [e.value for e in at.error]
            raise AssertionError(f"timed out waiting for {what}; page: {texts}")
        time.sleep(0.3)


def table_text(at: AppTest) -> str:
    return "\n".join(t.value.to_string() for t in at.table)


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def test_title_cluster_view_and_no_errors(app):
    at = run_until(app, lambda a: any(m.label == "DataNodes up" for m in a.metric),
                   what="the cluster metrics")
    assert at.title[0].value == "AegisFS"
    assert not errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["DataNodes up"] == "2 / 2"
    assert {"Under-replicated", "Missing", "Corrupt"} <= set(metrics)
    bars = at.get("progress")
    assert len(bars) == 2                    # one used/capacity bar per DataNode


def test_feed_shows_the_events_of_a_put(app, fs):
    app.run()                                # starts the feed for these endpoints
    fs.write_bytes("/viz/feed.txt", b"feed me\n" * 100)
    at = run_until(app, lambda a: "/viz/feed.txt" in table_text(a),
                   what="file.commit of /viz/feed.txt in the feed")
    text = table_text(at)
    assert "file.commit" in text and "block.commit" in text
    # Counters per node and the per-publisher sequence table are on the page too.
    assert any("No sequence gaps" in s.value for s in at.success)


def test_browser_lists_files_and_previews_a_png(app, fs):
    fs.write_bytes("/pics/blue.png", make_png())
    fs.write_bytes("/pics/notes.md", b"# Notes\nhello from AegisFS\n")
    at = run_until(app, lambda a: "pics/" in table_text(a), what="/pics in the listing")
    at.selectbox(key="open:/").select(("dir", "/pics")).run()
    assert "blue.png" in table_text(at) and "notes.md" in table_text(at)
    at.selectbox(key="open:/pics").select(("file", "/pics/blue.png")).run()
    assert not at.exception
    assert len(at.image) == 1 and at.image[0].captions == ["blue.png"]
    dot = at.get("graphviz_chart")[0].proto.spec
    assert "/pics/blue.png" in dot and "crc " in dot and "dn:dn" in dot
    assert at.query_params["path"] == "/pics/blue.png"
    # A text file shows as code; the selection follows the address bar's ?path=.
    at.selectbox(key="open:/pics").select(("file", "/pics/notes.md")).run()
    assert any("hello from AegisFS" in c.value for c in at.code)
    assert not at.image


def test_audio_and_video_previews(app, fs, tmp_path):
    fs.write_bytes("/media/tone.wav", make_wav(tmp_path / "tone.wav"))
    # Only the magic bytes matter to the page; the browser gets the bytes as they are.
    fs.write_bytes("/media/clip.mp4", b"\x00\x00\x00\x20ftypisom" + bytes(2000))
    app.query_params["path"] = "/media/tone.wav"
    at = run_until(app, lambda a: bool(a.get("audio")), what="the audio player")
    assert not at.image and not at.code and not at.get("video")
    at.selectbox(key="open:/media").select(("file", "/media/clip.mp4")).run()
    assert at.get("video") and not at.get("audio")


def test_sequence_gaps_are_shown(app, cluster):
    """A publisher that skips sequence numbers shows up as a warning with the count."""
    app.run()
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    cluster.member_curve("dn.gappy").apply(pub)      # only members may publish
    pub.connect(cluster.endpoints["events_in"])
    try:
        def send(seq: int) -> None:
            body = {"src": "gappy", "seq": seq, "ts": time.time(), "node": "gappy"}
            pub.send_multipart([b"test.gap", msgpack.packb(body)])

        deadline = time.monotonic() + 10
        while "gappy" not in table_text(app.run()):   # until the PUB is connected
            assert time.monotonic() < deadline, "events from the test publisher never arrived"
            send(1)
            time.sleep(0.2)
        send(100)
        at = run_until(app, lambda a: bool(a.warning), what="the gap warning")
    finally:
        pub.close()
    text = at.warning[0].value
    assert "gappy test.gap" in text and "got 100" in text


def test_deep_link_opens_a_file(app, fs):
    fs.write_bytes("/deep/blob.bin", bytes(range(256)) * 40)
    app.query_params["path"] = "/deep/blob.bin"
    at = run_until(app, lambda a: bool(a.code), what="the hex view")
    assert at.code[0].value.startswith("00000000  00 01 02 03")
    assert any("first 4,096 of 10,240 bytes" in c.value for c in at.caption)


def test_feed_thread_is_a_daemon_and_stops(cluster):
    feed = Feed(cluster.endpoints["events_out"], curve=cluster.curve).start()
    try:
        assert feed.alive and feed._thread.daemon
    finally:
        feed.stop()
    assert not feed.alive


def test_banner_when_the_broker_is_down_and_recovery(app, cluster):
    at = run_until(app, lambda a: any(m.label == "DataNodes up" for m in a.metric),
                   what="a healthy page first")
    cluster.stop_role("broker")
    try:
        at.run()
        assert not at.exception
        assert any("Cluster unreachable" in e for e in errors(at)), errors(at)
        assert not at.metric                       # no stale cluster view
        assert any("namespace browser returns" in i.value for i in at.info)
    finally:
        cluster.start_role("broker")
    # The page recovers by itself once the broker and the MDS are back.
    at = run_until(at, lambda a: not errors(a) and any(m.label == "DataNodes up"
                                                        for m in a.metric),
                   timeout=30, what="the banner to clear")
    assert "Cluster unreachable" not in " ".join(errors(at))
