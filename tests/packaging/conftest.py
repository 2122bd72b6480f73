"""tests/packaging builds the sdist and the wheels (minutes): only with AIORESTY_TEST_DIST=1
(make test-dist, which .ci/run calls), never in a plain `make test` / `pytest`."""

import os

collect_ignore_glob = [] if os.environ.get("AIORESTY_TEST_DIST") == "1" else ["test_*.py"]
