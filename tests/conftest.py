"""Shared fixtures: every pruning method module is imported so that it registers itself."""

from __future__ import annotations

import importlib
import pkgutil
import warnings

import pytest
import torch

import lightning_pruning.methods

for _module in pkgutil.iter_modules(lightning_pruning.methods.__path__):
    importlib.import_module(f"lightning_pruning.methods.{_module.name}")

# Two cores: keep intra-op threads from oversubscribing when DDP runs two processes.
torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)

# Lightning's spawn/fork launcher writes MASTER_PORT into this process's environment and never removes it, so
# every later DDP test, and every DDP script a test starts, would reuse the first test's port (and fail with
# "address already in use" when a process of an earlier test still holds it). Each test starts without them.
_DISTRIBUTED_VARIABLES = ("MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "GLOBAL_RANK")


@pytest.fixture(autouse=True)
def _fresh_distributed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _DISTRIBUTED_VARIABLES:
        monkeypatch.delenv(name, raising=False)  # also removes, after the test, whatever the test set
