from legibility.sweeps.config import ExecutorConfig, SweepConfig, Trial, load_sweep, parse_sweep
from legibility.sweeps.results import ResultsStore
from legibility.sweeps.run import EXECUTORS, run_sweep, run_trial

__all__ = [
    "EXECUTORS",
    "ExecutorConfig",
    "ResultsStore",
    "SweepConfig",
    "Trial",
    "load_sweep",
    "parse_sweep",
    "run_sweep",
    "run_trial",
]
