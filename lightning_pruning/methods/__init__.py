"""The pruning methods, one module each, all registered in :data:`METHODS`."""

from lightning_pruning.methods.bandits import UCB, EpsilonGreedy, UCBVariance
from lightning_pruning.methods.base import Harvest, PruningCallback, Selection
from lightning_pruning.methods.infobatch import InfoBatch
from lightning_pruning.methods.orderdp import OrderDP
from lightning_pruning.methods.random import RS2, RandomPruning
from lightning_pruning.methods.rcap import RCAP
from lightning_pruning.methods.registry import METHODS, register
from lightning_pruning.methods.repb import RePB
from lightning_pruning.methods.seta import SeTa

__all__ = [
    "METHODS",
    "RCAP",
    "RS2",
    "UCB",
    "UCBVariance",
    "EpsilonGreedy",
    "Harvest",
    "InfoBatch",
    "OrderDP",
    "PruningCallback",
    "RandomPruning",
    "RePB",
    "SeTa",
    "Selection",
    "register",
]
