"""Model and optimisation set-up: the network (new or resumed), optimizer, mixed precision, schedule."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..bundle import ModelBundle
    from .config import TrainConfig


def load_resume(cfg: "TrainConfig", device: "torch.device") -> tuple["ModelBundle | None", dict[str, Any], str | None]:
    """(the checkpoint's bundle, its training summary, a note) for ``cfg.resume``; (None, {}, None) without.

    A model trained elsewhere (no recipe in its summary) is fine-tuned, counting epochs from 0.
    """
    if not cfg.resume:
        return None, {}, None
    from ..bundle import load_model

    resumed = load_model(cfg.resume, device=device)
    prev = dict(resumed.config.training or {})
    if prev.get("recipe"):
        return resumed, prev, f"resumed from {Path(cfg.resume).name} after epoch {prev.get('epochs_done', 0)}"
    return resumed, {}, f"starting from the weights in {Path(cfg.resume).name}"


def build_bundle(cfg: "TrainConfig", classes: list[str], device: "torch.device") -> tuple["ModelBundle", str]:
    """A new model for ``classes`` (ImageNet initialisation when asked for and available), and a note."""
    from ..bundle import build_model
    from ..models import canonical_name, pretrained_weights_file

    arch = canonical_name(cfg.arch)
    pretrained: bool | str = cfg.pretrained
    if isinstance(pretrained, str) and pretrained.lower() in ("auto", "true", "false", "none", ""):
        if pretrained.lower() == "auto":
            weights = pretrained_weights_file(arch)
            pretrained = weights is not None and weights.is_file()
        else:
            pretrained = pretrained.lower() == "true"
    bundle = build_model(arch, classes, cfg.in_channels, cfg.input_size(arch), pretrained=pretrained,
                         device=device)
    return bundle, ("ImageNet initialisation" if pretrained else "trained from scratch")


def make_optimizer(cfg: "TrainConfig", params) -> "torch.optim.Optimizer":
    """AdamW, Adam or SGD (Nesterov momentum) at ``cfg.lr`` with ``cfg.weight_decay``."""
    import torch

    name = cfg.optimizer.lower()
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.momentum > 0)


@dataclass
class Optimisation:
    """The optimizer, the AMP loss scaler and the autocast context of a run."""

    optimizer: "torch.optim.Optimizer"
    scaler: "torch.amp.GradScaler"
    device: "torch.device"
    amp_dtype: "torch.dtype | None"  # None: full precision

    def autocast(self):
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def state(self, global_step: int) -> dict[str, Any]:
        """What the optimizer sidecar holds."""
        st = {"optimizer": self.optimizer.state_dict(), "global_step": global_step}
        if self.scaler.is_enabled():
            st["scaler"] = self.scaler.state_dict()
        return st

    def restore(self, state: dict[str, Any], cfg: "TrainConfig", model) -> str:
        """Load a sidecar's state; a state that does not fit restarts the optimizer.  Returns a note."""
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if "scaler" in state and self.scaler.is_enabled():
                self.scaler.load_state_dict(state["scaler"])
            return "optimizer state restored"
        except (ValueError, KeyError, RuntimeError):
            self.optimizer = make_optimizer(cfg, model.parameters())
            return "optimizer restarted (its saved state did not fit)"


def make_optimisation(cfg: "TrainConfig", model, device: "torch.device") -> Optimisation:
    """Optimizer and mixed precision (CUDA only: bfloat16 where supported, else float16 with loss scaling)."""
    import torch

    use_amp = bool(cfg.amp) and device.type == "cuda"
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return Optimisation(make_optimizer(cfg, model.parameters()), scaler, device, amp_dtype)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier at optimisation step ``step`` (0-based) of ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)  # step


def set_trunk_frozen(model, head: str, frozen: bool) -> None:
    """Freeze (or unfreeze) every parameter outside the head module ``head``."""
    for name, p in model.named_parameters():
        if not (name == head or name.startswith(head + ".")):
            p.requires_grad_(not frozen)
