"""The gateway's XML helpers: timestamps and the size-limited request parser."""
from client.s3.s3xml import http_date, iso


def test_iso_keeps_milliseconds_rounded_down():
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1.2349) == "1970-01-01T00:00:01.234Z"
    assert iso(1_700_000_000.9999) == "2023-11-14T22:13:20.999Z"


def test_iso_never_runs_ahead_of_the_instant():
    # A LastModified later than the write would hide a later local change from `aws s3 sync`;
    # one earlier than the write (within the same second) made it upload again (issue of CI).
    for ts in (1_700_000_000.0005, 1_700_000_000.5, 1_700_000_000.9995):
        stamp = iso(ts)
        frac = int(stamp[-4:-1]) / 1000
        assert 0 <= ts - (1_700_000_000 + frac) < 0.001


def test_http_date_is_rfc_1123():
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
