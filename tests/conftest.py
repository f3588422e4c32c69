import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# $LEGIBILITY_PARAREL first (a worktree sits one level deeper than the checkout beside shared/)
PARAREL = Path(
    os.environ.get("LEGIBILITY_PARAREL") or Path(__file__).resolve().parents[1].parent / "shared/data/pararel"
)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _threads(request):
    """Tiny models are dominated by per-op overhead: one thread is faster and does not fight the other
    core; real-model (slow) tests get both cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(2 if request.node.get_closest_marker("slow") else 1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pararel_dir() -> Path:
    if not (PARAREL / "patterns").is_dir():
        pytest.skip(f"PARAREL data not at {PARAREL}")
    return PARAREL


@pytest.fixture(scope="session")
def smollm():
    from legibility import load_model

    return load_model("smollm2-135m")
