"""pytest setup shared by tests/ and nbval's notebook runs.

Results written while testing go to a throwaway folder, never over the committed results/: the
notebooks' kernels inherit LOOM_RESULTS from this process (see lib.results.results_root).
"""

import atexit
import os
import shutil
import tempfile

if "LOOM_RESULTS" not in os.environ:
    os.environ["LOOM_RESULTS"] = tempfile.mkdtemp(prefix="loom-test-results-")
    atexit.register(shutil.rmtree, os.environ["LOOM_RESULTS"], ignore_errors=True)
os.environ.setdefault("MPLBACKEND", "Agg")
