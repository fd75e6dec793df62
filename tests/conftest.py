"""Shared fixtures: every pruning method module is imported so that it registers itself."""

from __future__ import annotations

import importlib
import pkgutil
import warnings

import torch

import lightning_pruning.methods

for _module in pkgutil.iter_modules(lightning_pruning.methods.__path__):
    importlib.import_module(f"lightning_pruning.methods.{_module.name}")

# Two cores: keep intra-op threads from oversubscribing when DDP runs two processes.
torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
