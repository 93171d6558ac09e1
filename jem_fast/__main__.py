"""`python -m jem_fast ...` is the `jem-fast` command (for environments without console scripts)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
