"""dmd_core.optim: Adam and ReduceLROnPlateau compute what torch.optim computes, bit for bit, and start faster."""

import copy
import subprocess
import sys

import pytest
import torch

from dmd_core.optim import Adam, ReduceLROnPlateau

from .conftest import tiny_config

SHAPES = [(7, 5), (5,), (3, 4, 2), (1,), (64, 33)]


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def _run(opt, params, steps: int, seed: int, skip_every: int = 0) -> None:
    """``steps`` updates with random gradients; parameter ``i`` has no gradient on some steps when ``skip_every``."""
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        opt.zero_grad(set_to_none=True)
        for i, p in enumerate(params):
            if skip_every and (t + i) % skip_every == 0:
                continue  # no gradient: the parameter and its state must stay as they are
            p.grad = torch.randn(p.shape, generator=g) * 10 ** float(torch.randint(-4, 3, (), generator=g))
        opt.step()


def _assert_same(ours_params, ours_opt, torch_params, torch_opt) -> None:
    for a, b in zip(ours_params, torch_params):
        assert torch.equal(a, b)
    ours, ref = ours_opt.state_dict(), torch_opt.state_dict()
    assert ours["state"].keys() == ref["state"].keys()
    for key, state in ref["state"].items():
        for name, value in state.items():
            assert torch.equal(ours["state"][key][name], value), (key, name)
            assert ours["state"][key][name].dtype == value.dtype
    for a, b in zip(ours["param_groups"], ref["param_groups"]):
        assert a == {k: v for k, v in b.items()}


@pytest.mark.parametrize("kwargs", [{"lr": 1e-3}, {"lr": 3e-2, "betas": (0.8, 0.99), "eps": 1e-6},
                                    {"lr": 1e-2, "weight_decay": 0.05}])  # fmt: skip
def test_adam_matches_torch_adam_bit_for_bit_over_many_steps(kwargs):
    ours_params, torch_params = _params(0), _params(0)
    ours, ref = Adam(ours_params, **kwargs), torch.optim.Adam(torch_params, **kwargs)
    _run(ours, ours_params, 40, seed=1, skip_every=3)
    _run(ref, torch_params, 40, seed=1, skip_every=3)
    _assert_same(ours_params, ours, torch_params, ref)


def test_adam_follows_a_learning_rate_changed_in_its_groups_like_torch_adam():
    ours_params, torch_params = _params(2), _params(2)
    ours = Adam([{"params": ours_params[:2]}, {"params": ours_params[2:], "lr": 5e-3}], lr=1e-3)
    ref = torch.optim.Adam([{"params": torch_params[:2]}, {"params": torch_params[2:], "lr": 5e-3}], lr=1e-3)
    for opt, params in ((ours, ours_params), (ref, torch_params)):
        _run(opt, params, 5, seed=3)
        for group in opt.param_groups:
            group["lr"] *= 0.5  # what the plateau schedule does
        _run(opt, params, 5, seed=4)
    _assert_same(ours_params, ours, torch_params, ref)


def test_adam_state_dicts_move_between_ours_and_torch_adam_and_training_continues_identically():
    base = _params(5)
    start = Adam(base, lr=1e-2)
    _run(start, base, 7, seed=6)
    saved_ours = copy.deepcopy(start.state_dict())
    torch_base = _params(5)
    torch_start = torch.optim.Adam(torch_base, lr=1e-2)
    _run(torch_start, torch_base, 7, seed=6)
    saved_torch = copy.deepcopy(torch_start.state_dict())

    # ours -> torch and torch -> ours, then 5 more steps on each side
    p1 = [torch.nn.Parameter(p.detach().clone()) for p in base]
    p2 = [torch.nn.Parameter(p.detach().clone()) for p in base]
    resumed_torch, resumed_ours = torch.optim.Adam(p1, lr=1.0), Adam(p2, lr=1.0)  # lr comes from the state
    resumed_torch.load_state_dict(saved_ours)
    resumed_ours.load_state_dict(saved_torch)
    assert resumed_ours.param_groups[0]["lr"] == 1e-2
    _run(resumed_torch, p1, 5, seed=7)
    _run(resumed_ours, p2, 5, seed=7)
    _assert_same(p2, resumed_ours, p1, resumed_torch)


