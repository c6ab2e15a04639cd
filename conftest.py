"""pytest setup shared by tests/ and nbval's notebook runs.

Results written while testing go to a throwaway folder, never over the committed results/: the
notebooks' kernels inherit LOOM_RESULTS from this process (see lib.results.results_root).
"""

import atexit
import os
import shutil
import tempfile

if "LOOM_RESULTS" not in os.environ:
    # <scratch>/results beside <scratch>/runs: the notebooks keep their training runs beside their results.
    scratch = tempfile.mkdtemp(prefix="loom-test-")
    os.environ["LOOM_RESULTS"] = os.path.join(scratch, "results")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
os.environ.setdefault("MPLBACKEND", "Agg")
