"""``python -m traffic.bench``: see traffic/bench/driver.py."""

import sys

from .driver import main

sys.exit(main())
