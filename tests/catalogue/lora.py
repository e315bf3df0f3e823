"""lora: realistic bugs and correct alternatives."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reference import lora as ref
from tests.catalogue import Alternative, Bug

CORRECT = {name: getattr(ref, name) for name in ref.__all__}


class _Lora(ref.LoRALinear):
    """The reference with one step changed by each bug below (the way students write it)."""


# -- LoRALinear bugs ----------------------------------------------------------------------------


class RandomB(_Lora):
    def __init__(self, base, r, alpha=1.0, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))  # "both factors get the usual init"


class GaussianA(_Lora):
    def __init__(self, base, r, alpha=1.0, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        with torch.no_grad():
            self.lora_A.normal_(0, 1 / math.sqrt(base.in_features))  # right variance scale, wrong law


class KaimingDefaultA(_Lora):
    def __init__(self, base, r, alpha=1.0, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        nn.init.kaiming_uniform_(self.lora_A)  # a = 0: bound √6/√in, not 1/√in


class ScalingAlpha(_Lora):
    def __init__(self, base, r, alpha=1.0, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        self.scaling = alpha  # forgot the / r


class ScalingROverAlpha(_Lora):
    def __init__(self, base, r, alpha=1.0, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        self.scaling = r / alpha


class BaseNotFrozen(_Lora):
    def __init__(self, base, r, alpha=1.0, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        for p in self.base.parameters():
            p.requires_grad_(True)  # "the optimizer only gets the LoRA parameters anyway"


class MergeKeepsAdding(_Lora):
    """merge() folds the update in but forward still adds it."""

    @torch.no_grad()
    def merge(self):
        self.base.weight += self.delta_weight()


class UnmergeAddsAgain(_Lora):
    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base.weight += self.delta_weight()  # sign slip
            self.merged = False


class MergeUnscaled(_Lora):
    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.base.weight += self.lora_B @ self.lora_A  # forgot the scaling
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base.weight -= self.lora_B @ self.lora_A
            self.merged = False


class DropoutOnOutput(_Lora):
    def forward(self, x):
        out = self.base(x)
        if self.merged:
            return out
        return out + self.dropout(self.scaling * (x @ self.lora_A.T @ self.lora_B.T))


class DropoutOnBoth(_Lora):
    def forward(self, x):
        x = self.dropout(x)  # the base sees the dropped input too
        out = self.base(x)
        if self.merged:
            return out
        return out + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)


class DetachedA(_Lora):
    def forward(self, x):
        out = self.base(x)
        if self.merged:
            return out
        return out + self.scaling * (self.dropout(x) @ self.lora_A.detach().T @ self.lora_B.T)


class TransposedA(nn.Module):
    """lora_A stored (in, r) so that x @ A needs no transpose: its Kaiming fan-in is then r."""

    def __init__(self, base, r, alpha=1.0, dropout=0.0):
        super().__init__()
        self.base, self.scaling, self.merged = base, alpha / r, False
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(base.in_features, r, dtype=base.weight.dtype, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x):
        return self.base(x) + self.scaling * (self.dropout(x) @ self.lora_A @ self.lora_B.T)


# -- inject_lora, state dict bugs ---------------------------------------------------------------


def _replace(model, name, r, alpha):
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, ref.LoRALinear(getattr(parent, child), r, alpha))


def inject_substring(model, target_modules, r, alpha=1.0):
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(t in n for t in target_modules)]
    for n in names:
        _replace(model, n, r, alpha)
    return sorted(names)


def inject_top_level_only(model, target_modules, r, alpha=1.0):
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_children() if isinstance(m, nn.Linear) and any(n.endswith(t) for t in target_modules)]
    for n in names:
        _replace(model, n, r, alpha)
    return sorted(names)


def inject_no_freeze(model, target_modules, r, alpha=1.0):
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear
             and any(n == t or n.endswith("." + t) for t in target_modules)]
    for n in names:
        _replace(model, n, r, alpha)  # only the wrapped layers' base weights get frozen
    return sorted(names)


def inject_unsorted(model, target_modules, r, alpha=1.0):
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear
             and any(n == t or n.endswith("." + t) for t in target_modules)]
    for n in names:
        _replace(model, n, r, alpha)
    return names[::-1]  # the order they were replaced in, deepest-last walk undone


def inject_new_layers(model, target_modules, r, alpha=1.0):
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear
             and any(n == t or n.endswith("." + t) for t in target_modules)]
    for n in names:
        parent_name, _, child = n.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)  # a fresh layer of the same shape: the pretrained weights are lost
        setattr(parent, child, ref.LoRALinear(nn.Linear(old.in_features, old.out_features), r, alpha))
    return sorted(names)


def state_dict_everything(model):
    return dict(model.state_dict())


def state_dict_only_A(model):
    return {k: v for k, v in model.state_dict().items() if "lora_A" in k}


def load_strict(model, state):
    model.load_state_dict(state)  # strict: the base weights are "missing"


def load_only_A(model, state):
    model.load_state_dict({k: v for k, v in state.items() if "lora_A" in k}, strict=False)


BUGS = [
    Bug("lora_B random", "LoRALinear", RandomB, "B gets a random init like A, so the fresh adapter changes the output"),
    Bug("lora_A Gaussian", "LoRALinear", GaussianA, "A drawn N(0, 1/in) instead of U(−1/√in, 1/√in)"),
    Bug("kaiming a = 0", "LoRALinear", KaimingDefaultA, "kaiming_uniform_ without a = √5: bound √6/√in"),
    Bug("scaling α", "LoRALinear", ScalingAlpha, "the update scaled by α instead of α/r"),
    Bug("scaling r/α", "LoRALinear", ScalingROverAlpha, "the update scaled by r/α"),
    Bug("base trainable", "LoRALinear", BaseNotFrozen, "the base weights are not frozen"),
    Bug("merge without flag", "LoRALinear", MergeKeepsAdding, "merge() folds BA in, forward still adds it"),
    Bug("unmerge adds", "LoRALinear", UnmergeAddsAgain, "unmerge() adds the update a second time"),
    Bug("merge unscaled", "LoRALinear", MergeUnscaled, "merge() folds B A without the scaling"),
    Bug("dropout on output", "LoRALinear", DropoutOnOutput, "dropout on the adapter's output, not its input"),
    Bug("dropout on both", "LoRALinear", DropoutOnBoth, "dropout applied to x before the base layer too"),
    Bug("A detached", "LoRALinear", DetachedA, "lora_A detached in forward: it never trains"),
    Bug("A transposed", "LoRALinear", TransposedA, "lora_A stored (in, r), so its Kaiming fan-in is r"),
    Bug("substring match", "inject_lora", inject_substring, "a target matches anywhere in the name (to_q in to_qk)"),
    Bug("top level only", "inject_lora", inject_top_level_only, "named_children: nested layers are missed"),
    Bug("no freeze", "inject_lora", inject_no_freeze, "the rest of the model is left trainable"),
    Bug("unsorted names", "inject_lora", inject_unsorted, "the names come back unsorted"),
    Bug("new layers", "inject_lora", inject_new_layers, "wraps a fresh nn.Linear, losing the pretrained weights"),
    Bug("whole state dict", "lora_state_dict", state_dict_everything, "returns the base weights too"),
    Bug("only lora_A", "lora_state_dict", state_dict_only_A, "keeps only the lora_A tensors"),
    Bug("strict load", "load_lora_state_dict", load_strict, "load_state_dict(strict=True) fails on the base keys"),
    Bug("loads only A", "load_lora_state_dict", load_only_A, "loads only the lora_A tensors"),
]


# -- correct alternatives -----------------------------------------------------------------------


class FunctionalLinear(ref.LoRALinear):
    """F.linear for the update, grouped as x (s·BA)ᵀ."""

    def forward(self, x):
        out = self.base(x)
        if self.merged:
            return out
        return out + F.linear(self.dropout(x), self.scaling * (self.lora_B @ self.lora_A))


class LinearSubLayers(nn.Module):
    """peft's layout: lora_A and lora_B are bias-free nn.Linear sub-layers (nn.Linear's init is kaiming a = √5)."""

    def __init__(self, base, r, alpha=1.0, dropout=0.0):
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        kw = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Linear(base.in_features, r, bias=False, **kw)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, **kw)
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r
        self.lora_dropout = nn.Dropout(p=dropout)
        self._merged = False

    def forward(self, x):
        result = self.base(x)
        if not self._merged:
            result = result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
        return result

    def merge(self):
        if not self._merged:
            self.base.weight.data += (self.lora_B.weight @ self.lora_A.weight) * self.scaling
            self._merged = True

    def unmerge(self):
        if self._merged:
            self.base.weight.data -= (self.lora_B.weight @ self.lora_A.weight) * self.scaling
            self._merged = False


def inject_walk(model, target_modules, r, alpha=1.0):
    """Recursion by hand; replace first, then freeze whatever is not a LoRA parameter."""
    replaced = []

    def walk(module, prefix):
        for child_name, child in list(module.named_children()):
            name = f"{prefix}{child_name}"
            if type(child) is nn.Linear and any(name.split(".")[-len(t.split(".")):] == t.split(".")
                                                for t in target_modules):
                setattr(module, child_name, ref.LoRALinear(child, r, alpha))
                replaced.append(name)
            else:
                walk(child, name + ".")

    walk(model, "")
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return sorted(replaced)


def state_dict_trainable(model):
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_by_copy(model, state):
    with torch.no_grad():
        for name, value in state.items():
            model.get_parameter(name).copy_(value)


ALTERNATIVES = [
    Alternative("F.linear", "LoRALinear", FunctionalLinear, "F.linear with the merged delta s·BA"),
    Alternative("nn.Linear sub-layers", "LoRALinear", LinearSubLayers, "lora_A and lora_B as nn.Linear, as peft does"),
    Alternative("walk and freeze after", "inject_lora", inject_walk, "hand recursion, freezing after replacing"),
    Alternative("trainable parameters", "lora_state_dict", state_dict_trainable, "the parameters that require grad"),
    Alternative("copy each", "load_lora_state_dict", load_by_copy, "get_parameter(name).copy_(value)"),
]
