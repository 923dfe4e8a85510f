"""Refits the rational erf of src/backend/cpu/math.rs: erf(x) ~ x P(x^2) / Q(x^2), Q(0) = 1.

A minimax fit by Lawson's iteration (iteratively reweighted least squares on the linearized
error x P - erf Q, divided by the previous Q), in the variable u = x^2 / X^2 for conditioning,
then converted back to coefficients of t = x^2. Prints the worst error of the float64 fit and the
coefficients, highest degree first (the order of `horner` in math.rs).

    python scripts/fit_erf.py [X=3.92] [degree of P=6] [degree of Q=5]

Needs numpy.
"""

import math
import sys

import numpy as np


def fit(limit: float, degree_p: int, degree_q: int, iterations: int = 200):
    dense = np.linspace(0.0, limit, 30000)
    # Extra points toward the clamp, where the error of a rational fit tends to peak.
    near_end = limit * np.sin(np.linspace(0.0, np.pi / 2, 6000))
    x = np.unique(np.concatenate([dense, near_end]))
    target = np.array([math.erf(v) for v in x])
    u = x * x / (limit * limit)
    numerator_basis = np.stack([x * u**i for i in range(degree_p + 1)], axis=1)
    denominator_basis = np.stack([-target * u**j for j in range(1, degree_q + 1)], axis=1)
    basis = np.concatenate([numerator_basis, denominator_basis], axis=1)
    lawson = np.ones_like(x)
    previous_q = np.ones_like(x)
    best = None
    for _ in range(iterations):
        weight = lawson / np.abs(previous_q)
        solution, *_ = np.linalg.lstsq(basis * weight[:, None], target * weight, rcond=None)
        p = solution[: degree_p + 1]
        q = np.concatenate([[1.0], solution[degree_p + 1 :]])
        p_values = np.polyval(p[::-1], u)
        q_values = np.polyval(q[::-1], u)
        error = x * p_values / q_values - target
        worst = np.abs(error).max()
        if best is None or worst < best[0]:
            best = (worst, p.copy(), q.copy())
        lawson = np.maximum(lawson * np.abs(error), 1e-300)
        lawson /= lawson.sum()
        previous_q = q_values
    worst, p, q = best
    p_t = [p[i] / limit ** (2 * i) for i in range(degree_p + 1)]
    q_t = [q[j] / limit ** (2 * j) for j in range(degree_q + 1)]
    return worst, p_t, q_t


def main():
    limit = float(sys.argv[1]) if len(sys.argv) > 1 else 3.92
    degree_p = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    degree_q = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    worst, p, q = fit(limit, degree_p, degree_q)
    print(f"worst absolute error of the float64 fit on [0, {limit}]: {worst:.3e}")
    print("NUMERATOR (highest degree first):", [f"{v:.8e}" for v in reversed(p)])
    print("DENOMINATOR (highest degree first):", [f"{v:.8e}" for v in reversed(q)])


if __name__ == "__main__":
    main()
