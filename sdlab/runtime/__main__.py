"""Entry point: ``python -m sdlab.runtime --models-dir DIR --model NAME --port N``."""

import sys

from sdlab.runtime.server import main

if __name__ == "__main__":
    sys.exit(main())
