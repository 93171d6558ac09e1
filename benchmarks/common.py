"""Moved to jem_fast.bench.common. `benchmarks.common` stays an alias of that very module (not a
copy), so a benchmark still written against it shares its settings and state."""
import sys

import jem_fast.bench.common as _common

sys.modules[__name__] = _common
