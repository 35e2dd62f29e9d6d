"""The convex test problem: a random quadratic with a closed-form optimum.

    L(w)  = 0.5 w^T Q w - b^T w,         grad L(w) = Q w - b   (Q symmetric)
    w*    = Q^-1 b,                      L* = L(w*) = -0.5 b^T Q^-1 b

Q is a random symmetric positive-definite matrix from scikit-learn's
`make_spd_matrix` (eigenvalues spread over about four decades for n = 100),
symmetrised exactly because the SVD product is symmetric only to ~1e-12.
b and w0 are standard normal. Everything is float64.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Quadratic:
    Q: np.ndarray
    b: np.ndarray
    w0: np.ndarray
    seed: int

    @property
    def dim(self):
        return self.b.shape[0]

    def loss(self, w):
        """L(w) = 0.5 w^T Q w - b^T w."""
        w = np.asarray(w, dtype=np.float64)
        return float(0.5 * w @ self.Q @ w - self.b @ w)

    def optimum(self):
        """(w*, L*) with w* = Q^-1 b and L* = -0.5 b^T Q^-1 b."""
        w_star = np.linalg.solve(self.Q, self.b)
        return w_star, float(-0.5 * self.b @ w_star)

    def condition_number(self):
        eig = np.linalg.eigvalsh(self.Q)
        return float(eig[-1] / eig[0])


def make_quadratic(dim=100, seed=0):
    """The problem for (dim, seed): Q from make_spd_matrix(dim, seed), then b, w0 ~ N(0, 1)."""
    from sklearn.datasets import make_spd_matrix

    q = make_spd_matrix(n_dim=dim, random_state=seed)
    q = 0.5 * (q + q.T)
    rng = np.random.RandomState(seed + 1)
    b = rng.standard_normal(dim)
    w0 = rng.standard_normal(dim)
    return Quadratic(Q=q, b=b, w0=w0, seed=seed)
