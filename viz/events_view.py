"""The live events panel's body: recent events, counters per node, the bytes-committed
chart and sequence gaps, laid out from a viz.state View. app.py's `events_panel` fragment
calls render_events each second inside its error guard.
"""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from client.output import CLOCK
from client.output import when as format_time
from viz.feed import Feed
from viz.state import View, human_bytes, when


def render_events(events: str, feed: Feed, v: View) -> None:
    link = "connected" if feed.connected else "connecting…"
    bad = f" · {feed.errors} unreadable" if feed.errors else ""
    st.caption(f"Subscribed to `{events}` ({link}) · {v.total} events since "
               f"{when(feed.started)} · last {when(v.last_event)}{bad}")
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.markdown("**Recent events**")
        if v.recent:
            st.table(pd.DataFrame([{
                "time": format_time(e.received, CLOCK + ".%f")[:-3],
                "topic": e.topic, "from": e.src, "seq": e.seq,
                "detail": e.summary()} for e in v.recent]).set_index("time"))
        else:
            st.caption("No events yet: put a file to see block.commit and file.commit.")
    with right:
        render_counters(v)
        render_bytes_chart(v)
        render_gaps(v)


def render_counters(v: View) -> None:
    st.markdown("**Per node**")
    if not v.nodes:
        st.caption("No events counted yet.")
        return
    df = pd.DataFrame.from_dict(v.nodes, orient="index").fillna(0).astype(int)
    df = df.reindex(sorted(df.columns), axis=1)
    df["bytes committed"] = [human_bytes(v.node_bytes.get(n, 0)) for n in df.index]
    st.table(df)


def render_bytes_chart(v: View) -> None:
    st.markdown("**Bytes committed per node** (10 s buckets, last 5 min)")
    rows = [{"time": format_time(t, CLOCK), "node": node,
             "MiB": n / 2**20} for t, per_node in v.buckets for node, n in per_node.items()]
    if not any(r["MiB"] for r in rows):
        st.caption("No block commits in the last 5 minutes.")
        return
    # Ordinal time in data order: even-width bars, and midnight does not reorder them.
    chart = alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        x=alt.X("time:O", sort=None, title=None,
                axis=alt.Axis(labelOverlap="greedy", labelAngle=0)),
        y=alt.Y("sum(MiB):Q", title="MiB committed"),
        color=alt.Color("node:N", title="node"),
        tooltip=["time", "node", alt.Tooltip("MiB:Q", format=".2f")])
    st.altair_chart(chart.properties(height=220), width="stretch")


def render_gaps(v: View) -> None:
    st.markdown("**Sequence gaps per publisher**")
    if v.missed:
        latest = "; ".join(f"{g.src} {g.topic}: expected {g.expected}, got {g.got}"
                           for g in v.gaps[-3:])
        st.warning(f"{v.missed} events missed in {len(v.gaps)} gaps. Latest: {latest}",
                   icon=":material/warning:")
    else:
        st.success(f"No sequence gaps ({len(v.streams)} streams contiguous).",
                   icon=":material/check_circle:")
    if v.streams:
        st.table(pd.DataFrame.from_dict(v.publishers(), orient="index"))
