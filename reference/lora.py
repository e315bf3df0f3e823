"""LoRA: low-rank adaptation of a frozen linear layer.

Notation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", §4.1;
code names as in peft's ``tuners/lora/layer.py``):

    W₀       base.weight, (out_features, in_features), frozen
    A        lora_A, (r, in_features), Kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in)
    B        lora_B, (out_features, r), zeros, so the fresh adapter leaves the layer unchanged
    s        scaling = alpha / r
    h        base(x) + s · dropout(x) Aᵀ Bᵀ                         (eq. 3, with peft's dropout)
    merged   W₀ + s · B A: the same forward at the cost of the base layer alone

The update s·BA has rank ≤ r: training moves r·(in + out) numbers instead of
in·out. Because B starts at zero, the first gradient reaches B only
(∂L/∂A = s·Bᵀ(∂L/∂h)ᵀx = 0), and s = α/r keeps the size of the update roughly
independent of r, so α need not be retuned when r changes (§4.1).

Agreement with peft (``LoraLayer`` with ``lora_dropout = 0``, ``use_rslora=False``):
same initialisation law, same forward, same merged weight (tests/reference/test_lora.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LoRALinear", "inject_lora", "lora_state_dict", "load_lora_state_dict"]


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: base(x) + (α/r)·dropout(x) Aᵀ Bᵀ.

    Args:
        base: the layer to adapt; its parameters are frozen (``requires_grad = False``).
        r: the rank of the update, ≥ 1.
        alpha: the update is scaled by ``alpha / r``.
        dropout: dropout probability applied to the adapter's input only (the base sees x).

    Attributes:
        lora_A: ``(r, in_features)``, Kaiming-uniform with a = √5 (bound 1/√in_features).
        lora_B: ``(out_features, r)``, zeros.
        scaling: ``alpha / r``.
        merged: whether s·BA is currently folded into ``base.weight``.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"the rank r must be at least 1, got {r}")
        self.base = base
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        for p in self.base.parameters():
            p.requires_grad_(False)
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's and nn.Linear's default init
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """s · B A, ``(out_features, in_features)``: what merging adds to the base weight."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        # (..., in) → (..., r) → (..., out)
        return out + self.scaling * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold s·BA into the base weight: inference then costs one matmul (a no-op when merged)."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take s·BA out of the base weight again (a no-op when not merged)."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False


def inject_lora(model: nn.Module, target_modules, r: int, alpha: float = 1.0) -> list[str]:
    """Replace every ``nn.Linear`` whose qualified name ends with a target by a :class:`LoRALinear`.

    A name ``"blocks.0.attn.to_q"`` matches the target ``"to_q"`` or ``"attn.to_q"`` (the
    whole last components, as peft matches ``target_modules``), not ``"q"``. Every
    parameter of the model that is not a LoRA parameter is frozen.

    Args:
        model: the network, modified in place.
        target_modules: names (or dotted name suffixes) of the layers to adapt.
        r, alpha: passed to every :class:`LoRALinear`.

    Returns:
        the qualified names of the replaced layers, sorted.
    """
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = [name for name, module in model.named_modules()
              if type(module) is nn.Linear and any(name == t or name.endswith("." + t) for t in targets)]
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha))
    return sorted(chosen)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA parameters of ``model`` (keys containing ``lora_``): what a fine-tune ships."""
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load LoRA parameters saved by :func:`lora_state_dict` into a model with the same adapters."""
    expected = set(lora_state_dict(model))
    unknown = sorted(set(state) - expected)
    if unknown:
        raise KeyError(f"not LoRA parameters of this model: {unknown}")
    missing = sorted(expected - set(state))
    if missing:
        raise KeyError(f"LoRA parameters missing from the state dict: {missing}")
    model.load_state_dict(state, strict=False)