def test_adam_checks_its_arguments_and_the_state_it_loads():
    params = _params(0)
    with pytest.raises(ValueError, match="lr"):
        Adam(params, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        Adam(params, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="empty"):
        Adam([])
    with pytest.raises(ValueError, match="amsgrad"):
        Adam([{"params": params, "amsgrad": True}])
    with pytest.raises(ValueError, match="more than one group"):
        Adam([{"params": params}, {"params": params[:1]}])
    opt = Adam(params)
    _run(opt, params, 1, seed=0)
    state = opt.state_dict()
    with pytest.raises(ValueError, match="parameter group"):
        Adam([{"params": params[:2]}, {"params": params[2:]}]).load_state_dict(state)
    with pytest.raises(ValueError, match="parameters saved"):
        Adam(params[:3]).load_state_dict(state)
    with pytest.raises(ValueError, match=r"shape \(7, 5\)"):
        Adam(list(reversed(params))).load_state_dict(state)


def test_adam_under_an_fp16_grad_scaler_skips_an_overflowing_step_like_torch_adam():
    results = []
    for make in (Adam, torch.optim.Adam):
        params = _params(8)
        opt, scaler = make(params, lr=1e-2), torch.amp.GradScaler("cpu", init_scale=2.0**8)
        for t in range(4):
            opt.zero_grad()
            loss = sum((p * (t + 1)).sum() for p in params)
            scaler.scale(loss).backward()
            if t == 2:
                params[0].grad[0] = float("inf")  # an overflow: this step is skipped, the scale halves
            scaler.step(opt)
            scaler.update()
        results.append(([p.detach().clone() for p in params], scaler.get_scale()))
    (ours, ours_scale), (ref, ref_scale) = results
    assert ours_scale == ref_scale == 2.0**7
    assert all(torch.equal(a, b) for a, b in zip(ours, ref))


def _plateau_trajectory(make_scheduler, metrics, **kwargs) -> list[float]:
    opt = (Adam if make_scheduler is ReduceLROnPlateau else torch.optim.Adam)(_params(0), lr=1.0)
    scheduler = make_scheduler(opt, **kwargs)
    lrs = []
    for m in metrics:
        scheduler.step(m)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("kwargs", [
    {"mode": "min", "factor": 0.5, "patience": 5},
    {"mode": "min", "factor": 0.5, "patience": 1, "threshold": 0.1, "threshold_mode": "abs", "cooldown": 2},
    {"mode": "max", "factor": 0.3, "patience": 2, "min_lr": 0.05},
    {"mode": "max", "factor": 0.1, "patience": 0, "threshold_mode": "abs", "eps": 0.5},
])  # fmt: skip
def test_plateau_schedule_lowers_the_rate_exactly_when_torch_does(kwargs):
    g = torch.Generator().manual_seed(0)
    metrics = (torch.rand(60, generator=g) + torch.linspace(1.0, 0.0, 60)).tolist()
    ours = _plateau_trajectory(ReduceLROnPlateau, metrics, **kwargs)
    ref = _plateau_trajectory(torch.optim.lr_scheduler.ReduceLROnPlateau, metrics, **kwargs)
    assert ours == ref
    assert len(set(ours)) > 1  # the schedule acted


def test_plateau_state_dict_loads_torch_schedulers_state_and_continues_like_it():
    metrics = [1.0, 0.9, 0.95, 0.97, 0.99, 1.2, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96]
    ref_opt = torch.optim.Adam(_params(0), lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, factor=0.5, patience=2)
    for m in metrics[:5]:
        ref.step(m)
    ours_opt = Adam(_params(0), lr=1.0)
    ours = ReduceLROnPlateau(ours_opt, factor=0.5, patience=2)
    ours.load_state_dict(ref.state_dict())
    ours_opt.load_state_dict(ref_opt.state_dict())
    for m in metrics[5:]:
        ref.step(m)
        ours.step(m)
        assert ours_opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    assert ours.best == ref.best and ours.num_bad_epochs == ref.num_bad_epochs
    assert set(ours.state_dict()) <= set(ref.state_dict())


def test_plateau_rejects_bad_arguments():
    opt = Adam(_params(0))
    with pytest.raises(ValueError, match="factor"):
        ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError, match="mode"):
        ReduceLROnPlateau(opt, mode="lowest")
    with pytest.raises(ValueError, match="min_lr"):
        ReduceLROnPlateau(opt, min_lr=[0.0, 0.0])


def test_a_training_run_never_imports_torch_dynamo():
    """What the optimizer of our own is for: torch.optim imports torch._dynamo (more than a second)."""
    code = (
        "import sys, tempfile\n"
        "from dmd_core.bench import random_dataset\n"
        "from dmd_core.config import DMDConfig, TrainConfig\n"
        "from dmd_core.trainer import train\n"
        f"cfg = DMDConfig.from_dict({tiny_config().to_dict()!r})\n"
        "with tempfile.TemporaryDirectory() as out:\n"
        "    tc = TrainConfig(batch_size=4, accumulation=2, max_epochs=2)\n"
        "    train(cfg, random_dataset(cfg, 16, 8), tc, out, seed=1, device='cpu', progress=False)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
