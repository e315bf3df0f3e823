"""Does reference.lora do what LoRA is (Hu et al. 2021), and what peft's LoRA layer does?"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reference import lora as ref

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)

layer_cases = st.fixed_dictionaries({
    "in_features": st.integers(1, 9),
    "out_features": st.integers(1, 9),
    "r": st.integers(1, 6),
    "alpha": st.sampled_from([1.0, 0.5, 8.0, 16.0]),
    "batch": st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    "dtype": st.sampled_from([torch.float32, torch.float64]),
    "seed": st.integers(0, 2**16),
})


def _layer(case: dict) -> tuple[ref.LoRALinear, torch.Tensor, torch.Generator]:
    g = torch.Generator().manual_seed(case["seed"])
    torch.manual_seed(case["seed"])
    base = nn.Linear(case["in_features"], case["out_features"]).to(case["dtype"])
    layer = ref.LoRALinear(base, case["r"], case["alpha"])
    x = torch.randn(*case["batch"], case["in_features"], generator=g, dtype=torch.float64).to(case["dtype"])
    return layer, x, g


def _randomise(layer: ref.LoRALinear, g: torch.Generator) -> None:
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g, dtype=torch.float64))
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g, dtype=torch.float64))


@SETTINGS
@given(layer_cases)
def test_a_fresh_adapter_leaves_the_output_unchanged(case):
    """B = 0 at initialisation, so LoRALinear(base)(x) is base(x) exactly, for any shapes and α."""
    layer, x, _ = _layer(case)
    assert torch.equal(layer.lora_B, torch.zeros_like(layer.lora_B))
    assert layer.lora_A.shape == (case["r"], case["in_features"])
    assert layer.lora_B.shape == (case["out_features"], case["r"])
    assert layer.scaling == case["alpha"] / case["r"]
    assert torch.equal(layer(x), layer.base(x))


def test_lora_A_is_uniform_on_the_kaiming_bound():
    """kaiming_uniform_(a=√5) is U(−1/√in, 1/√in): every entry inside, and the DKW bound on the CDF.

    32,768 draws; the Dvoretzky–Kiefer–Wolfowitz inequality (Massart's constant) bounds
    P(sup|F_n − F| > ε) ≤ 2·exp(−2nε²): ε = √(ln(2/1e-6)/(2n)) = 0.0149 fails a
    correct initialisation with probability ≤ 1e-6 (the seed is fixed, so this is stable).
    """
    torch.manual_seed(0)
    fan_in = 48
    u = torch.cat([ref.LoRALinear(nn.Linear(fan_in, 4), 8).lora_A.detach().flatten() for _ in range(86)])
    u = (u.double() * math.sqrt(fan_in)).sort().values  # U(−1, 1) when right
    assert u.abs().max() <= 1
    n = u.numel()
    cdf = (u + 1) / 2
    k = torch.arange(1, n + 1, dtype=torch.float64)
    distance = torch.maximum((k / n - cdf).max(), (cdf - (k - 1) / n).max()).item()
    assert distance <= math.sqrt(math.log(2 / 1e-6) / (2 * n)), distance


def test_only_the_adapter_requires_and_receives_gradients():
    torch.manual_seed(1)
    layer = ref.LoRALinear(nn.Linear(5, 3), r=2, alpha=4.0)
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B"}
    layer(torch.randn(7, 5)).square().sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0
    # With B = 0 the first gradient of A is exactly zero: ∂L/∂A = s·Bᵀ(∂L/∂h)ᵀ x.
    assert torch.equal(layer.lora_A.grad, torch.zeros_like(layer.lora_A))


@SETTINGS
@given(layer_cases)
def test_merged_equals_unmerged_and_unmerge_restores_the_base_weight(case):
    """The forward is the same merged or not; unmerge gives back W₀ up to round-off of W₀ ± sBA."""
    layer, x, g = _layer(case)
    _randomise(layer, g)
    w0 = layer.base.weight.detach().clone()
    expected = layer.base(x) + layer.scaling * x @ layer.lora_A.T @ layer.lora_B.T
    unmerged = layer(x)
    layer.merge()
    merged = layer(x)
    layer.merge()  # idempotent
    assert torch.allclose(layer(x), merged)
    layer.unmerge()
    # float32: |sBA| ≲ α·r·25 for N(0,1) factors; adding and subtracting it loses ≈ u·|sBA| per entry.
    tol = 1e-4 if case["dtype"] == torch.float32 else 1e-10
    scale = 1 + layer.delta_weight().abs().max().item()
    assert torch.allclose(unmerged, expected, rtol=tol, atol=tol * scale)
    assert torch.allclose(merged, expected, rtol=tol, atol=tol * scale * (1 + x.abs().sum(-1).max().item() if x.numel() else 1))
    assert torch.allclose(layer.base.weight, w0, rtol=0, atol=tol * scale)


def test_dropout_acts_on_the_adapters_input_only():
    """In training mode out − base(x) = s·(m ⊙ x / (1 − p)) Aᵀ Bᵀ with one mask m; base(x) is untouched."""
    torch.manual_seed(2)
    layer = ref.LoRALinear(nn.Linear(6, 4), r=3, alpha=3.0, dropout=0.5)
    _randomise(layer, torch.Generator().manual_seed(0))
    x = torch.randn(200, 6, dtype=torch.float32)
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    mask = layer.dropout(torch.ones_like(x))  # the same draw: 0 or 1/(1 − p)
    expected = layer.base(x) + layer.scaling * (mask * x) @ layer.lora_A.T @ layer.lora_B.T
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, layer.base(x) + layer.scaling * x @ layer.lora_A.T @ layer.lora_B.T)
    layer.eval()
    assert torch.allclose(layer(x), layer.base(x) + layer.scaling * x @ layer.lora_A.T @ layer.lora_B.T, atol=1e-5)


@pytest.mark.slow  # torch.optim's first use imports torch._dynamo (seconds)
def test_training_on_a_low_rank_target_lowers_the_loss_and_keeps_the_base_bit_identical():
    """Fit y = (W₀ + ΔW)x with ΔW of rank 2 by Adam on A and B only."""
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    base = nn.Linear(8, 6)
    w0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
    delta = torch.randn(6, 2, generator=g) @ torch.randn(2, 8, generator=g)
    x = torch.randn(256, 8, generator=g)
    y = base(x).detach() + x @ delta.T
    layer = ref.LoRALinear(base, r=2, alpha=2.0)
    optimiser = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        loss = (layer(x) - y).square().mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])
    assert torch.equal(base.weight, w0) and torch.equal(base.bias, b0)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q = nn.Linear(4, 4)
        self.to_qk = nn.Linear(4, 4)       # similar name: must not match "to_q"
        self.norm = nn.LayerNorm(4)
        self.mlp = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.to_q_out = nn.Linear(4, 2)   # starts with the target but does not end with it

    def forward(self, x):
        for block in self.blocks:
            x = block.mlp(block.norm(block.to_q(x) + block.to_qk(x)))
        return self.to_q_out(x)


def test_inject_lora_replaces_exactly_the_targets_sorted_and_freezes_the_rest():
    torch.manual_seed(5)
    model = Net()
    names = ref.inject_lora(model, ["to_q", "mlp.2"], r=2, alpha=4.0)
    assert names == ["blocks.0.mlp.2", "blocks.0.to_q", "blocks.1.mlp.2", "blocks.1.to_q"]
    for name in names:
        assert isinstance(model.get_submodule(name), ref.LoRALinear)
    assert type(model.blocks[0].to_qk) is nn.Linear and type(model.to_q_out) is nn.Linear
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"{n}.lora_{m}" for n in names for m in "AB")


def test_the_state_dict_holds_only_lora_tensors_and_loads_back():
    torch.manual_seed(6)
    model = Net()
    ref.inject_lora(model, ["to_q"], r=3)
    for layer in (model.blocks[0].to_q, model.blocks[1].to_q):
        _randomise(layer, torch.Generator().manual_seed(7))
    state = ref.lora_state_dict(model)
    assert sorted(state) == sorted(f"blocks.{i}.to_q.lora_{m}" for i in (0, 1) for m in "AB")
    torch.manual_seed(6)
    fresh = Net()  # the same base weights, fresh adapters
    ref.inject_lora(fresh, ["to_q"], r=3)
    x = torch.randn(5, 4)
    assert not torch.allclose(fresh(x), model(x))
    ref.load_lora_state_dict(fresh, state)
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(KeyError):
        ref.load_lora_state_dict(fresh, {"blocks.0.to_q.base.weight": torch.zeros(4, 4)})


@pytest.mark.slow  # importing peft (and transformers) takes seconds
@pytest.mark.parametrize("r, alpha", [(1, 1.0), (4, 8.0), (3, 0.5)])
def test_agrees_with_peft_lora_linear(r, alpha):
    """peft's lora.Linear with the same W₀, A, B, α and r: the same forward, delta weight and merge."""
    peft = pytest.importorskip("peft")
    from peft.tuners import lora as peft_lora
    g = torch.Generator().manual_seed(r)
    base = nn.Linear(7, 5).double()
    theirs_base = nn.Linear(7, 5).double()
    theirs_base.load_state_dict(base.state_dict())
    ours = ref.LoRALinear(base, r, alpha)
    theirs = peft_lora.Linear(theirs_base, "default", peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0),
                              r=r, lora_alpha=alpha)
    assert torch.equal(theirs.lora_B["default"].weight, torch.zeros(5, r, dtype=torch.float64))
    bound = 1 / math.sqrt(7)  # both initialise A with kaiming_uniform_(a=√5)
    assert theirs.lora_A["default"].weight.abs().max() <= bound and ours.lora_A.abs().max() <= bound
    _randomise(ours, g)
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(ours.lora_A)
        theirs.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(3, 2, 7, generator=g, dtype=torch.float64)
    assert theirs.scaling["default"] == ours.scaling
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.delta_weight(), theirs.get_delta_weight("default"), rtol=1e-12, atol=1e-12)
    ours.merge()
    theirs.merge()
    torch.testing.assert_close(ours.base.weight, theirs.base_layer.weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


def test_is_device_agnostic_on_the_meta_device():
    """Parameters follow the base layer's device and dtype: a meta base gives meta adapters."""
    base = nn.Linear(3, 2, device="meta", dtype=torch.float64)
    layer = ref.LoRALinear(base, 2)
    assert layer.lora_A.device.type == "meta" and layer.lora_B.dtype == torch.float64
    out = layer(torch.empty(4, 3, device="meta", dtype=torch.float64))
    assert out.device.type == "meta" and out.shape == (4, 2)
