"""The S3-compatible gateway: an ASGI app (app.py) served by uvicorn (server.py) that
translates S3 requests into AegisClient calls, through store.py (with buckets.py,
multipart.py, records.py, objinfo.py). Sans-IO parts: naming.py (bucket/key -> path),
sigv4.py (authentication), chunked.py (aws-chunked bodies), s3xml.py, errors.py.
"""
