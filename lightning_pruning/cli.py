"""The ``lightning-pruning`` command: a LightningCLI with any model, any data and any pruning callback.

Examples::

    lightning-pruning fit --config configs/rcap.yaml
    lightning-pruning fit --trainer.callbacks+=RandomPruning --trainer.callbacks.prune_ratio=0.5
    lightning-pruning fit --config configs/full.yaml --model.backbone cnn --data.long_tailed true
    lightning-pruning fit --config configs/rcap.yaml --model my_pkg.MyModule --data my_pkg.MyDataModule
    lightning-pruning fit --help                                    # all options, and every method's arguments
    lightning-pruning fit --trainer.callbacks.help RCAP             # one method's arguments
    lightning-pruning fit --model.help my_pkg.MyModule              # the arguments of your model

Model and data are chosen in subclass mode (``--model`` / ``--data``: a class path, or a YAML file). The
defaults are :class:`~lightning_pruning.models.ImageClassifier` and
:class:`~lightning_pruning.data.fashion_mnist_datamodule.FashionMNISTDataModule`. A ``LightningDataModule``
that is not a :class:`~lightning_pruning.data.datamodule.PruningDataModule` is wrapped in one
(``PruningDataModule(datamodule=...)``), so its training loader serves each epoch's pruned subset.
``python -m lightning_pruning.cli`` is the same command.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
import textwrap
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

import lightning_pruning.methods as _methods
from lightning_pruning.data.datamodule import PruningDataModule
from lightning_pruning.data.fashion_mnist_datamodule import FashionMNISTDataModule
from lightning_pruning.methods.base import PruningCallback
from lightning_pruning.methods.registry import METHODS
from lightning_pruning.models import ImageClassifier

#: Trainer settings of the command (each can be overridden with ``--trainer.<name>`` or in YAML). A pruning
#: callback forces ``reload_dataloaders_every_n_epochs=1`` itself, so nothing here touches it.
TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "auto",
    "devices": 1,
    "max_epochs": 5,
    "log_every_n_steps": 10,
    # A CSV file per run, so the worst-class accuracy of every epoch is in the log without extra packages.
    "logger": {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": ".", "name": "lightning_logs"},
    },
}


def import_all_methods() -> None:
    """Imports every module of :mod:`lightning_pruning.methods`, so each method is registered and its class can
    be named by its short name (``--trainer.callbacks+=RCAP``)."""
    for module in pkgutil.iter_modules(_methods.__path__):
        importlib.import_module(f"{_methods.__name__}.{module.name}")


def _argument_docs(cls: type) -> dict[str, str]:
    """``{argument: help text}`` from the ``Args:`` section of ``cls``'s Google-style docstring."""
    try:
        from docstring_parser import parse
    except ImportError:  # pragma: no cover - docstring-parser is a dependency of the CLI
        return {}
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # subclasses override the base's descriptions
        if klass.__doc__ and issubclass(klass, PruningCallback):
            docs.update({p.arg_name: " ".join((p.description or "").split()) for p in parse(klass.__doc__).params})
    accepted = inspect.signature(cls).parameters
    return {name: text for name, text in docs.items() if name in accepted}


def describe_methods(methods: Iterable[tuple[str, type[PruningCallback]]] | None = None, width: int = 100) -> str:
    """A plain-text listing of every registered pruning callback with its arguments, defaults and help text."""
    if methods is None:
        import_all_methods()
        methods = sorted(METHODS.items())
    lines = [
        "pruning callbacks (add one: --trainer.callbacks+=NAME --trainer.callbacks.ARG=VALUE, or in YAML under",
        "trainer.callbacks with class_path/init_args; details: --trainer.callbacks.help NAME):",
    ]
    for name, cls in methods:
        summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        lines += ["", f"  {cls.__name__} ({cls.__module__}.{cls.__name__}, registered as {name!r})"]
        lines += textwrap.wrap(summary, width, initial_indent="    ", subsequent_indent="    ")
        docs = _argument_docs(cls)
        for parameter in inspect.signature(cls).parameters.values():
            if parameter.name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            default = "" if parameter.default is parameter.empty else f" (default: {parameter.default!r})"
            head = f"      --trainer.callbacks.{parameter.name}{default}"
            lines.append(head)
            help_text = docs.get(parameter.name, "")
            if help_text:
                lines += textwrap.wrap(help_text, width, initial_indent="          ", subsequent_indent="          ")
    return "\n".join(lines)


