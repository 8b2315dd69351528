"""The log-mean Divisia index (LMDI-I) of a spend change, per (team, model) cell, exact to the micro-dollar.

Each cell's spend in a period is written as a sum of products of factors (``Factors``)::

    C = sum over parts k of  R_team * m * x_k * g * phi   (input: system, tools, history, new)
      +                      R_team * m * o   * r_o * phi   (output)

``R_team`` the team's requests, ``m`` the cell's share of them (model mix), ``x_k`` billed input tokens per
request of part k, ``g`` the reference price of an input token given the cache hit share (uncached, cache
read and cache write tokens at their reference rates, blended: it moves only with the cache mix), ``o``
output tokens per request, ``r_o`` the reference output rate (fixed), ``phi`` what was charged over the
cost at the reference prices (it moves when the price charged changed: another price version, a long
context tier, rounding). By construction the terms add up to the spend charged.

LMDI-I gives each factor f of a term V the effect ``L(V1, V0) * ln(f1 / f0)``, with ``L`` the logarithmic
mean; the effects of a term add up to ``V1 - V0`` exactly (in real numbers), with no residual term and no
dependence on the order of the factors (a sequential decomposition has both), and an effect's sign is
its factor's. A term that is zero on one side (a part absent, a model or team new or gone) is the limit
of LMDI as that factor goes to zero: the whole change goes to the first factor that is zero, in the order
requests, model mix, the token factor, cache, price; so a team present in one period only contributes
through ``requests``, a model of a team present in both through ``model_mix``.

The real-valued effects are rounded to integer micro-USD; what rounding leaves over (the change in
integer micro-USD less the sum of the rounded effects, a few micro-USD) is added to the largest effect,
so that the effects add up to the change exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from ..values import value

PARTS = ("input_system", "input_tools", "input_history", "input_new")
DRIVERS = ("requests", *PARTS, "output", "cache", "model_mix", "price")


@value
class Factors:
    """One cell in one period; zero requests: a cell absent from the period."""

    team_requests: float
    share: float  # m: the cell's requests over its team's
    per_request: tuple[float, float, float, float]  # x_k in PARTS order
    output: float  # o
    input_rate: float  # g, pico-USD per input token at the reference prices
    output_rate: float  # r_o
    price: float  # phi

    def terms(self) -> list[tuple[float, dict[str, float]]]:
        """(value, driver -> factor) for each term; the output rate is fixed and has no driver."""
        common = {"requests": self.team_requests, "model_mix": self.share, "price": self.price}
        out = [
            (self.team_requests * self.share * x * self.input_rate * self.price, {**common, part: x, "cache": g})
            for part, x, g in zip(PARTS, self.per_request, (self.input_rate,) * 4, strict=True)
        ]
        o = self.team_requests * self.share * self.output * self.output_rate * self.price
        out.append((o, {**common, "output": self.output}))
        return out


_ORDER = ("requests", "model_mix", *PARTS, "output", "cache", "price")


def log_mean(a: float, b: float) -> float:
    if abs(a - b) <= 1e-12 * max(a, b):  # equal, or too close for the logarithms to tell apart
        return (a + b) / 2
    return (a - b) / (math.log(a) - math.log(b))


def cell_effects(before: Factors, after: Factors) -> dict[str, float]:
    """Driver -> effect (in the unit of the terms) of one cell's change from ``before`` to ``after``."""
    out = dict.fromkeys(DRIVERS, 0.0)
    for (v0, f0), (v1, f1) in zip(before.terms(), after.terms(), strict=True):
        if v0 == v1 == 0:
            continue
        if v0 == 0 or v1 == 0:
            zero = f0 if v0 == 0 else f1
            driver = next(d for d in _ORDER if d in zero and zero[d] == 0)
            out[driver] += v1 - v0
            continue
        weight = log_mean(v1, v0)
        for driver in f0:
            out[driver] += weight * math.log(f1[driver] / f0[driver])
    return out


def exact(effects: Mapping[tuple[str, str, str], float], change: int) -> dict[tuple[str, str, str], int]:
    """Effects rounded to integers that add up to ``change``: the residue goes to the largest effect."""
    rounded = {k: round(v) for k, v in effects.items()}
    residue = change - sum(rounded.values())
    if residue and rounded:
        largest = max(effects, key=lambda k: (abs(effects[k]), k))
        rounded[largest] += residue
    return rounded


def absent(team_requests: float) -> Factors:
    """A cell with no request in a period whose team had ``team_requests``."""
    return Factors(team_requests, 0.0, (1.0, 1.0, 1.0, 1.0), 1.0, 1.0, 1.0, 1.0)


def decompose(
    before: Mapping[tuple[str, str], Factors], after: Mapping[tuple[str, str], Factors], change: int
) -> dict[tuple[str, str, str], int]:
    """(team, model, driver) -> micro-USD over every cell of either period, adding up to ``change``."""
    effects: dict[tuple[str, str, str], float] = {}
    teams0 = {t: f.team_requests for (t, _), f in before.items()}
    teams1 = {t: f.team_requests for (t, _), f in after.items()}
    for cell in sorted(set(before) | set(after)):
        f0 = before.get(cell) or absent(teams0.get(cell[0], 0.0))
        f1 = after.get(cell) or absent(teams1.get(cell[0], 0.0))
        for driver, v in cell_effects(f0, f1).items():
            effects[(*cell, driver)] = v
    return exact(effects, change)


def totals(effects: Iterable[tuple[tuple[str, str, str], int]]) -> dict[tuple[str, str], int]:
    """(team, driver) -> micro-USD, over models."""
    out: dict[tuple[str, str], int] = {}
    for (team, _, driver), v in effects:
        out[(team, driver)] = out.get((team, driver), 0) + v
    return out
