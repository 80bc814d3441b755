import copy
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TQDM_DISABLE", "1")

# What `python -m pytest -m "not slow"` leaves out, and why: a test is slow by the fixture it uses
# or the module it is in. Marked here, in one place, rather than test by test.
SLOW_FIXTURES = {
    "faults": "starts a local Ray cluster of 2 workers (tests/test_shards.py)",
    "browser": "drives headless Chromium (tests/test_report_browser.py)",
    "first_build": "converts the embedded model's GGUF file for real (tests/test_load.py)",
    "embedded_sae": "trains the embedded model's dictionary on first use, minutes (test_embedded_dictionary.py)",
}
SLOW_MODULES = {
    "test_cli_resume.py": "kills sweeps running in subprocesses, then resumes them",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in SLOW_MODULES or SLOW_FIXTURES.keys() & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module", autouse=True)
def shared_tiny_models_untouched():
    """After each test module: the tiny models and pairs every module shares (tests/tiny.py) still
    hold their numbers and no hooks. Checked per module, not per test: comparing every weight
    after each of the suite's tests would cost seconds."""
    yield
    tiny = sys.modules.get("tiny")  # never imported: nothing was built, nothing to check
    if tiny is not None and (touched := tiny.touched()):
        tiny.forget()
        pytest.fail("a test in this module changed what later tests share: " + "; ".join(touched))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny GPT-2 saved as a checkpoint folder (tests/tiny_checkpoint.py), for the command line,
    which loads models by path; written once per session (no command writes into it)."""
    from tiny_checkpoint import save_tiny_checkpoint

    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-gpt2")))


@pytest.fixture(scope="session")
def smollm():
    """The real embedded SmolLM2-135M-Instruct, loaded once per test session."""
    import actpatch

    return actpatch.load_model()


# The devices the engine-equality and precision tests run on: "cpu" always, "cuda" where there is
# one (benchmarks/gpu_check.sh runs them with -k cuda). On a machine without CUDA the cuda cases are
# collected and skipped with their reason, so the suite takes no longer.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


@pytest.fixture(scope="session")
def on_device():
    """`on_device(model, device)`: the model itself on "cpu", else a copy moved there once per session.

    Prompts stay on the CPU, as a user's do: the engines move tokens to the model's device."""
    from actpatch import Model

    moved = {}

    def to(model, device):
        if device == "cpu":
            return model
        if (id(model), device) not in moved:
            moved[id(model), device] = Model.from_hf(
                copy.deepcopy(model.hf).to(device), name=model.name, provenance=model.provenance
            )
        return moved[id(model), device]

    return to
