"""Models and other non-data arguments, built in the student's process from specs.

The graded samplers call a model (``eps_model(x, t)``, ``score_fn(x, sigma)``);
the grader passes the analytic optimum of a toy problem, whose law it knows
exactly. The toy problems are :mod:`reference.toy`: in the student's kernel that
file is loaded under a private name before the guard is installed, so the
submission never gets the ``reference`` package itself (:func:`preload`).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any, Callable

import torch

from grader.sandbox.wire import SPEC

__all__ = ["FACTORIES", "ModelLog", "build", "preload"]

_TOY_ALIAS = "_grader_toy"


def preload() -> Any:
    """Load the analytic toy problems without importing the ``reference`` package."""
    if _TOY_ALIAS in sys.modules:
        return sys.modules[_TOY_ALIAS]
    if "reference.toy" in sys.modules:  # the grader's own process
        return sys.modules["reference.toy"]
    package = importlib.util.find_spec("reference")
    if package is None or not package.submodule_search_locations:
        raise ImportError("the grader's `reference` package is not installed")
    location = list(package.submodule_search_locations)[0] + "/toy.py"
    spec = importlib.util.spec_from_file_location(_TOY_ALIAS, location)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_TOY_ALIAS] = module
    spec.loader.exec_module(module)
    return module


class ModelLog:
    """Records what a model was called with: the timestep / noise level and the batch size."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def wrap(self, model: Callable) -> Callable:
        def recorded(x, level=None, *rest, **named):
            entry = {"batch": int(x.shape[0]) if hasattr(x, "shape") and len(x.shape) else -1}
            if isinstance(level, torch.Tensor):
                entry["level"] = _host_copy(level)
            elif level is not None:
                entry["level"] = torch.as_tensor(level).detach().cpu()
            cond = rest[0] if rest else named.get("cond")
            if isinstance(cond, torch.Tensor):  # a conditional model: which condition each row got, in order
                entry["cond"] = _host_copy(cond)
            self.calls.append(entry)
            return model(x, level, *rest, **named) if level is not None else model(x)

        return recorded


def _host_copy(value: torch.Tensor) -> torch.Tensor:
    """A CPU copy of a logged tensor; on the meta device (no data) an empty one of its shape and dtype."""
    if value.device.type == "meta":
        return torch.empty(value.shape, dtype=value.dtype)
    return value.detach().to("cpu", copy=True)


def _same_device(model: Callable) -> Callable:
    """Refuse arguments on different devices, as a network on a GPU would (the toys index leniently)."""

    def checked(x, t, cond):
        devices = {a.device.type for a in (x, t, cond) if isinstance(a, torch.Tensor)}
        if len(devices) > 1:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found x on {x.device}, "
                               f"t on {getattr(t, 'device', '?')} and cond on {getattr(cond, 'device', '?')}")
        return model(x, t, cond)

    return checked


def _gaussian(params: dict) -> Any:
    return preload().GaussianData(params["mean"], params["var"])


def _mixture(params: dict) -> Any:
    return preload().GaussianMixture(params["weights"], params["means"], params["vars"])


def _fixed_level_score(data: Any, level: Any) -> Callable:
    """The score of the data noised at one fixed VE level σ (σ = 0: the data's own score)."""

    def score_fn(x: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(level, dtype=x.dtype, device=x.device)
        return data.score(x, torch.ones((), dtype=x.dtype, device=x.device), sigma**2)

    return score_fn


FACTORIES: dict[str, Callable[[dict], Callable]] = {
    # eps_model(x, t): the optimal ε-prediction for the VP process with the given ᾱ.
    "gaussian_eps": lambda p: _gaussian(p).eps_model(p["alphas_cumprod"]),
    "mixture_eps": lambda p: _mixture(p).eps_model(p["alphas_cumprod"]),
    # score_fn(x, sigma): the exact score of the data convolved with N(0, σ²).
    "gaussian_score_ve": lambda p: _gaussian(p).score_fn(),
    "mixture_score_ve": lambda p: _mixture(p).score_fn(),
    # score_fn(x, t): the exact score of the continuous VP SDE's marginal at float times t (B,) (sde); "scale" λ
    # gives the member λ·s* of a family of scores (dsm_loss's minimum).
    "gaussian_score_vp": lambda p: _gaussian(p).vp_score_fn(p.get("beta_min", 0.1), p.get("beta_max", 20.0),
                                                            p.get("scale", 1.0)),
    "mixture_score_vp": lambda p: _mixture(p).vp_score_fn(p.get("beta_min", 0.1), p.get("beta_max", 20.0)),
    # score_fn(x): the score of the data itself (or at one fixed VE level).
    "gaussian_score": lambda p: _fixed_level_score(_gaussian(p), p.get("sigma", 0.0)),
    "mixture_score": lambda p: _fixed_level_score(_mixture(p), p.get("sigma", 0.0)),
    # eps_model(x, t, cond): the optimal ε of class-conditional Gaussians, cond the (B,) labels (cfg).
    # It refuses x, t and cond on different devices, as a network on a GPU would.
    "class_gaussian_eps": lambda p: _same_device(preload().ClassConditionalGaussians(p["means"], p["vars"]).eps_model(
        p["alphas_cumprod"])),
}


def _module(params: dict, kind: str) -> torch.nn.Module:
    if kind == "linear":
        weight = params["weight"]
        bias = params.get("bias")
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        layer = layer.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer
    raise ValueError(f"unknown module kind {kind!r}")


def build(spec: dict, logs: list[ModelLog]) -> Any:
    """Turn one spec into its object; recorded models append their log to ``logs``."""
    what = spec[SPEC]
    if what == "generator":
        return torch.Generator(device=spec["device"]).manual_seed(spec["seed"])
    if what == "model":
        model = FACTORIES[spec["kind"]](spec["params"])
        if spec.get("record"):
            log = ModelLog()
            logs.append(log)
            model = log.wrap(model)
        return model
    if what == "module":
        return _module(spec["params"], spec["kind"])
    raise ValueError(f"unknown spec {what!r}")
