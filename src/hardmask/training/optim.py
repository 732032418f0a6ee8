"""Optimiser parameter groups (method.md §3.1) and the optimiser.

Groups are decided on each parameter's role (``hardmask.models.backbone.ParamRole``), not on name substrings:

| role             | lr                          | weight decay                         |
|------------------|-----------------------------|--------------------------------------|
| stage1_backbone  | lr                          | wd on matrices, 0 on norms/biases    |
| stage1_tokens    | lr                          | 0 (cls/register tokens, pos-embed)   |
| prototypes       | lr * finer_lr_factor        | 0                                    |
| modulation       | lr * modulation_lr_factor   | 0                                    |
| stage1_head      | lr * scratch_lr_factor      | wd                                   |
| stage2_backbone  | lr * stage2_lr_factor       | wd on matrices, 0 on norms/biases    |
| stage2_tokens    | lr * stage2_lr_factor       | 0                                    |
| stage2_head      | lr * scratch_lr_factor      | wd on the head, 0 on fc_norm         |

``lr`` is ``optim.lr * sqrt(effective_batch / optim.reference_batch_size)`` when ``optim.sqrt_batch_scaling``
(the paper's square-root rule, applied here explicitly and reported), with effective batch = per-rank batch x
world size x gradient-accumulation steps (images per optimiser update). ``wd`` is the normalised weight decay
of the reference, ``optim.weight_decay * sqrt(1 / (updates_per_epoch * epochs))``, or ``optim.weight_decay``
when not normalised. Frozen parameters (``requires_grad=False``, see ``models.registry.apply_freezing``) are
left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from hardmask.config import Config

# role -> (group name, OptimSection lr-factor field or None for 1, weight decay on matrices)
ROLE_RULES: dict[str, tuple[str, str | None, bool]] = {
    "stage1_backbone": ("stage1_backbone", None, True),
    "stage1_tokens": ("stage1_tokens", None, False),
    "prototypes": ("prototypes", "finer_lr_factor", False),
    "modulation": ("modulation", "modulation_lr_factor", False),
    "stage1_head": ("stage1_head", "scratch_lr_factor", True),
    "stage2_backbone": ("stage2_backbone", "stage2_lr_factor", True),
    "stage2_tokens": ("stage2_tokens", "stage2_lr_factor", False),
    "stage2_head": ("stage2_head", "scratch_lr_factor", True),
}


@dataclass(frozen=True)
class ParamGroup:
    name: str
    params: tuple[nn.Parameter, ...]
    lr: float
    lr_factor: float
    weight_decay: float

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


@dataclass(frozen=True)
class ParamGroups:
    groups: tuple[ParamGroup, ...]
    variant: str
    base_lr: float  # optim.lr, given for reference_batch
    lr_scale: float  # sqrt(effective_batch / reference_batch), or 1 without scaling
    lr: float  # base_lr * lr_scale: the lr of factor-1 groups
    effective_batch: int
    reference_batch: int
    weight_decay: float  # the value applied to decayed groups (normalised if configured)
    frozen_numel: int  # parameters (elements) left out because they are frozen

    @property
    def scaling_note(self) -> str:
        return (
            f"lr {self.base_lr:.3g} x sqrt({self.effective_batch}/{self.reference_batch}) = {self.lr:.4g}"
            if self.lr_scale != 1.0
            else f"lr {self.lr:.4g} (no batch scaling)"
        )

    def summary(self) -> dict[str, float | int | str]:
        """Flat, loggable description (MLflow params)."""
        out: dict[str, float | int | str] = {
            "variant": self.variant,
            "base_lr": self.base_lr,
            "lr_scale": self.lr_scale,
            "lr": self.lr,
            "effective_batch": self.effective_batch,
            "weight_decay_applied": self.weight_decay,
            "frozen_params": self.frozen_numel,
        }
        for group in self.groups:
            out[f"group/{group.name}/lr"] = group.lr
            out[f"group/{group.name}/weight_decay"] = group.weight_decay
            out[f"group/{group.name}/params"] = group.numel
        return out

    def torch_groups(self) -> list[dict]:
        """Parameter groups for a ``torch.optim`` optimiser (names kept for logging and schedules)."""
        return [
            {
                "params": list(g.params),
                "lr": g.lr,
                "weight_decay": g.weight_decay,
                "name": g.name,
                "lr_factor": g.lr_factor,
            }
            for g in self.groups
        ]


def build_param_groups(
    model: nn.Module, variant: str, cfg: Config, steps_per_epoch: int, world_size: int = 1
) -> ParamGroups:
    """Groups of ``model``'s trainable parameters; ``steps_per_epoch`` counts optimiser updates per epoch."""
    if steps_per_epoch < 1:
        raise ValueError(f"build_param_groups: steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if world_size < 1:
        raise ValueError(f"build_param_groups: world_size must be >= 1, got {world_size}")
    optim = cfg.optim
    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    roles = module.parameter_roles()

    effective_batch = cfg.data.loader.batch_size * world_size * optim.grad_accumulation
    lr_scale = math.sqrt(effective_batch / optim.reference_batch_size) if optim.sqrt_batch_scaling else 1.0
    lr = optim.lr * lr_scale
    weight_decay = optim.weight_decay
    if optim.normalized_weight_decay:
        weight_decay *= math.sqrt(1.0 / (steps_per_epoch * optim.epochs))

    members: dict[str, list[nn.Parameter]] = {}
    settings: dict[str, tuple[float, float]] = {}  # group -> (lr factor, weight decay)
    frozen_numel = 0
    for name, param in module.named_parameters():
        if not param.requires_grad:
            frozen_numel += param.numel()
            continue
        role = roles.get(name)
        if role not in ROLE_RULES:
            raise ValueError(f"build_param_groups: parameter {name!r} has no known role ({role!r})")
        group, factor_field, decays = ROLE_RULES[role]
        factor = getattr(optim, factor_field) if factor_field else 1.0
        decayed = decays and param.ndim > 1  # norms, biases, layer scales: never decayed
        if not decayed and decays:
            group += "_no_wd"
        members.setdefault(group, []).append(param)
        settings[group] = (factor, weight_decay if decayed else 0.0)

    if not members:
        raise ValueError(
            f"build_param_groups: {variant} has no trainable parameter (check the model.freeze_* flags)"
        )
    groups = tuple(
        ParamGroup(
            name=g,
            params=tuple(ps),
            lr=lr * settings[g][0],
            lr_factor=settings[g][0],
            weight_decay=settings[g][1],
        )
        for g, ps in members.items()
    )
    return ParamGroups(
        groups=groups,
        variant=variant,
        base_lr=optim.lr,
        lr_scale=lr_scale,
        lr=lr,
        effective_batch=effective_batch,
        reference_batch=optim.reference_batch_size,
        weight_decay=weight_decay,
        frozen_numel=frozen_numel,
    )


def build_optimizer(groups: ParamGroups, cfg: Config) -> torch.optim.Optimizer:
    """``optim.optimizer`` over ``groups``; the fused CUDA kernels when every parameter is on a GPU."""
    optim = cfg.optim
    params = [p for g in groups.groups for p in g.params]
    fused = all(p.is_cuda and p.is_floating_point() for p in params)
    torch_groups = groups.torch_groups()
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(torch_groups, lr=groups.lr, betas=optim.betas, fused=fused or None)
    if optim.optimizer == "adam":  # weight decay as L2 in the gradient (Adam's semantics)
        return torch.optim.Adam(torch_groups, lr=groups.lr, betas=optim.betas, fused=fused or None)
    return torch.optim.SGD(torch_groups, lr=groups.lr, momentum=0.9)
