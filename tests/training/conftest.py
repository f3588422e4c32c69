import sys
from pathlib import Path

import pytest
import torch

# tests/ holds helpers.py (tiny models shared by all test folders); this folder holds train_helpers.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Other work shares the 2 cores; one thread avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
