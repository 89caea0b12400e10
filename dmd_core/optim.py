"""The recipe's optimizer and schedule: Adam and ReduceLROnPlateau, computing exactly what ``torch.optim`` computes.

Why not ``torch.optim`` itself: building any ``torch.optim.Optimizer`` imports ``torch._dynamo``
(its methods are wrapped to keep the compiler out), which costs more than a second at every start of
a process on a small CPU, as long as a whole aligned epoch's validation, checkpoints and test
together. These two classes do the same arithmetic with the same tensor operations and keep the same
state-dict layout, so checkpoints move freely between them and ``torch.optim``:

* :class:`Adam` is ``torch.optim.Adam`` (``amsgrad``, ``maximize``, ``fused`` and ``capturable`` off):
  the update of Kingma and Ba with PyTorch's operation order, written with the ``torch._foreach_*``
  operations PyTorch itself uses for Adam on GPUs (its default there), which on a CPU run the very
  per-tensor operations of its CPU default. Tests compare every parameter and state tensor bit for
  bit with ``torch.optim.Adam`` over many steps.
* :class:`ReduceLROnPlateau` is ``torch.optim.lr_scheduler.ReduceLROnPlateau``: the same rule
  (relative or absolute threshold, patience, cooldown, minimum rate) and state-dict keys.

:class:`Adam` also works with ``torch.amp.GradScaler`` (fp16): the scaler unscales through
``param_groups`` and calls :meth:`Adam.step` unless it found an overflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

# The hyperparameters torch.optim.Adam keeps in each parameter group (all but the first four are off here).
GROUP_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False, "maximize": False,
    "foreach": None, "capturable": False, "differentiable": False, "fused": None, "decoupled_weight_decay": False,
}  # fmt: skip
UNSUPPORTED = ("amsgrad", "maximize", "capturable", "differentiable", "fused", "decoupled_weight_decay")


class Adam:
    """``torch.optim.Adam(params, lr, betas, eps, weight_decay)``, bit for bit, without importing ``torch._dynamo``.

    One step, per parameter ``p`` with gradient ``g`` (``+ weight_decay * p`` when set), step count ``t``:
    ``m = lerp(m, g, 1 - b1)``, ``v = b2 v + (1 - b2) g²``,
    ``p += -(lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    Parameters without a gradient are skipped (their state is untouched), as in PyTorch.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:  # fmt: skip
        if not 0.0 <= lr:
            raise ValueError(f"Adam: lr must be >= 0, got {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Adam: eps must be >= 0, got {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Adam: betas must lie in [0, 1), got {tuple(betas)}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Adam: weight_decay must be >= 0, got {weight_decay}")
        self.defaults = {**GROUP_DEFAULTS, "lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        self.param_groups: list[dict[str, Any]] = []
        groups = list(params)
        if not groups:
            raise ValueError("Adam: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group (``{"params": [...], "lr": ...}``); missing hyperparameters take the defaults."""
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if not isinstance(p, torch.Tensor) or not p.is_leaf:
                raise ValueError(f"Adam: parameters must be leaf tensors, got {type(p).__name__}")
            if id(p) in seen:
                raise ValueError("Adam: a parameter appears in more than one group")
            seen.add(id(p))
        full = {**self.defaults, **group, "params": params}
        for key in UNSUPPORTED:
            if full[key]:
                raise ValueError(f"Adam: {key}=True is not supported here (use torch.optim.Adam)")
        self.param_groups.append(full)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (``set_to_none``) or zero every parameter's gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().requires_grad_(False).zero_()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Adam update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_device: dict[tuple[torch.device, torch.dtype], list[list[torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients")
                state = self.state.get(p)
                if not state:
                    state = self.state[p] = {
                        "step": torch.tensor(0.0, dtype=_step_dtype()),  # on the CPU, as torch.optim keeps it
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                lists = by_device.setdefault((p.device, p.dtype), [[], [], [], [], []])
                for i, t in enumerate((p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                    lists[i].append(t)
            for params, grads, exp_avgs, exp_avg_sqs, steps in by_device.values():
                _adam(params, grads, exp_avgs, exp_avg_sqs, steps, group)
        return loss

    # ---- checkpoints: the layout of torch.optim.Optimizer.state_dict ----

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [{..., "params": [index]}]}``."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": [index[id(p)] for p in group["params"]]})  # fmt: skip
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (ours or ``torch.optim.Adam``'s) onto the same parameters, in the same order."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"optimizer state: {len(saved_groups)} parameter group(s) saved, "
                             f"this optimizer has {len(self.param_groups)}")  # fmt: skip
        by_index: dict[int, torch.Tensor] = {}
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"optimizer state: group {i} holds {len(saved['params'])} parameters saved, "
                                 f"{len(group['params'])} here")  # fmt: skip
            by_index.update(zip(saved["params"], group["params"]))
        state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        for key, saved in state_dict["state"].items():
            p = by_index.get(int(key))
            if p is None:
                raise ValueError(f"optimizer state: state for parameter {key}, which no group lists")
            restored = {}
            for name, value in saved.items():
                if name == "step":  # a CPU scalar whatever the device, as torch.optim keeps it
                    restored[name] = torch.as_tensor(value, dtype=_step_dtype()).detach().clone().to("cpu")
                elif value.shape != p.shape:
                    raise ValueError(f"optimizer state: parameter {key}'s {name} has shape {tuple(value.shape)}, "
                                     f"the parameter {tuple(p.shape)}")  # fmt: skip
                else:
                    restored[name] = value.detach().to(device=p.device, dtype=p.dtype, copy=True)
            state[p] = restored
        self.state = state
        self.param_groups = [{**{k: v for k, v in saved.items() if k != "params"}, "params": group["params"]}
                             for saved, group in zip(saved_groups, self.param_groups)]  # fmt: skip
        for group in self.param_groups:
            group["betas"] = tuple(group["betas"])

    def __repr__(self) -> str:
        g = self.param_groups[0]
        return f"Adam(lr={g['lr']}, betas={g['betas']}, eps={g['eps']}, weight_decay={g['weight_decay']})"


def _step_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _adam(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
          exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], group: dict[str, Any]) -> None:  # fmt: skip
    """One update of tensors on one device and dtype: torch.optim.Adam's foreach path, operation for operation."""
    lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    counts = [s.item() for s in steps]
    step_size = [(lr / (1 - beta1**t)) * -1 for t in counts]
    bias_correction2_sqrt = [(1 - beta2**t) ** 0.5 for t in counts]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)


