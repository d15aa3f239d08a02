"""What the CLI (and the visualizer) print: sizes, times, and the status and fsck tables."""
from __future__ import annotations

import errno

from client import output


def test_human_sizes_and_times():
    assert output.human(0) == "0 B" and output.human(1536) == "1.5 KiB"
    assert output.human(3 * 2**40) == "3.0 TiB"
    assert output.when(None) == "-" and output.when("soon", missing="–") == "–"
    assert len(output.when(0)) == len("1970-01-01 00:00:00")
    assert len(output.when(0, output.CLOCK)) == len("00:00:00")


def test_describe_names_the_path_once():
    exc = FileNotFoundError(errno.ENOENT, "No such file or directory")
    exc.filename = "/b"
    assert output.describe(exc) == "/b: No such file or directory"


def test_status_table():
    lines = list(output.status_lines({
        "nodes": [{"id": "dn1", "state": "up", "capacity": 2048, "used": 1024, "blocks": 3},
                  {"id": "dn2", "state": "down", "drain": "draining", "drain_left": 5},
                  {"id": "dn3", "state": "up", "drain": "drained", "drain_left": 0}],
        "files": 2, "dirs": 1, "blocks": 3, "health": {"under_replicated": [1, 2]}}))
    assert lines[0].split() == ["NODE", "STATE", "CAPACITY", "USED", "BLOCKS", "DRAIN"]
    assert lines[1].split() == ["dn1", "up", "2.0", "KiB", "1.0", "KiB", "3", "-"]
    assert lines[2].endswith("draining (5 blocks left)")
    assert lines[3].endswith("drained")
    assert lines[4].startswith("datanodes: 2 up / 3")
    assert lines[5] == "health: under replicated: 2"
    assert len(lines) == 6          # no broker line unless asked, no HA line without [ha]


def test_status_says_which_brokers_answer():
    lines = list(output.status_lines({"nodes": [], "brokers": [
        {"endpoint": "tcp://h:5550", "up": False, "error": "cannot reach"},
        {"endpoint": "tcp://h:5554", "up": True}]}))
    assert lines[-1] == "brokers: 1 up / 2   tcp://h:5550 unreachable   tcp://h:5554 up"


def test_status_shows_the_mds_leadership_when_ha_is_on():
    base = {"nodes": [], "files": 0, "dirs": 1, "blocks": 0}
    active = list(output.status_lines({**base, "ha": {"state": "active", "epoch": 7,
                                                      "lease_left": 4.2}}))
    assert active[-1] == "mds: active   epoch: 7   lease left: 4.2 s"
    lost = list(output.status_lines({**base, "ha": {"state": "candidate", "epoch": 7,
                                                    "lease_left": 0.0,
                                                    "etcd_error": "unreachable"}}))
    assert lost[-1].startswith("mds: candidate   epoch: 7") and lost[-1].endswith(
        "etcd: unreachable")


def test_fsck_report_lists_at_most_ten_items():
    lines = list(output.fsck_lines({"healthy": False, "missing": list(range(12)),
                                    "corrupt": [{"block": "ab", "node": "dn1"}],
                                    "scanned": 40}, healthy=False))
    assert lines[0] == "UNHEALTHY"
    assert lines[1].split() == ["missing", "12"]
    assert lines[12] == "      ... 2 more"
    assert "block=ab  node=dn1" in lines[14]
    assert lines[-1].split() == ["scanned", "40"]


def test_ls_long_and_stat_show_mode_owner_group():
    from client.output import ls_line, stat_lines
    e = {"name": "run.sh", "type": "file", "size": 12, "mtime": 0, "mode": 0o4750,
         "owner": "alice", "group": "staff"}
    line = ls_line(e, True)
    assert line.startswith("-rwsr-x--- alice    staff ") and line.endswith("run.sh")
    assert ls_line({**e, "type": "dir", "mode": 0o1777, "name": "tmp"}, True).startswith(
        "drwxrwxrwt ")
    lines = list(stat_lines({**e, "path": "/run.sh", "ctime": 0, "replication": 2,
                             "block_size": 64}, "/run.sh"))
    assert "mode:        4750 (-rwsr-x---)" in lines and "owner:       alice" in lines
    assert lines[-1] == "blocks:      (not shown: no read permission)"


def test_status_says_when_the_active_runs_without_its_standby():
    base = {"nodes": [], "files": 0, "dirs": 1, "blocks": 0}
    synced = list(output.status_lines({**base, "ha": {"state": "active", "epoch": 3,
                                                      "standby": {"state": "in_sync",
                                                                  "acked_seq": 40}}}))
    assert synced[-1] == "standby: in_sync   at seq 40"
    gone = list(output.status_lines({**base, "ha": {"state": "active", "epoch": 3,
                                                    "standby": {"state": "gone",
                                                                "acked_seq": 40, "for": 12.5,
                                                                "reason": "no answer"}}}))
    assert gone[-1] == "standby: gone   at seq 40 for 12.5 s (no answer): the active runs alone"


def test_role_lines_align_the_columns_for_the_longest_role_name():
    from client.output import role_lines
    lines = list(role_lines({"mds": {"state": "up", "pid": 7, "restarts": 0},
                             "mds-standby": {"state": "up", "pid": 12, "restarts": 1}}))
    assert [line.index(" up ") for line in lines] == [len("role mds-standby"),
                                                      len("role mds-standby")]
    assert [line.index("pid") for line in lines][0] == [line.index("pid")
                                                        for line in lines][1]


def test_leadership_lines_explain_why_no_mds_leads():
    from client.output import leadership_lines
    url = "http://127.0.0.1:2379"
    assert leadership_lines(url, "mds", None) == []          # leading, nothing to explain
    assert leadership_lines(url, None, None) == [
        f"ha: no MDS leads (etcd {url}): an election is under way, or no MDS is running"]
    mark = {"name": "mds", "epoch": 4, "since": 9, "last": 12}
    blocked = leadership_lines(url, None, mark)
    assert blocked[0] == (f"ha: no MDS leads (etcd {url}): mds acknowledged writes without "
                          "its standby from seq 9 (epoch 4), and only an MDS holding those "
                          "writes may lead: start mds again")
    assert f"python -m mds --etcd {url} --drop-alone-mark" in blocked[1]
    assert leadership_lines(url, "mds", mark) == [
        "ha: mds leads; mds acknowledged writes without its standby from seq 9 (epoch 4): "
        "no other MDS may take over until its standby is in sync again"]
    unreadable = leadership_lines(url, None, {})[0]
    assert "unreadable" in unreadable and unreadable.endswith("start the MDS that wrote it again")
    down = leadership_lines(url, None, None, f"etcd at {url} unreachable: refused")
    assert down == [f"ha: etcd at {url} unreachable: refused: no MDS can lead until etcd "
                    "answers"]
