import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def smollm():
    """The real embedded SmolLM2-135M-Instruct, loaded once per test session."""
    import actpatch

    return actpatch.load_model()
