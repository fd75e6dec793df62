"""The DataModule that serves each epoch's pruned subset while leaving the user's batches untouched."""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from functools import partial
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler

from lightning_pruning.data.labels import contiguous_labels, resolve_labels
from lightning_pruning.data.loader_state import ResumableDataLoader
from lightning_pruning.data.sampler import Orderer, SubsetSampler
from lightning_pruning.data.streaming import adopt_streaming
from lightning_pruning.selection import derive_seed

# Stream id of the DataLoader's worker base seed (see `SubsetSampler` for the shuffle stream).
_WORKER_SEED_STREAM = 2

_BATCH_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


@runtime_checkable
class SubsetProvider(Protocol):
    """What the DataModule asks of a pruning callback: the subset to train in an epoch."""

    def subset_for_epoch(self, trainer: pl.Trainer, epoch: int) -> Tensor:
        """int64 dataset indices to train in ``epoch``; called before that epoch's loader is built."""
        ...


def check_map_style(dataset: Any, argument: str) -> None:
    """Rejects datasets the pruning sampler cannot index.

    Raises:
        TypeError: for an ``IterableDataset`` or a dataset without ``__len__`` / ``__getitem__``.
    """
    if isinstance(dataset, IterableDataset):
        raise TypeError(
            f"`{argument}` is an IterableDataset ({type(dataset).__name__}). Data pruning picks samples by "
            "index, so it needs a map-style dataset with `__len__` and `__getitem__`; wrap or convert it first."
        )
    if not isinstance(dataset, Sized) or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"`{argument}` ({type(dataset).__name__}) has no `__len__`/`__getitem__`. Data pruning needs a "
            "map-style dataset whose samples can be addressed by index 0..N-1."
        )


def find_subset_provider(trainer: pl.Trainer | None) -> SubsetProvider | None:
    """The single pruning callback on the trainer, or ``None``.

    Raises:
        ValueError: if more than one pruning callback is attached.
    """
    if trainer is None:
        return None
    providers = [callback for callback in trainer.callbacks if isinstance(callback, SubsetProvider)]
    if len(providers) > 1:
        names = ", ".join(type(provider).__name__ for provider in providers)
        raise ValueError(f"only one pruning callback can drive a run, found {len(providers)}: {names}.")
    return providers[0] if providers else None


