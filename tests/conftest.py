import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TQDM_DISABLE", "1")

# What `python -m pytest -m "not slow"` leaves out, and why: a test is slow by the fixture it uses
# or the module it is in. Marked here, in one place, rather than test by test.
SLOW_FIXTURES = {
    "faults": "starts a local Ray cluster of 2 workers (tests/test_shards.py)",
    "browser": "drives headless Chromium (tests/test_report_browser.py)",
    "first_build": "converts the embedded model's GGUF file for real (tests/test_load.py)",
}
SLOW_MODULES = {
    "test_cli_resume.py": "kills sweeps running in subprocesses, then resumes them",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in SLOW_MODULES or SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smollm():
    """The real embedded SmolLM2-135M-Instruct, loaded once per test session."""
    import actpatch

    return actpatch.load_model()