class _KeepLinesFormatter(DefaultHelpFormatter):
    """jsonargparse's help layout, but descriptions and epilogs keep their line breaks."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


#: The model and data a run gets when ``--model`` / ``--data`` name none.
DEFAULT_MODEL: type[pl.LightningModule] = ImageClassifier
DEFAULT_DATA: type[pl.LightningDataModule] = FashionMNISTDataModule


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _short_path(cls: type) -> str:
    """The path jsonargparse reports for a class re-exported by the package (``lightning_pruning.X``)."""
    return f"{cls.__module__.split('.')[0]}.{cls.__qualname__}"


def _without_print_config(args: list[str]) -> list[str]:
    """``args`` without ``--print_config`` (and its flags), which would print and exit during the first parse."""
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            if not arg.startswith("-") and arg not in ("fit", "validate", "test", "predict"):
                continue
        if arg == "--print_config":
            skip_value = True
            continue
        if arg.startswith("--print_config="):
            continue
        kept.append(arg)
    return kept


def describe_defaults(width: int = 100) -> str:
    """Plain-text listing of the default model's and data's arguments (subclass mode hides them in ``--help``)."""
    lines = [
        "model and data (--model / --data: a class path or a YAML file; a plain LightningDataModule is wrapped in",
        "PruningDataModule; the arguments of any class: --model.help CLASS, --data.help CLASS):",
    ]
    for key, cls in (("model", DEFAULT_MODEL), ("data", DEFAULT_DATA)):
        lines += ["", f"  default {key}: {_class_path(cls)}"]
        for parameter in inspect.signature(cls).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            default = "" if parameter.default is parameter.empty else f" (default: {parameter.default!r})"
            lines.append(f"      --{key}.{parameter.name}{default}")
    return "\n".join(textwrap.fill(line, width, subsequent_indent="          ") for line in lines)


class PruningCLI(LightningCLI):
    """LightningCLI in subclass mode with the project's defaults (:class:`ImageClassifier`,
    :class:`FashionMNISTDataModule`), a CSV logger, and a short summary after ``fit``.

    A user's ``LightningDataModule`` that is not a :class:`PruningDataModule` is wrapped in
    ``PruningDataModule(datamodule=...)`` after instantiation, with or without a pruning callback, so the
    full-data baseline and the pruned runs shuffle through the same sampler.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Makes :class:`ImageClassifier` and :class:`FashionMNISTDataModule` the defaults of subclass mode."""
        parser.set_defaults(
            {"model": {"class_path": _class_path(DEFAULT_MODEL)}, "data": {"class_path": _class_path(DEFAULT_DATA)}}
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parses twice when ``--model``/``--data`` choose another class than the default.

        jsonargparse keeps the current init args that a newly chosen class also accepts, so after one parse
        a user's model would silently inherit the default classifier's ``lr`` and ``num_classes`` and a
        user's DataModule the default ``batch_size``. The first parse only finds the chosen classes; the
        second parses again with those classes as the defaults, so their own defaults apply. Values given
        explicitly (command line, config files) are applied in both passes as usual.
        """
        raw = sys.argv[1:] if args is None else args
        stripped = False
        if isinstance(raw, (dict, Namespace)):
            super().parse_arguments(parser, args)
        else:
            probe_args = _without_print_config(list(raw))
            stripped = probe_args != list(raw)
            super().parse_arguments(parser, probe_args)
        subcommand = self.config.get("subcommand")
        target = self._subcommand_parsers[subcommand] if subcommand else parser
        config = self.config.get(subcommand) if subcommand else self.config
        defaults = {}
        for key, default in (("model", DEFAULT_MODEL), ("data", DEFAULT_DATA)):
            chosen = config.get(key)
            class_path = chosen.get("class_path") if isinstance(chosen, Namespace) else None
            if class_path is not None and class_path not in (_class_path(default), _short_path(default)):
                defaults[key] = {"class_path": class_path}
        if not defaults and not stripped:
            return
        target.set_defaults(defaults)
        super().parse_arguments(parser, args)

    def after_instantiate_classes(self) -> None:
        """Wraps a plain ``LightningDataModule`` in :class:`PruningDataModule`."""
        datamodule: pl.LightningDataModule | None = getattr(self, "datamodule", None)
        self.datamodule = wrap_datamodule(datamodule)

    def after_fit(self) -> None:
        """Prints the final validation accuracy, worst-class (and worst-group) accuracy, saved fraction and the
        metrics file."""
        _print_summary(self.trainer)


