"""`python -m client`: the same command line as `aegisfs` and `python -m client.cli`."""
from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
