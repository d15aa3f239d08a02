"""The live visualizer: a Streamlit page over the event feed and the client library.

Pure logic (event folding, block graphs, preview choice) lives in plain modules with unit
tests; `app.py` is the thin Streamlit script and `feed.py` the one background thread.
"""
