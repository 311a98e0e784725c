"""TokenCut normalized cut on the affinity features: the eigenvector map ``E_l``.

For one image with affinity features f (h, w, D), N = h * w nodes:

1. L2-normalise every node's feature; ``A = f f^T`` (cosine similarity, N x N);
2. binary graph: ``A_ij = 1`` where ``A_ij > tau``, else ``eps`` (keeps the graph connected);
3. ``D = diag(A 1)``; ``E_l`` = the eigenvector of the second-smallest eigenvalue of
   ``(D - A) x = lambda D x`` (Shi & Malik), reshaped to (h, w). Solvers: ``eigh``
   (``scipy.linalg.eigh(D - A, D, subset_by_index=[1, 1])``) or ``normalized``
   (``D^-1/2 u``, u the eigenvector of the symmetric normalised Laplacian
   ``I - D^-1/2 A D^-1/2``, the default: faster, see :class:`GraphCutConfig`); both are
   D-normalised (``x^T D x = 1``) and agree up to sign. Settings and reasons: docs/method.md,
   section 3.

Sign: an eigenvector's sign is arbitrary. :func:`second_eigenvector` fixes it with TokenCut's
rule: the node of largest ``|x|`` (the seed) lies in the part above the mean (``x > mean(x)``),
so that part is TokenCut's foreground. LCAR's ARM re-decides foreground with the SD-CAM seed
(eq. 10), so the rule only makes the output deterministic.

:func:`tokencut_box` is TokenCut's own localization, for comparison: bipartition ``x > mean(x)``,
the 4-connected component holding the seed, its bounding box scaled to the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import linalg
from threadpoolctl import threadpool_limits

from ..boxes import connected_components, mask_to_box
from ..config_check import check_fields, check_range
from .cam import minmax_normalize, upsample

Solver = Literal["eigh", "normalized"]
Orientation = Literal["cam", "tokencut"]


@dataclass(frozen=True)
class GraphCutConfig:
    """Settings of the normalized cut.

    tau: edge threshold of the binary graph (0.2; TokenCut's WSOL evaluation used 0.05).
    eps: weight of the non-edges (1e-5).
    solver: ``normalized`` (``D^-1/2 u``, default) or ``eigh`` (the generalised problem as
        TokenCut writes it, LAPACK ``gvx``): the same vector; ``normalized`` is faster and,
        unlike multi-threaded ``eigh``, does not slow down on a loaded machine (timings:
        docs/experiments/2026-12-speed-and-memory.md, "Speed and memory").
    orient: which side of the cut is the object: ``cam`` (eqs. 10-11: the side holding more of
        the SD-CAM seed, when the bundle has heads) or ``tokencut`` (TokenCut's rule alone:
        the side of the node of largest ``|E_l|``; for backbones whose CAM is weaker than
        their graph cut, e.g. DINOv2: docs/method.md, section 3).
    """

    tau: float = 0.2
    eps: float = 1e-5
    solver: Solver = "normalized"
    orient: Orientation = "cam"

    def __post_init__(self) -> None:
        check_fields(self)
        check_range(self, "tau", -1.0, 1.0, high_open=True)
        check_range(self, "eps", 0.0, 1.0, low_open=True, high_open=True)


@dataclass(frozen=True)
class TokenCutResult:
    """TokenCut's localization of one image.

    bipartition: (h, w) bool, ``E_l > mean(E_l)`` (foreground side, after the sign rule).
    component: (h, w) bool, the connected component of the bipartition holding the seed.
    seed: (row, col) of the node with the largest ``|E_l|``.
    box: (4,) int64 ``x0 y0 x1 y1`` of the component in output pixels, inclusive corners.
    """

    bipartition: np.ndarray
    component: np.ndarray
    seed: tuple[int, int]
    box: np.ndarray


def _flat_features(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 3 or min(f.shape) < 1:
        raise ValueError(f"features must be (h, w, D), got shape {f.shape}")
    if f.shape[0] * f.shape[1] < 3:
        raise ValueError(f"the graph needs at least 3 nodes, got {f.shape[0]}x{f.shape[1]}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    return f.reshape(-1, f.shape[2])


def affinity_graph(features: np.ndarray, tau: float = 0.2, eps: float = 1e-5) -> np.ndarray:
    """Binary affinity graph of (h, w, D) features -> (N, N) float64, N = h * w.

    ``A_ij = 1`` where the cosine similarity is above ``tau``, else ``eps``.
    """
    f = _flat_features(features)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    f = f / np.maximum(norms, 1e-12)
    return np.where(f @ f.T > tau, 1.0, eps)


def cut_eigenvector(affinity: np.ndarray, solver: str = "normalized") -> np.ndarray:
    """D-normalised eigenvector (N,) of the second-smallest eigenvalue of (D - A) x = l D x."""
    degree = affinity.sum(axis=1)
    if solver == "eigh":
        _, vectors = linalg.eigh(
            np.diag(degree) - affinity, np.diag(degree), subset_by_index=[1, 1]
        )
        return vectors[:, 0]
    inv_sqrt = 1.0 / np.sqrt(degree)
    laplacian = np.eye(len(degree)) - inv_sqrt[:, None] * affinity * inv_sqrt[None, :]
    # LAPACK's MRRR driver (evr): faster than the default driver for one eigenpair here.
    _, vectors = linalg.eigh(laplacian, subset_by_index=[1, 1], driver="evr")
    return inv_sqrt * vectors[:, 0]


def orient_eigenvector(vector: np.ndarray) -> np.ndarray:
    """TokenCut's sign rule: flip so that the entry of largest ``|x|`` is above the mean.

    Not ARM's :func:`lcar_deploy.stages.arm.orient`, which decides the sign of a refined
    map with the SD-CAM seed (eqs. 10-11).
    """
    seed = int(np.argmax(np.abs(vector)))
    return vector if vector.flat[seed] > vector.mean() else -vector


def second_eigenvector(features: np.ndarray, config: GraphCutConfig | None = None) -> np.ndarray:
    """``E_l``: the normalized-cut eigenvector map of (h, w, D) features -> (h, w) float64.

    D-normalised, sign fixed by :func:`orient_eigenvector`.
    """
    config = config or GraphCutConfig()
    h, w = np.shape(features)[:2]
    # One BLAS thread: on a few hundred nodes, threads only add contention (timings:
    # docs/experiments/2026-12-speed-and-memory.md, "Speed and memory").
    with threadpool_limits(1):
        graph = affinity_graph(features, config.tau, config.eps)
        return orient_eigenvector(cut_eigenvector(graph, config.solver)).reshape(h, w)


def eigenvector_scoremap(
    eigenvector: np.ndarray, size: int = 224, interpolation: str = "bilinear"
) -> np.ndarray:
    """``E_l`` (h, w) as a score map: upsampled to (size, size), min-max scaled to [0, 1]."""
    return minmax_normalize(upsample(eigenvector, size, interpolation))


def tokencut_box(eigenvector: np.ndarray, size: tuple[int, int] = (224, 224)) -> TokenCutResult:
    """TokenCut's box from an oriented ``E_l`` (h, w), in a (width, height) = ``size`` image.

    The component's grid box ``[xmin, xmax] x [ymin, ymax]`` becomes TokenCut's exclusive
    ``[xmin * sx, (xmax + 1) * sx)`` (``sx = width / w``), clipped to the image, then inclusive
    integer pixels ``x0 = int(xmin * sx)``, ``x1 = min(int((xmax + 1) * sx), width) - 1``.
    """
    vector = np.asarray(eigenvector, dtype=np.float64)
    if vector.ndim != 2:
        raise ValueError(f"eigenvector must be (h, w), got shape {vector.shape}")
    h, w = vector.shape
    width, height = size
    bipartition = vector > vector.mean()
    seed_flat = int(np.argmax(np.abs(vector)))
    seed = (seed_flat // w, seed_flat % w)
    if not bipartition[seed]:
        vector = -vector
        bipartition = vector > vector.mean()
    labels = connected_components(bipartition, connectivity=4).labels
    component = labels == labels[seed]
    xmin, ymin, xmax, ymax = mask_to_box(component, "all")
    sx, sy = width / w, height / h
    box = np.array(
        [
            int(xmin * sx),
            int(ymin * sy),
            min(int((xmax + 1) * sx), width) - 1,
            min(int((ymax + 1) * sy), height) - 1,
        ],
        dtype=np.int64,
    )
    return TokenCutResult(bipartition, component, seed, box)