class PruningDataModule(pl.LightningDataModule):
    """Serves a different subset of the training set every epoch, as decided by a pruning callback.

    Give it datasets, or an existing ``LightningDataModule`` whose training set it wraps (validation,
    test and predict loaders pass through). The training loader keeps the user's dataset, collate
    function and worker settings; only its sampler is replaced by a :class:`SubsetSampler`. Without a
    pruning callback on the Trainer every epoch trains on the full training set, reshuffled every epoch
    (the DataModule sets ``Trainer(reload_dataloaders_every_n_epochs=1)``; the loader object is reused), so one
    DataModule serves the full-data baseline and the pruned runs alike.

    Args:
        train_dataset: map-style training dataset (indices ``0..N-1`` are the sample ids).
        val_dataset: optional validation dataset.
        test_dataset: optional test dataset.
        predict_dataset: optional prediction dataset.
        datamodule: an existing ``LightningDataModule`` to wrap instead of the datasets above.
        batch_size: training batch size (ignored when wrapping: the wrapped loader's batch size is used).
        eval_batch_size: batch size of the validation/test/predict loaders (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: keep workers alive across epochs (the training loader is reused across
            epochs, so its workers really persist).
        collate_fn: the collate function; the batches it builds reach ``training_step`` unchanged.
        drop_last: drop the last incomplete training batch of every epoch.
        train_labels: class label of every training sample, for methods that need labels, when the
            dataset has no ``targets``/``labels`` attribute (see :mod:`lightning_pruning.data.labels`).
        seed: seed of the per-epoch shuffle. ``None`` takes ``torch.initial_seed()`` of rank 0 at the setup of
            every fit (so ``seed_everything`` controls it); the resolved seed is stored in checkpoints and a
            resumed run uses the checkpoint's.
        shuffle: shuffle each epoch's subset (``False`` serves it in index order). A wrapped DataModule's
            loader decides this itself: a ``SequentialSampler`` (``shuffle=False``) means index order.
        orderer: optional ``orderer(subset, generator)`` giving each epoch's order instead of a uniform
            shuffle (see :class:`SubsetSampler`); a pure function of its arguments.
        train_groups: group id of every training sample (e.g. class × attribute, see
            :func:`~lightning_pruning.data.groups.group_ids`). When given, methods that split their budget
            over classes (RCAP, stratified Random*/RS2) split it over these groups instead, and their
            per-class logs and read-outs are per group.
        label_column: the label column of a Hugging Face ``datasets.Dataset`` training set (default: its
            only ``ClassLabel`` feature, else a column named ``label``/``labels``).

    The training loader is a :class:`~lightning_pruning.data.loader_state.ResumableDataLoader`, so a checkpoint
    saved at any training step resumes at exactly the next batch of the interrupted epoch.
    """

    def __init__(
        self,
        train_dataset: Dataset[Any] | None = None,
        val_dataset: Dataset[Any] | None = None,
        test_dataset: Dataset[Any] | None = None,
        predict_dataset: Dataset[Any] | None = None,
        *,
        datamodule: pl.LightningDataModule | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        drop_last: bool = False,
        train_labels: Tensor | Sequence[int] | None = None,
        seed: int | None = None,
        shuffle: bool = True,
        orderer: Orderer | None = None,
        train_groups: Tensor | Sequence[int] | None = None,
        label_column: str | None = None,
    ) -> None:
        super().__init__()
        if datamodule is None and train_dataset is None:
            raise ValueError("PruningDataModule needs a `train_dataset` or a `datamodule` to wrap.")
        if datamodule is not None and train_dataset is not None:
            raise ValueError("pass either datasets or `datamodule=`, not both.")
        if datamodule is not None and not isinstance(datamodule, pl.LightningDataModule):
            raise TypeError(f"`datamodule` must be a LightningDataModule, got {type(datamodule).__name__}.")
        if train_dataset is not None:
            train_dataset, orderer = adopt_streaming(train_dataset, orderer)
            check_map_style(train_dataset, "train_dataset")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        self.inner = datamodule
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.test_dataset = test_dataset
        self.predict_dataset = predict_dataset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.collate_fn = collate_fn
        self.drop_last = drop_last
        self.explicit_labels = train_labels
        self.explicit_groups = train_groups
        self.label_column = label_column
        self.seed = seed
        self._requested_seed = seed
        self.shuffle = shuffle
        self.orderer = orderer
        self.train_sampler: SubsetSampler | None = None
        self._loader_options: dict[str, Any] = {}
        self._train_loader: DataLoader[Any] | None = None
        self._worker_generator = torch.Generator()
        self._labels: tuple[Tensor, Tensor] | None = None
        self._expose_eval_loaders()

    # ----------------------------------------------------------------------------------------------
    # Which loaders exist: Lightning decides that with `is_overridden`, so only the ones that have a
    # source are bound on the instance.
    def _expose_eval_loaders(self) -> None:
        sources = {
            "val_dataloader": self.val_dataset,
            "test_dataloader": self.test_dataset,
            "predict_dataloader": self.predict_dataset,
        }
        for name, dataset in sources.items():
            if self.inner is not None and is_overridden(name, self.inner, pl.LightningDataModule):
                setattr(self, name, getattr(self.inner, name))
            elif dataset is not None:
                setattr(self, name, self._eval_loader_factory(dataset))
        if self.inner is not None:
            # Keep the wrapped module's batch hooks; binding them here makes Lightning call them.
            for hook in _BATCH_HOOKS:
                if is_overridden(hook, self.inner, pl.LightningDataModule):
                    setattr(self, hook, getattr(self.inner, hook))

    def _eval_loader_factory(self, dataset: Dataset[Any]) -> Callable[[], DataLoader[Any]]:
        # A partial of a module-level function: picklable, and `is_overridden` sees through it.
        return partial(_eval_loader, self, dataset)

    # ----------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Forwards to the wrapped DataModule."""
        if self.inner is not None:
            self.inner.prepare_data()

    def setup(self, stage: str) -> None:
        """Sets up the wrapped DataModule, reads its training loader's settings, fixes the seed."""
        if self.inner is not None:
            if self.inner.trainer is None and self.trainer is not None:
                self.inner.trainer = self.trainer
            self.inner.setup(stage)
            if stage == "fit" and self.train_dataset is None:
                self._adopt_inner_train_loader()
        if stage == "fit" and self.train_dataset is not None and self.num_train_samples == 0:
            raise ValueError(
                "the training set is empty (0 samples): there is nothing to train or prune. Check the dataset "
                "passed to PruningDataModule (or the wrapped DataModule's train_dataloader())."
            )
        trainer = self.trainer
        if stage == "fit" and trainer is not None and find_subset_provider(trainer) is None:
            # Full-data run: still build the loader per epoch, so every epoch has its own shuffle and an epoch
            # resumed mid-way does not leave its resume position in the next one (pruning callbacks do the same).
            trainer.reload_dataloaders_every_n_epochs = 1
        if stage == "fit" or self.seed is None:
            # Every fit resolves its own seed (a seed sweep reusing this object must not freeze the first one);
            # an explicit seed stays, and a resumed run takes the checkpoint's (load_state_dict runs after setup).
            seed = self._requested_seed
            if seed is None:
                seed = torch.initial_seed() & ((1 << 63) - 1)
                if self.trainer is not None:
                    seed = self.trainer.strategy.broadcast(seed, src=0)
            self.seed = int(seed)

    def teardown(self, stage: str) -> None:
        """Forwards to the wrapped DataModule."""
        if self.inner is not None:
            self.inner.teardown(stage)

    def _adopt_inner_train_loader(self) -> None:
        assert self.inner is not None
        loader = self.inner.train_dataloader()
        if not isinstance(loader, DataLoader):
            raise TypeError(
                f"the wrapped {type(self.inner).__name__}.train_dataloader() returned {type(loader).__name__}; "
                "PruningDataModule can wrap a single torch DataLoader only."
            )
        argument = f"{type(self.inner).__name__}.train_dataloader().dataset"
        dataset, self.orderer = adopt_streaming(loader.dataset, self.orderer, argument)
        check_map_style(dataset, argument)
        batch_sampler = loader.batch_sampler
        if loader.batch_size is None or type(batch_sampler) is not BatchSampler:
            raise TypeError(
                f"the wrapped {type(self.inner).__name__}.train_dataloader() uses a custom batch sampler. Data "
                "pruning replaces the sampler with its own; build that loader with `batch_size=` instead."
            )
        # A loader over an iterable (streamed) dataset carries a placeholder sampler, which is replaced too.
        if dataset is loader.dataset and type(loader.sampler) not in (RandomSampler, SequentialSampler):
            raise TypeError(
                f"the wrapped {type(self.inner).__name__}.train_dataloader() uses a custom sampler "
                f"({type(loader.sampler).__name__}). Data pruning decides which samples each epoch sees and "
                "replaces the sampler; remove it (shuffle=True is fine)."
            )
        self.train_dataset = dataset
        # A SequentialSampler (shuffle=False) asks for a fixed order: serve each subset in index order. A
        # streamed set (wrapped above) is always shuffled, chunk-aware: its loader's sampler is a placeholder.
        self.shuffle = dataset is not loader.dataset or type(loader.sampler) is RandomSampler
        self.batch_size = loader.batch_size
        self.drop_last = batch_sampler.drop_last
        self.num_workers = loader.num_workers
        self.pin_memory = loader.pin_memory
        self.persistent_workers = loader.persistent_workers
        self.collate_fn = loader.collate_fn
        self._loader_options = {
            "worker_init_fn": loader.worker_init_fn,
            "timeout": loader.timeout,
            "multiprocessing_context": loader.multiprocessing_context,
        }
        if loader.num_workers > 0:
            self._loader_options["prefetch_factor"] = loader.prefetch_factor

    # ----------------------------------------------------------------------------------------------
    @property
    def num_train_samples(self) -> int:
        """N, the size of the full training set."""
        if self.train_dataset is None:
            raise RuntimeError("the training set is not known before `setup('fit')`.")
        return len(self.train_dataset)  # type: ignore[arg-type]

    def train_labels(self) -> tuple[Tensor, Tensor]:
        """Contiguous labels ``0..C-1`` of every training sample and the original class values.

        With ``train_groups`` these are the groups (the strata that class-aware methods split over).

        Raises:
            LabelsNotFoundError: if no labels are available.
        """
        if self._labels is None:
            assert self.train_dataset is not None
            groups = self.explicit_groups is not None
            raw = resolve_labels(
                self.train_dataset,
                self.num_train_samples,
                self.explicit_groups if groups else self.explicit_labels,
                label_column=self.label_column,
                argument="train_groups" if groups else "train_labels",
            )
            self._labels = contiguous_labels(raw)
        return self._labels

    def train_dataloader(self) -> DataLoader[Any]:
        """The training loader of the current epoch: same DataLoader, subset decided for this epoch."""
        if self.train_dataset is None:
            raise RuntimeError("PruningDataModule.train_dataloader() was called before setup('fit').")
        trainer = self.trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        provider = find_subset_provider(trainer)
        in_random_order = False
        if provider is not None:
            assert trainer is not None
            subset = provider.subset_for_epoch(trainer, epoch)
            # A method whose decision already drew the subset in uniformly random order says so: no re-shuffle.
            in_random_order = bool(getattr(provider, "subset_in_random_order", False))
        else:
            num_samples = self.num_train_samples
            subset = torch.arange(num_samples, dtype=torch.int32 if num_samples < 2**31 else torch.int64)
        seed = 0 if self.seed is None else self.seed
        num_replicas = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        sampler = self.train_sampler
        if (
            sampler is None
            or sampler.num_replicas != num_replicas
            or sampler.rank != rank
            or sampler.shuffle != self.shuffle
        ):
            sampler = SubsetSampler(
                subset,
                epoch=epoch,
                seed=seed,
                num_replicas=num_replicas,
                rank=rank,
                shuffle=self.shuffle,
                orderer=self.orderer,
                in_random_order=in_random_order,
            )
            self.train_sampler = sampler
            self._train_loader = None
        else:
            sampler.set_subset(subset, epoch=epoch, seed=seed, orderer=self.orderer, in_random_order=in_random_order)
        loader = self._train_loader
        if loader is not None and (loader.batch_size != self.batch_size or loader.drop_last != self.drop_last):
            # batch_size changed since the loader was built (Tuner.scale_batch_size, or by hand): rebuild it.
            self._train_loader = None
        # The worker base seed comes from our own generator, so building an iterator does not draw
        # from the global torch RNG (which would shift the user's dropout/augmentation streams).
        self._worker_generator.manual_seed(derive_seed(seed, epoch, _WORKER_SEED_STREAM))
        if self._train_loader is None:
            if self.batch_size < 1:
                raise ValueError(f"`batch_size` must be >= 1, got {self.batch_size}.")
            self._train_loader = ResumableDataLoader(
                self.train_dataset,
                batch_size=self.batch_size,
                sampler=sampler,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                pin_memory=self.pin_memory,
                drop_last=self.drop_last,
                persistent_workers=self.persistent_workers,
                generator=self._worker_generator,
                **self._loader_options,
            )
        self._train_loader.trainer = trainer
        return self._train_loader

    def batch_indices(self, batch_idx: int) -> Tensor:
        """Dataset indices of this rank's training batch ``batch_idx`` of the current epoch.

        Batches come out of the loader in sampler order (the DataLoader keeps order with workers too),
        so the indices follow from the sampler without adding anything to the user's batch.
        """
        if self.train_sampler is None:
            raise RuntimeError("no training epoch is in progress.")
        start = batch_idx * self.batch_size - self.train_sampler.skipped
        return self.train_sampler.rank_order[start : start + self.batch_size]

    # ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The resolved shuffle seed (plus the wrapped module's state)."""
        state: dict[str, Any] = {"seed": self.seed}
        if self.inner is not None:
            state["inner"] = self.inner.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the shuffle seed so a resumed run shuffles exactly like the original."""
        self.seed = state_dict.get("seed", self.seed)
        if self.inner is not None and "inner" in state_dict:
            self.inner.load_state_dict(state_dict["inner"])

    def __getstate__(self) -> dict[str, Any]:
        # DataLoaders and generators do not pickle; ddp_spawn and spawn workers rebuild them.
        state = self.__dict__.copy()
        state["_train_loader"] = None
        state["_worker_generator"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._worker_generator = torch.Generator()


def _eval_loader(datamodule: PruningDataModule, dataset: Dataset[Any]) -> DataLoader[Any]:
    """An evaluation loader: fixed order, the DataModule's eval batch size and worker settings."""
    return DataLoader(
        dataset,
        batch_size=datamodule.eval_batch_size,
        shuffle=False,
        num_workers=datamodule.num_workers,
        collate_fn=datamodule.collate_fn,
        pin_memory=datamodule.pin_memory,
        persistent_workers=datamodule.persistent_workers,
    )