class ReduceLROnPlateau:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau``: multiply every group's ``lr`` by ``factor`` once the
    metric has not improved for more than ``patience`` epochs (then wait ``cooldown`` epochs).

    Improvement (mode ``min``, threshold mode ``rel``): ``metric < best * (1 - threshold)``; ``abs``:
    ``metric < best - threshold``; mode ``max`` mirrors both. A change smaller than ``eps`` is not made.
    """

    def __init__(self, optimizer: Adam, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float | list[float] = 0.0, eps: float = 1e-8) -> None:  # fmt: skip
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be < 1.0, got {factor}")
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.optimizer = optimizer
        n = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n:
                raise ValueError(f"ReduceLROnPlateau: {len(min_lr)} min_lr values for {n} parameter groups")
            self.default_min_lr, self.min_lrs = None, list(min_lr)
        else:
            self.default_min_lr, self.min_lrs = min_lr, [min_lr] * n
        self.factor, self.patience, self.cooldown, self.eps = factor, patience, cooldown, eps
        self.mode, self.threshold, self.threshold_mode = mode, threshold, threshold_mode
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.best, self.num_bad_epochs, self.cooldown_counter = self.mode_worse, 0, 0
        self.last_epoch = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    def is_better(self, metric: float, best: float) -> bool:
        if self.mode == "min":
            return metric < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return metric > (best * (self.threshold + 1.0) if self.threshold_mode == "rel" else best + self.threshold)

    def step(self, metric: float) -> None:
        """Record one epoch's metric (e.g. the validation loss) and lower the rate if it has stalled."""
        current = float(metric)
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in the cooldown do not count
        if self.num_bad_epochs > self.patience:
            groups = self.optimizer.param_groups
            if len(self.min_lrs) != len(groups):
                if self.default_min_lr is None:
                    raise RuntimeError(f"ReduceLROnPlateau: {len(self.min_lrs)} min_lr values, "
                                       f"the optimizer now has {len(groups)} groups")  # fmt: skip
                self.min_lrs = [self.default_min_lr] * len(groups)
            for group, min_lr in zip(groups, self.min_lrs):
                old = float(group["lr"])
                new = max(old * self.factor, min_lr)
                if old - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Every field but the optimizer (the keys of PyTorch's scheduler)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`, ours or PyTorch's (fields this class does not use are ignored)."""
        for key in ("factor", "patience", "cooldown", "eps", "mode", "threshold", "threshold_mode", "best",
                    "num_bad_epochs", "cooldown_counter", "last_epoch", "min_lrs", "default_min_lr", "_last_lr"):  # fmt: skip
            if key in state_dict:
                setattr(self, key, state_dict[key])
        self.mode_worse = math.inf if self.mode == "min" else -math.inf
