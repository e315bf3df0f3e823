"""Structure: is each curriculum function defined, callable, with the curriculum's signature?"""

from __future__ import annotations

from dataclasses import dataclass

from grader.checks.base import Check, Context, Inputs, TestSpec, Verdict

__all__ = ["Signatures"]


def signature_of(ns, name):
    """Probe run in the student's process: what ``name`` is and which parameters it takes."""
    import inspect

    obj = getattr(ns, name)
    try:
        params = [p.name for p in inspect.signature(obj).parameters.values()]
    except (TypeError, ValueError):
        params = None
    return {"callable": callable(obj), "class": inspect.isclass(obj), "params": params}


@dataclass(frozen=True)
class Signatures(Check):
    """One 0-point test per function: defined, callable, and taking the curriculum's arguments in order.

    The curriculum fixes names and order of these arguments (outside tools call
    them by keyword); extra trailing arguments with defaults are allowed.
    """

    functions: tuple[tuple[str, tuple[str, ...]], ...]
    function: str | None = None
    public: bool = False

    def tests(self) -> list[TestSpec]:
        return [TestSpec(f"{name}: defined with the curriculum's signature", 0.0, "structure")
                for name, _ in self.functions]

    def run(self, ctx: Context) -> list[Verdict]:
        inputs = [Inputs({"name": name}) for name, _ in self.functions]
        outcomes = ctx.call("signature", inputs, signature_of)
        return [self._judge(name, params, outcome) for (name, params), outcome in zip(self.functions, outcomes)]

    @staticmethod
    def _judge(name: str, params: tuple[str, ...], outcome) -> Verdict:
        if not outcome.ok:
            return Verdict(False, outcome.explain(name))
        info = outcome.value if isinstance(outcome.value, dict) else {}
        if not info.get("callable"):
            return Verdict(False, f"{name} is defined but is not a function")
        got = info.get("params")
        if got is None:
            return Verdict(True, f"{name} is defined (its signature could not be read)")
        expected = list(params)
        if got[: len(expected)] != expected:
            return Verdict(
                False,
                f"{name} takes ({', '.join(got)}); the curriculum's signature is ({', '.join(expected)}, …). "
                f"Keep these names and this order: the grader and course tools call {name} by keyword.",
            )
        return Verdict(True, f"{name}({', '.join(got)})")
