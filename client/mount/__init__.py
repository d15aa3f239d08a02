"""`aegisfs mount`: AegisFS as a FUSE file system (mfusepy over libfuse 3).

ops.py is the FUSE operations over AegisClient (its parts: ops_attrs.py, ops_names.py,
ops_files.py), handles.py the open files (streaming writes, whole-file rewrites), ids.py
the user/group mapping, daemon.py mounting and unmounting, cli.py the click commands.
"""
