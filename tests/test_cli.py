"""The ``lightning-pruning`` command: every shipped config runs, and the help documents every method."""

from __future__ import annotations

import csv
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.cli import LightningCLI

from lightning_pruning.cli import cli_main, describe_methods, import_all_methods
from lightning_pruning.data.datamodule import PruningDataModule
from lightning_pruning.data.fashion_mnist_datamodule import FashionMNISTDataModule
from lightning_pruning.methods.base import PruningCallback
from lightning_pruning.methods.registry import METHODS
from lightning_pruning.models import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

import_all_methods()
# The tests hand the arguments over in-process, while sys.argv holds pytest's own.
pytestmark = pytest.mark.filterwarnings("ignore:.*LightningCLI's args parameter.*")


def tiny(tmp_path: Path, epochs: int = 2) -> list[str]:
    """Command-line overrides that shrink a run to about a second."""
    return [
        f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_checkpointing=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--data.train_subset=192",
        "--data.eval_subset=128",
        "--data.batch_size=64",
    ]


def read_metrics(cli: LightningCLI) -> list[dict[str, str]]:
    with open(Path(cli.trainer.logger.log_dir) / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_one_config_per_registered_method_and_a_baseline() -> None:
    names = {path.stem for path in CONFIGS}
    assert names == set(METHODS) | {"full"}
    for path in CONFIGS:
        config = yaml.safe_load(path.read_text())
        callbacks = config["trainer"].get("callbacks") or []
        if path.stem == "full":
            assert callbacks == []
        else:
            (callback,) = callbacks
            module, _, name = callback["class_path"].rpartition(".")
            assert METHODS[path.stem] is getattr(sys.modules[module], name)
            # Every setting in the file is a real constructor argument of the method.
            assert set(callback["init_args"]) <= set(inspect.signature(METHODS[path.stem].__init__).parameters)


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_every_shipped_config_runs(config: Path, tmp_path: Path) -> None:
    cli = cli_main(["fit", f"--config={config}", *tiny(tmp_path)])
    trainer = cli.trainer
    assert isinstance(cli.model, ImageClassifier)
    assert isinstance(cli.datamodule, FashionMNISTDataModule)
    assert trainer.current_epoch == 2
    # PruningDataModule rebuilds the training loader every epoch, also without a pruning callback: each epoch gets
    # its own shuffle, and a mid-epoch resume does not carry its position into the next epoch.
    assert trainer.reload_dataloaders_every_n_epochs == 1
    pruners = [callback for callback in trainer.callbacks if isinstance(callback, PruningCallback)]
    if config.stem == "full":
        assert pruners == []
    else:
        (pruner,) = pruners
        assert type(pruner) is METHODS[config.stem]
        assert len(pruner.history) == 2
    rows = read_metrics(cli)
    worst = [float(row["val/worst_class_acc"]) for row in rows if row["val/worst_class_acc"]]
    assert len(worst) == 2 and all(0.0 <= value <= 1.0 for value in worst)
    if pruners:
        assert any(row.get("pruning/saved_fraction") for row in rows)


def test_callback_from_command_line_shorthand(tmp_path: Path) -> None:
    args = ["fit", "--trainer.callbacks+=RandomPruning", "--trainer.callbacks.prune_ratio=0.75", *tiny(tmp_path)]
    cli = cli_main(args)
    (pruner,) = [callback for callback in cli.trainer.callbacks if isinstance(callback, PruningCallback)]
    assert type(pruner).__name__ == "RandomPruning"
    assert pruner.prune_ratio == 0.75
    assert [entry["epoch_samples"] for entry in pruner.history] == [48, 48]  # round(0.25 * 192)
    assert cli.trainer.reload_dataloaders_every_n_epochs == 1


def test_defaults_apply_the_trainer_settings(tmp_path: Path) -> None:
    cli = cli_main(["--trainer.logger.init_args.save_dir", str(tmp_path)], run=False)
    trainer = cli.trainer
    assert trainer.max_epochs == 5
    assert type(trainer.logger).__name__ == "CSVLogger"
    assert cli.datamodule.batch_size == 128 and cli.model.hparams["backbone"] == "mlp"


def test_model_and_data_options(tmp_path: Path) -> None:
    args = ["--model.backbone=cnn", "--data.long_tailed=true", "--data.imbalance=10", "--data.train_subset=5000"]
    cli = cli_main([*args, "--trainer.logger.init_args.save_dir", str(tmp_path)], run=False)
    cli.datamodule.setup("fit")
    counts = cli.datamodule.train_dataset.targets.bincount().tolist()
    assert len(cli.datamodule.train_dataset) == 5000 and counts[0] > 3 * counts[-1]
    assert cli.model.hparams["backbone"] == "cnn"


def test_help_lists_every_callback_argument_with_its_help_text() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_pruning.cli", "fit", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    text = " ".join(result.stdout.split())
    assert "--trainer.callbacks" in text and "--data.train_subset" in text and "--model.backbone" in text
    listing = " ".join(describe_methods().split())
    assert listing in text
    for name, cls in METHODS.items():
        assert f"{cls.__module__}.{cls.__name__}, registered as '{name}'" in text
        from lightning_pruning.cli import _argument_docs

        docs = _argument_docs(cls)
        for parameter in list(inspect.signature(cls.__init__).parameters)[1:]:
            assert f"--trainer.callbacks.{parameter}" in listing
            assert docs.get(parameter), f"{cls.__name__}.{parameter} has no help text in its docstring"
            assert " ".join(docs[parameter].split()) in listing


@pytest.mark.parametrize("name", sorted(METHODS))
def test_lightning_help_of_each_callback_shows_its_docstring(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    cls = METHODS[name]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--trainer.callbacks.help", cls.__name__])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    from lightning_pruning.cli import _argument_docs

    for parameter, help_text in _argument_docs(cls).items():
        assert f"--trainer.callbacks.{parameter}" in text
        assert " ".join(help_text.split()[:6]) in text


# ---------------------------------------------------------------------------------------------------------
# The user's own model and data (tests/cli_user.py), chosen by class path in subclass mode.
USER = ["--model=cli_user.UserClassifier", "--data=cli_user.UserDataModule"]


def user_tiny(tmp_path: Path) -> list[str]:
    """Overrides for a tiny run of the user's classes (their own defaults: 96 samples, batches of 16)."""
    return [
        *USER,
        "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_checkpointing=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_every_config_runs_the_users_own_model_and_datamodule(config: Path, tmp_path: Path) -> None:
    from cli_user import UserClassifier, UserDataModule

    cli = cli_main(["fit", f"--config={config}", *user_tiny(tmp_path)])
    assert type(cli.model) is UserClassifier
    # The plain LightningDataModule was wrapped, and its loader settings adopted.
    assert type(cli.datamodule) is PruningDataModule and type(cli.datamodule.inner) is UserDataModule
    assert cli.datamodule.batch_size == 16 and cli.datamodule.hparams["num_samples"] == 96
    assert cli.trainer.current_epoch == 2
    trained = [cli.model.trained_per_epoch[epoch] for epoch in range(2)]
    pruners = [callback for callback in cli.trainer.callbacks if isinstance(callback, PruningCallback)]
    if config.stem == "full":
        assert pruners == [] and trained == [96, 96]
    else:
        (pruner,) = pruners
        assert type(pruner) is METHODS[config.stem]
        # Every epoch trained exactly the subset the method decided, through the wrapped loader.
        assert trained == [int(entry["epoch_samples"]) for entry in pruner.history]
        assert pruner.num_samples == 96
        # Fixed-budget methods prune from epoch 1 at the latest, unless epoch 1 is already an annealing epoch
        # (InfoBatch anneals from floor(delta * max_epochs) = 1 here).
        if pruner.planned_subset_size(1) is not None and not pruner.is_full_epoch(1):
            assert min(trained) < 96
    worst = [float(row["val/worst_class_acc"]) for row in read_metrics(cli) if row.get("val/worst_class_acc")]
    assert len(worst) == 2 and all(0.0 <= value <= 1.0 for value in worst)


def test_rcap_budgets_come_from_the_users_tensor_dataset_labels(tmp_path: Path) -> None:
    args = ["fit", "--config", str(ROOT / "configs" / "rcap.yaml"), *user_tiny(tmp_path)]
    cli = cli_main(args)
    (pruner,) = [callback for callback in cli.trainer.callbacks if isinstance(callback, PruningCallback)]
    assert pruner.class_values == [0, 1, 2]
    assert pruner.class_layout is not None and pruner.class_layout.counts.tolist() == [32, 32, 32]


def test_the_users_classes_keep_their_own_defaults(tmp_path: Path) -> None:
    """The default classifier's ``lr``/``num_classes`` and the default data's ``batch_size`` must not leak
    into the user's classes that have arguments of the same names (jsonargparse keeps shared init args)."""
    cli = cli_main([*USER, "--trainer.logger.init_args.save_dir", str(tmp_path)], run=False)
    own = {key: value for key, value in cli.model.hparams.items() if not key.startswith("_")}
    assert own == {"features": 6, "num_classes": 3, "hidden": 16, "lr": 0.2}
    assert cli.datamodule.inner.hparams["batch_size"] == 16 and cli.datamodule.inner.hparams["num_workers"] == 0
    # Explicit values given after the class apply.
    args = [*USER, "--model.hidden=8", "--model.lr=0.3", "--data.batch_size=24"]
    cli = cli_main([*args, "--trainer.logger.init_args.save_dir", str(tmp_path)], run=False)
    assert cli.model.hparams["lr"] == 0.3 and cli.model.hparams["hidden"] == 8
    assert cli.datamodule.inner.hparams["batch_size"] == 24
    # The default classes keep theirs, and their options without naming them.
    cli = cli_main(["--model.lr=0.01", "--trainer.logger.init_args.save_dir", str(tmp_path)], run=False)
    assert type(cli.model) is ImageClassifier and cli.model.hparams["lr"] == 0.01
    assert cli.datamodule.batch_size == 128


def test_model_and_data_from_yaml_files(tmp_path: Path) -> None:
    model = tmp_path / "model.yaml"
    model.write_text("class_path: cli_user.UserClassifier\ninit_args:\n  hidden: 8\n")
    data = tmp_path / "data.yaml"
    data.write_text("class_path: cli_user.UserDataModule\ninit_args:\n  num_samples: 48\n")
    cli = cli_main([f"--model={model}", f"--data={data}", f"--trainer.logger.init_args.save_dir={tmp_path}"], run=False)
    assert cli.model.hparams["hidden"] == 8 and cli.model.hparams["lr"] == 0.2
    assert cli.datamodule.inner.hparams["num_samples"] == 48 and cli.datamodule.inner.hparams["batch_size"] == 16


def test_settings_of_the_default_model_are_refused_by_another_model(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  backbone: cnn\n")
    with pytest.raises(SystemExit):
        cli_main([f"--config={config}", "--model=cli_user.UserClassifier"], run=False)


def test_a_pruning_datamodule_subclass_with_groups_drives_rcap_from_the_cli(tmp_path: Path) -> None:
    args = ["fit", "--config", str(ROOT / "configs" / "rcap.yaml"), *user_tiny(tmp_path)]
    cli = cli_main([*args, "--data=cli_user.UserGroupData"])
    assert type(cli.datamodule).__name__ == "UserGroupData"  # a PruningDataModule: not wrapped
    (pruner,) = [callback for callback in cli.trainer.callbacks if isinstance(callback, PruningCallback)]
    assert pruner.class_layout is not None and pruner.class_layout.counts.tolist() == [24, 8, 24, 8, 24, 8]
    row = next(row for row in read_metrics(cli) if row.get("pruning/budget_class_5"))
    assert sum(float(row[f"pruning/budget_class_{group}"]) for group in range(6)) == 48


def test_print_config_shows_the_complete_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(ROOT / "configs" / "rcap.yaml"), *user_tiny(tmp_path), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"] == {
        "class_path": "cli_user.UserClassifier",
        "init_args": {"features": 6, "num_classes": 3, "hidden": 16, "lr": 0.2},
    }
    assert config["data"] == {
        "class_path": "cli_user.UserDataModule",
        "init_args": {"num_samples": 96, "features": 6, "num_classes": 3, "batch_size": 16, "num_workers": 0},
    }
    (callback,) = config["trainer"]["callbacks"]
    assert callback["class_path"] == "lightning_pruning.methods.rcap.RCAP"
    assert callback["init_args"]["prune_ratio"] == 0.5 and "beta" in callback["init_args"]
    assert config["trainer"]["max_epochs"] == 2


def test_print_config_of_the_defaults_names_their_classes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["fit", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"].endswith("ImageClassifier")
    assert config["model"]["init_args"]["backbone"] == "mlp"
    assert config["data"]["class_path"].endswith("FashionMNISTDataModule")
    assert config["data"]["init_args"]["long_tailed"] is False


def test_a_pruning_datamodule_subclass_is_not_wrapped(tmp_path: Path) -> None:
    cli = cli_main(["--trainer.logger.init_args.save_dir", str(tmp_path), "--data=FashionMNISTDataModule"], run=False)
    assert type(cli.datamodule) is FashionMNISTDataModule


def test_a_model_that_is_no_lightning_module_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["fit", "--model=cli_user.UserDataModule", *user_tiny(tmp_path)[1:]])
    assert "model" in capsys.readouterr().err


def test_console_script_runs_a_users_module_with_a_shorthand_callback(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("lightning-pruning")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lightning_pruning.cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    result = subprocess.run(
        [*command, "fit", *user_tiny(tmp_path), "--trainer.callbacks+=RCAP", "--trainer.callbacks.prune_ratio=0.5"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RCAP saved 50.0% of the sample passes" in result.stdout  # 48 of 96 samples in both epochs
    assert "val/worst_class_acc" in result.stdout
