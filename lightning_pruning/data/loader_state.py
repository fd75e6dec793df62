"""The training loader's checkpointed position: which batches of the current epoch were trained.

Lightning saves and restores the ``state_dict`` of a training loader that has one (through its
``CombinedLoader``), but restores only its own loop counters otherwise. :class:`ResumableDataLoader`
is a plain ``DataLoader`` whose state is the epoch and how many of its batches were trained, so a
run resumed from a mid-epoch checkpoint yields exactly the batches the uninterrupted run would
still have yielded, without re-reading the trained ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader

from lightning_pruning.data.sampler import SubsetSampler

if TYPE_CHECKING:
    import lightning.pytorch as pl


def trained_batches(trainer: pl.Trainer) -> int:
    """How many batches of the current epoch were trained, as Lightning will count them on restart.

    Read from Lightning's batch progress rather than from the loader's iterator, which runs ahead of
    training (prefetching, workers). A checkpoint saved inside ``on_train_batch_end`` (ModelCheckpoint's
    step checkpoints) has the batch processed but not yet completed; Lightning completes it on restart,
    so it counts as trained here too.
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    batches = progress.completed
    if progress.ready == progress.started == progress.processed == progress.completed + 1:
        batches += 1
    return batches


class ResumableDataLoader(DataLoader[Any]):
    """A ``DataLoader`` over a :class:`SubsetSampler` whose ``state_dict`` is its position in the epoch.

    Built by :class:`~lightning_pruning.PruningDataModule`; ``trainer`` is attached after construction.
    """

    trainer: pl.Trainer | None = None

    def state_dict(self) -> dict[str, Any]:
        """The epoch and its trained part (plain values; Lightning stores it with the loop state)."""
        sampler = self.sampler
        if self.trainer is None or not isinstance(sampler, SubsetSampler) or self.batch_size is None:
            return {}
        return sampler.position_state(trained_batches(self.trainer), self.batch_size)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continues a mid-epoch checkpoint's epoch where it stopped (other epochs start from batch 0)."""
        sampler = self.sampler
        if not state_dict or not isinstance(sampler, SubsetSampler) or self.batch_size is None:
            return
        if state_dict["epoch"] == sampler.epoch and state_dict["position"] > 0:
            sampler.resume(state_dict, self.batch_size)
            if state_dict["world_size"] != sampler.num_replicas:
                self._update_lightning_limit()

    def _update_lightning_limit(self) -> None:
        """Re-sharded over another world size, the resumed epoch has another length than a fresh one; Lightning
        read the loader length (its batch limit) just before restoring this state, so it is set again here."""
        from lightning.pytorch.trainer.connectors.data_connector import _parse_num_batches
        from lightning.pytorch.trainer.states import RunningStage

        combined = getattr(self.trainer.fit_loop, "_combined_loader", None) if self.trainer is not None else None
        if combined is not None and self.trainer is not None and len(combined.flattened) == 1:
            combined.limits = [_parse_num_batches(RunningStage.TRAINING, len(self), self.trainer.limit_train_batches)]


def restart_after_epoch_end(trainer: pl.Trainer) -> None:
    """Turns a restart from a checkpoint saved at an epoch's last batch into a clean start of the next epoch.

    Lightning restores such a checkpoint as "mid-epoch", moves on to the next epoch, rebuilds the training
    loader for it, and only then notices that the saved epoch was complete, by comparing the restored batch
    count with the length of the *new* loader (``_TrainingEpochLoop.reset``). That assumes every epoch has the
    same length. Pruned epochs do not: when the next epoch is longer, Lightning would continue it at the saved
    batch count, skipping its first batches. Call this from ``on_train_start`` (after the loops are restored,
    before the epoch loop resets) to apply the same resets Lightning applies when the lengths happen to match.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    if not (
        epoch_loop.restarting
        and epoch_loop.restarted_on_train_batch_end
        and epoch_loop.batch_progress.is_last_batch
        and not epoch_loop._should_accumulate()
    ):
        return
    epoch_loop.batch_progress.reset_on_run()
    epoch_loop.scheduler_progress.reset_on_run()
    epoch_loop.automatic_optimization.optim_progress.reset_on_run()
    epoch_loop.val_loop.batch_progress.total.reset()
    epoch_loop.reset_restart_stage()
