"""dmd_core.train: the recipe's loop, determinism, resume, NaN guard, evaluation with missing modalities."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dmd_core import runs
from dmd_core.config import TrainConfig
from dmd_core.data import Split
from dmd_core.devices import pick_device
from dmd_core.distill import EDGE_NAMES
from dmd_core.evaluation import evaluate, missing_modality_table
from dmd_core.export import load_model
from dmd_core.losses import total_loss
from dmd_core.metrics import METRIC_NAMES
from dmd_core.model import DMD
from dmd_core.rng import seed_everything
from dmd_core.runs import load_run
from dmd_core.trainer import PARTS, NonFiniteLossError, train, unused_parameters

from .conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def tiny_split(name: str, cfg, n: int, seed: int) -> Split:
    """``n`` samples whose labels (on MOSI's 1/3 grid, some exact zeros) are visible in every modality."""
    g = torch.Generator().manual_seed(seed)
    (lt, lv, la), (dt, dv, da) = cfg.seq_lens, cfg.feature_dims
    z = torch.randn(n, generator=g)
    labels = torch.round(torch.clamp(1.5 * z, -3, 3) * 3) / 3
    labels[::7] = 0.0

    def feats(length: int, dim: int, strength: float) -> torch.Tensor:
        x = torch.randn(n, length, dim, generator=g) * 0.5
        return x + strength * z.view(n, 1, 1)

    return Split(
        name=name, text=feats(lt, dt, 1.0), audio=feats(la, da, 0.3), vision=feats(lv, dv, 0.5),
        labels=labels.float(), audio_lengths=None, vision_lengths=None,
        ids=[f"{name}_{i}$_${i}" for i in range(n)], raw_text=[f"SAMPLE {i}" for i in range(n)], annotations=None,
    )  # fmt: skip


def tiny_dataset(cfg=None, sizes=(40, 16, 16), seed: int = 0) -> dict[str, Split]:
    """A dict of splits: ``train`` accepts any object with ``ds["train"]``."""
    cfg = cfg or tiny_config()
    return {
        name: tiny_split(name, cfg, n, seed + k) for k, (name, n) in enumerate(zip(("train", "valid", "test"), sizes))
    }


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the CI machine has two cores shared with others."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FAST = TrainConfig(batch_size=4, accumulation=3, max_epochs=3, seeds=(7,))


def history_without_time(run_dir):
    return load_run(run_dir).history.drop(columns="time_s")


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- the recipe ------------------------------------------------------------------------------------------------


def test_one_optimizer_step_is_adam_on_the_sum_of_value_clipped_gradients(tmp_path):
    cfg = tiny_config()
    ds = tiny_dataset(cfg, sizes=(12, 8, 8))
    tc = TrainConfig(batch_size=4, accumulation=3, max_epochs=1, grad_clip=0.05, lr=1e-2)
    result = train(cfg, ds, tc, tmp_path / "run", seed=3, progress=False)
    assert result.history[0]["steps"] == 1  # 3 mini-batches, one group

    # The same step by hand: same initial weights, same shuffling, same dropout masks.
    seed_everything(3)
    model = DMD(cfg)
    for p in unused_parameters(model):
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    gen = torch.Generator().manual_seed(3)
    model.train()
    opt.zero_grad()
    for batch in ds["train"].batches(4, shuffle=True, generator=gen):
        out = model(batch.text, batch.audio, batch.vision)
        total_loss(model, out, batch.labels).total.backward()
        torch.nn.utils.clip_grad_value_(params, 0.05)
    assert max(p.grad.abs().max() for p in params) <= 0.05  # clipping is active on the running sum
    opt.step()
    last = load_run(tmp_path / "run").checkpoint("last")["model"]
    assert same_weights(last, model.state_dict())


def test_leftover_mini_batches_take_a_step_unless_asked_to_drop_them(tmp_path):
    cfg = tiny_config()
    ds = tiny_dataset(cfg, sizes=(12, 8, 8))  # 3 mini-batches per epoch, fewer than `accumulation`
    tc = TrainConfig(batch_size=4, accumulation=10, max_epochs=2)
    stepped = train(cfg, ds, tc, tmp_path / "a", seed=1, progress=False)
    assert [row["steps"] for row in stepped.history] == [1, 2]
    dropped = train(cfg, ds, tc.replace(leftover_step=False), tmp_path / "b", seed=1, progress=False)
    assert [row["steps"] for row in dropped.history] == [0, 0]
    seed_everything(1)
    untouched = DMD(cfg).state_dict()
    assert same_weights(load_run(tmp_path / "b").checkpoint("last")["model"], untouched)  # the reference's accident


def test_early_stopping_counts_epochs_without_a_better_validation_loss(tmp_path):
    cfg = tiny_config()
    tc = TrainConfig(batch_size=4, accumulation=3, lr=0.0, early_stop=2, max_epochs=10)  # nothing changes
    result = train(cfg, tiny_dataset(cfg), tc, tmp_path / "run", seed=1, progress=False)
    assert (result.stop_reason, result.epochs, result.best_epoch) == ("early_stop", 3, 1)
    assert [row["best"] for row in result.history] == [1, 0, 0]


def test_plateau_scheduler_halves_the_learning_rate_on_the_validation_loss(tmp_path):
    cfg = tiny_config()
    # A learning rate too small to improve the validation loss: patience 0 halves it after epoch 2.
    tc = TrainConfig(batch_size=4, accumulation=3, lr=1e-6, plateau_patience=0, early_stop=10, max_epochs=4)
    result = train(cfg, tiny_dataset(cfg), tc, tmp_path / "run", seed=1, progress=False)
    assert [row["lr"] for row in result.history] == [1e-6, 1e-6, 5e-7, 2.5e-7]


# ---- determinism and resume ------------------------------------------------------------------------------------


def test_same_seed_twice_is_bit_identical_and_another_seed_is_not(tmp_path):
    cfg = tiny_config()
    ds = tiny_dataset(cfg)
    a = train(cfg, ds, FAST, tmp_path / "a", seed=5, progress=False)
    b = train(cfg, ds, FAST, tmp_path / "b", seed=5, progress=False)
    c = train(cfg, ds, FAST, tmp_path / "c", seed=6, progress=False)
    assert history_without_time(tmp_path / "a").equals(history_without_time(tmp_path / "b"))
    assert a.test_metrics == b.test_metrics
    assert same_weights(a.model.state_dict(), b.model.state_dict())
    assert not same_weights(a.model.state_dict(), c.model.state_dict())
    assert (tmp_path / "a" / "test_predictions.csv").read_bytes() == (
        tmp_path / "b" / "test_predictions.csv"
    ).read_bytes()


def _plateau_recipe() -> TrainConfig:
    # A large learning rate makes the validation loss bounce, so that the plateau scheduler and the
    # early-stopping counter both have state worth restoring.
    return TrainConfig(batch_size=4, accumulation=2, lr=5e-2, plateau_patience=0, early_stop=3, max_epochs=8)


def test_stop_then_resume_equals_one_uninterrupted_run(tmp_path):
    cfg = tiny_config()
    ds = tiny_dataset(cfg)
    tc = _plateau_recipe()
    full = train(cfg, ds, tc, tmp_path / "full", seed=1, progress=False)
    train(cfg, ds, tc.replace(max_epochs=2), tmp_path / "part", seed=1, progress=False)
    resumed = train(cfg, ds, tc, tmp_path / "part", seed=1, resume=True, progress=False)
    lrs = [row["lr"] for row in full.history]
    trajectory = [(round(h["valid_loss"], 4), h["lr"]) for h in full.history]
    assert len(set(lrs)) > 1, f"the scheduler should have acted: (valid loss, lr) {trajectory}"
    assert history_without_time(tmp_path / "full").equals(history_without_time(tmp_path / "part"))
    assert (full.stop_reason, full.epochs, full.best_epoch) == (resumed.stop_reason, resumed.epochs, resumed.best_epoch)
    assert full.test_metrics == resumed.test_metrics
    run_full, run_part = load_run(tmp_path / "full"), load_run(tmp_path / "part")
    assert same_weights(run_full.checkpoint("last")["model"], run_part.checkpoint("last")["model"])
    assert same_weights(run_full.checkpoint("best")["model"], run_part.checkpoint("best")["model"])


def test_resuming_a_finished_run_trains_no_further(tmp_path):
    cfg = tiny_config()
    ds = tiny_dataset(cfg)
    first = train(cfg, ds, FAST, tmp_path / "run", seed=1, progress=False)
    again = train(cfg, ds, FAST, tmp_path / "run", seed=1, resume=True, progress=False)
    assert again.epochs == first.epochs == 3 and again.test_metrics == first.test_metrics


def test_resume_refuses_a_changed_recipe_and_a_used_folder_needs_resume(tmp_path):
    cfg = tiny_config()
    ds = tiny_dataset(cfg)
    train(cfg, ds, FAST.replace(max_epochs=1), tmp_path / "run", seed=1, progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train(cfg, ds, FAST, tmp_path / "run", seed=1, progress=False)
    with pytest.raises(ValueError, match=r"train config differs in \['lr'\]"):
        train(cfg, ds, FAST.replace(lr=1e-3), tmp_path / "run", seed=1, resume=True, progress=False)
    with pytest.raises(ValueError, match="seed 1 != 2"):
        train(cfg, ds, FAST, tmp_path / "run", seed=2, resume=True, progress=False)


def test_a_run_folder_written_with_the_removed_overlap_setting_loads_and_resumes(tmp_path, caplog):
    cfg = tiny_config()
    ds = tiny_dataset(cfg)
    train(cfg, ds, FAST.replace(max_epochs=1), tmp_path / "run", seed=1, progress=False)
    config_file = tmp_path / "run" / runs.CONFIG
    meta = runs.read_json(config_file)
    meta["train"]["overlap"], meta["overlap"] = None, False  # what config.json held while overlap existed
    runs.write_json(config_file, meta)
    with caplog.at_level("INFO", logger="dmd_core.config"):
        assert load_run(tmp_path / "run").train_config == FAST.replace(max_epochs=1)
    assert "ignoring overlap=None" in caplog.text
    resumed = train(cfg, ds, FAST.replace(max_epochs=2), tmp_path / "run", seed=1, resume=True, progress=False)
    assert resumed.epochs == 2
    assert TrainConfig.from_dict({"overlap": True}) == TrainConfig()


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    from tests.test_train import tiny_dataset, _plateau_recipe
    from tests.conftest import tiny_config
    from dmd_core.trainer import train

    def slow(trainer, row):
        print("epoch", trainer.epoch, flush=True)
        time.sleep(0.3)  # leave the parent time to kill us between or inside epochs

    cfg = tiny_config()
    train(cfg, tiny_dataset(cfg, sizes=(80, 16, 16)), _plateau_recipe(), sys.argv[1], seed=4, progress=False,
          resume=True, on_epoch_end=slow)
    """
)


def test_a_run_killed_with_sigkill_resumes_to_the_same_result(tmp_path):
    cfg = tiny_config()
    ds = tiny_dataset(cfg, sizes=(80, 16, 16))
    full = train(cfg, ds, _plateau_recipe(), tmp_path / "full", seed=4, progress=False)
    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run_dir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        line = ""
        while not line.startswith("epoch 2"):
            line = proc.stdout.readline()
            assert line, "the child ended before epoch 2"
        time.sleep(0.45)  # now inside epoch 3 (or writing its checkpoint)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done = load_run(run_dir).checkpoint("last")["epoch"]
    assert 2 <= done < full.epochs and not (run_dir / "test_metrics.json").exists()
    resumed = train(cfg, ds, _plateau_recipe(), run_dir, seed=4, resume=True, progress=False)
    trajectories = [[round(h["valid_loss"], 6) for h in r.history] for r in (full, resumed)]
    assert resumed.test_metrics == full.test_metrics, f"killed after epoch {done}; valid losses {trajectories}"
    assert history_without_time(run_dir).equals(history_without_time(tmp_path / "full"))


# ---- failures --------------------------------------------------------------------------------------------------


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_config()
    ds = tiny_dataset(cfg)
    train(cfg, ds, FAST.replace(max_epochs=2), tmp_path / "run", seed=1, progress=False)
    before = (tmp_path / "run" / "last.pt").read_bytes(), (tmp_path / "run" / "best.pt").read_bytes()
    bad = dict(ds)
    labels = ds["train"].labels.clone()
    labels[5] = math.nan
    bad["train"] = dataclasses.replace(ds["train"], labels=labels)
    with pytest.raises(NonFiniteLossError, match=r"epoch 3, mini-batch \d+: .*task=nan") as err:
        train(cfg, bad, FAST.replace(max_epochs=4), tmp_path / "run", seed=1, resume=True, progress=False)
    assert "last good epoch (2)" in str(err.value)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before[0]
    assert (tmp_path / "run" / "best.pt").read_bytes() == before[1]
    assert len(load_run(tmp_path / "run").history) == 2


def test_a_failed_checkpoint_write_stops_the_run_and_leaves_the_last_epoch_written_whole(tmp_path, monkeypatch):
    cfg = tiny_config()
    ds = tiny_dataset(cfg)
    run_dir = tmp_path / "run"
    write, written = runs.atomic_write_bytes, []

    def disk_full_at_epoch_3(path, data):
        if sum(Path(p).name == "last.pt" for p in written) == 2:  # epoch 3's first file
            raise OSError(28, "No space left on device", str(path))
        written.append(path)
        return write(path, data)

    monkeypatch.setattr(runs, "atomic_write_bytes", disk_full_at_epoch_3)
    with pytest.raises(OSError, match="No space left"):
        train(cfg, ds, FAST.replace(max_epochs=5), run_dir, seed=1, progress=False)
    assert load_run(run_dir).checkpoint("last")["epoch"] == 2  # epoch 3's history and last.pt were not written
    assert len(load_run(run_dir).history) == 2 and not (run_dir / "test_metrics.json").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "config.json", "history.csv", "last.pt"]


# ---- what a run records ----------------------------------------------------------------------------------------


def test_history_records_every_loss_part_metric_lr_time_and_edge(tmp_path):
    cfg = tiny_config()
    result = train(cfg, tiny_dataset(cfg), FAST, tmp_path / "run", seed=1, progress=False)
    history = load_run(tmp_path / "run").history
    expected = {"epoch", "lr", "time_s", "steps", "best", "best_valid_loss", "valid_loss"}
    expected |= {f"train_{p}" for p in PARTS} | {f"valid_{m}" for m in METRIC_NAMES}
    expected |= {f"{s}_{u}_{e}" for s in ("train", "valid") for u in ("homo", "hetero") for e in EDGE_NAMES}
    assert set(history.columns) == expected
    assert len(history) == 3 and list(history["epoch"]) == [1, 2, 3]
    for split in ("train", "valid"):
        for unit in ("homo", "hetero"):
            edges = history[[f"{split}_{unit}_{e}" for e in EDGE_NAMES]].to_numpy()
            assert edges.sum(1) == pytest.approx(1.0, abs=1e-5)  # a distribution over the six edges
            assert edges == pytest.approx(1 / 6, abs=0.05)  # they start near 1/6
    assert history["train_total"].notna().all() and (history["time_s"] > 0).all()
    assert result.history[-1]["steps"] == 3 * math.ceil(40 / 4 / 3)


@pytest.mark.parametrize("epochs", [1, 4])  # 1: the model in memory is the best one and is not reloaded
def test_test_split_is_scored_once_with_the_best_weights(tmp_path, epochs):
    cfg = tiny_config()
    ds = tiny_dataset(cfg)
    result = train(cfg, ds, _plateau_recipe().replace(max_epochs=epochs), tmp_path / "run", seed=3, progress=False)
    assert (result.best_epoch == result.epochs) == (epochs == 1)
    run = load_run(tmp_path / "run")
    best = load_model(run, "best")
    scores = evaluate(best, ds["test"])
    assert {k: scores[k] for k in METRIC_NAMES} == {k: run.test_metrics[k] for k in METRIC_NAMES}
    assert run.test_metrics["best_epoch"] == result.best_epoch == run.checkpoint("best")["epoch"]
    preds = run.test_predictions
    assert list(preds.columns[:3]) == ["id", "label", "prediction"] and len(preds) == len(ds["test"])
    assert preds["id"].tolist() == ds["test"].ids
    homo = preds[[f"homo_{e}" for e in EDGE_NAMES]].to_numpy()
    assert homo.sum(1) == pytest.approx(1.0, abs=1e-5)


def test_missing_modality_table_zeroes_each_subset(tmp_path):
    cfg = tiny_config()
    ds = tiny_dataset(cfg)
    model = train(cfg, ds, FAST, tmp_path / "run", seed=1, progress=False).model
    table = missing_modality_table(model, ds["test"])
    assert table["present"].tolist() == ["L+V+A", "V+A", "L+A", "L+V", "A", "V", "L"]
    assert table["zeroed"].tolist() == ["-", "L", "V", "A", "L+V", "L+A", "V+A"]
    full = evaluate(model, ds["test"])
    assert table.iloc[0]["MAE"] == full["MAE"]
    assert table["loss"].nunique() == 7  # each subset changes the predictions
    with pytest.raises(ValueError, match="unknown modalities"):
        evaluate(model, ds["test"], zero=("X",))


def test_data_that_does_not_fit_the_model_is_refused_with_names(tmp_path):
    cfg = tiny_config()
    ds = tiny_dataset(cfg.replace(feature_dims=(16, 6, 5)))  # audio 5-d, the model expects 4-d
    with pytest.raises(ValueError, match=r"split 'train', audio: expected per-sample shape \(9, 4\), found \(9, 5\)"):
        train(cfg, ds, FAST, tmp_path / "run", seed=1, progress=False)


def test_pick_device_prefers_what_is_asked_and_refuses_what_is_missing():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")
