"""pytest setup shared by tests/ and nbval's notebook runs.

Results written while testing go to a throwaway folder, never over the committed results/: the
notebooks' kernels inherit LOOM_RESULTS from this process (see lib.results.results_root).
"""

import os
import tempfile

os.environ.setdefault("LOOM_RESULTS", tempfile.mkdtemp(prefix="loom-test-results-"))
os.environ.setdefault("MPLBACKEND", "Agg")