def wrap_datamodule(datamodule: pl.LightningDataModule | None) -> pl.LightningDataModule | None:
    """``datamodule`` itself if it is a :class:`PruningDataModule` (or ``None``), else one wrapping it.

    The wrapper carries the wrapped module's hyper-parameters, so loggers record them as before.
    """
    if datamodule is None or isinstance(datamodule, PruningDataModule):
        return datamodule
    wrapper = PruningDataModule(datamodule=datamodule)
    if datamodule.hparams:
        wrapper.save_hyperparameters(dict(datamodule.hparams))
    return wrapper


@rank_zero_only
def _print_summary(trainer: Any) -> None:
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1}
    pruner = next((cb for cb in trainer.callbacks if isinstance(cb, PruningCallback)), None)
    keys = ("val/acc", "val/worst_class_acc", "val/worst_group_acc")
    parts = [f"{key} {metrics[key]:.4f}" for key in keys if key in metrics]
    if pruner is not None:
        parts.append(f"{type(pruner).__name__} saved {100 * pruner.saved_fraction:.1f}% of the sample passes")
    else:
        parts.append("full data")
    print("\n[lightning-pruning] " + ", ".join(parts), flush=True)
    logger = trainer.logger
    if logger is not None and getattr(logger, "log_dir", None):
        print(f"[lightning-pruning] metrics of every epoch: {os.path.join(logger.log_dir, 'metrics.csv')}", flush=True)


def cli_main(args: list[str] | None = None, run: bool = True, **kwargs: Any) -> PruningCLI:
    """Builds (and by default runs) the command.

    Args:
        args: command-line arguments (default: ``sys.argv[1:]``); a dict or list as in ``LightningCLI``.
        run: run the subcommand (``fit``, ``validate``, ``test``, ``predict``); ``False`` only instantiates.
        kwargs: other arguments of ``LightningCLI``.
    """
    import_all_methods()
    epilog = describe_defaults() + "\n\n" + describe_methods()
    formatting = {"epilog": epilog, "formatter_class": _KeepLinesFormatter}
    main_kwargs = {
        **formatting,
        "prog": "lightning-pruning",
        "description": "Train any LightningModule with dynamic data pruning (a LightningCLI in subclass mode).",
    }
    parser_kwargs: dict[str, Any] = {**main_kwargs, "fit": dict(formatting)}
    options: dict[str, Any] = {
        "trainer_defaults": TRAINER_DEFAULTS,
        "save_config_kwargs": {"overwrite": True},
        "auto_configure_optimizers": False,
        "parser_kwargs": parser_kwargs,
        "seed_everything_default": 0,
    }
    options.update(kwargs)
    options.setdefault("subclass_mode_model", True)
    options.setdefault("subclass_mode_data", True)
    return PruningCLI(pl.LightningModule, pl.LightningDataModule, args=args, run=run, **options)


def main() -> None:
    """Entry point of the ``lightning-pruning`` console script."""
    cli_main()


if __name__ == "__main__":
    main()
