"""One tensor at a time: the merge of the models' tensors (float32 numpy arrays), as mergekit 0.1.4
computes it.

linear, slerp and the TIES sign consensus go through paddlenlp.mergekit's MergeMethod
(`tensor_type="np"`), which computes them as mergekit does. The sparsifiers are llmx's own: PaddleNLP's
trim keeps a quantile (one element more than mergekit's top-k `int(density * n)`), and its DARE/DELLA
rescale by 1 / density where mergekit restores the task vector's L1 norm. task_arithmetic, breadcrumbs,
model_stock and per-model parameters PaddleNLP lacks.

The random drops (dare_*, della*) draw from numpy, seeded by the recipe's `seed`, the tensor's name and
the model's place: the same recipe gives the same model, but not mergekit's masks (torch's stream).
"""
from __future__ import annotations

import zlib
from types import SimpleNamespace
from typing import Optional

import numpy as np

# the task-arithmetic family: method -> (sparsifier, sign consensus)
GTA = {"task_arithmetic": (None, False), "ties": ("magnitude", True), "dare_linear": ("random", False),
       "dare_ties": ("random", True), "della": ("magprune", True), "della_linear": ("magprune", False),
       "breadcrumbs": ("outliers", False), "breadcrumbs_ties": ("outliers", True)}


def _pnlp_config(**kw) -> SimpleNamespace:
    """The attributes paddlenlp's MergeMethod reads (its MergeConfig also checks model paths and creates
    directories, which a per-tensor call does not want)."""
    base = dict(tensor_type="np", weight_list=None, normalize=False, slerp_alpha=0.5, slerp_normalize_eps=1e-8,
                slerp_dot_threshold=0.9995, ties_elect_type="sum", merge_type="linear", sparsify_type=None,
                rescale=True, reserve_p=1.0, epsilon=0.14)
    base.update(kw)
    return SimpleNamespace(**base)


def tensor_seed(seed: int, name: str) -> int:
    """The random drops of a tensor depend on the seed and its name only (not on the order of files)."""
    return (zlib.crc32(name.encode()) ^ int(seed)) & 0x7FFFFFFF


def magnitude_mask(delta: np.ndarray, density: float) -> np.ndarray:
    """TIES: the `int(density * n)` largest magnitudes."""
    mask = np.zeros(delta.size, dtype=bool)
    mask[np.argsort(-np.abs(delta).ravel(), kind="stable")[:int(density * delta.size)]] = True
    return mask.reshape(delta.shape)


def breadcrumbs_mask(delta: np.ndarray, density: float, gamma: float) -> np.ndarray:
    """Model Breadcrumbs: drop the `int(gamma * n)` largest magnitudes and the smallest, keeping `int(density * n)`
    in all. As mergekit 0.1.4 slices it (`ascending[bottom:-top]`), a tensor where int(gamma * n) is 0 keeps
    nothing: small tensors (norms) lose their whole task vector at the default gamma."""
    n = delta.size
    keep, top = int(density * n), int(gamma * n)
    bottom = n - keep - top
    if bottom < 0:  # fewer outliers dropped so that `keep` remain
        top, bottom = top + bottom, 0
    mask = np.zeros(n, dtype=bool)
    if top > 0:
        mask[np.argsort(np.abs(delta).ravel(), kind="stable")[bottom:n - top]] = True
    return mask.reshape(delta.shape)


def magprune_keep_probability(delta: np.ndarray, density: float, epsilon: float) -> np.ndarray:
    """DELLA: per row (a vector is one row), keep probabilities rising linearly with the magnitude's rank from
    density - epsilon to density + epsilon."""
    rows = delta.reshape(1, -1) if delta.ndim < 2 else delta
    rank = np.argsort(np.argsort(np.abs(rows), axis=1, kind="stable"), axis=1, kind="stable").astype(np.float32)
    span = rank.max(axis=1, keepdims=True) - rank.min(axis=1, keepdims=True)
    rank_norm = np.clip((rank - rank.min(axis=1, keepdims=True)) / np.where(span > 0, span, 1), 0, 1)
    return ((density - epsilon) + rank_norm * 2 * epsilon).reshape(delta.shape)


def l1_rescaled(delta: np.ndarray, mask: np.ndarray, rescale: bool) -> np.ndarray:
    """The kept entries, scaled (with `rescale`) so that the task vector keeps its L1 norm, as mergekit rescales."""
    kept = delta * mask
    if not rescale:
        return kept
    before, after = np.abs(delta).sum(), np.abs(kept).sum()
    return kept if before < 1e-7 or after < 1e-7 else kept * (before / after)


def sparsify(kind: Optional[str], delta: np.ndarray, p: dict, rescale: bool, rng: np.random.Generator) -> np.ndarray:
    density = float(p["density"])
    if kind is None or density >= 1.0:
        return delta
    if kind == "magnitude":
        mask = magnitude_mask(delta, density)
    elif kind == "outliers":
        mask = breadcrumbs_mask(delta, density, float(p["gamma"]))
    elif kind == "random":
        mask = rng.random(delta.shape) < density
    elif density <= 0.0:  # magprune
        return np.zeros_like(delta)
    else:
        mask = rng.random(delta.shape) < magprune_keep_probability(delta, density, float(p["epsilon"]))
    return l1_rescaled(delta, mask, rescale).astype(delta.dtype)


def task_arithmetic_family(method: str, name: str, tensors: list[np.ndarray], base: np.ndarray,
                           model_params: list[dict], params: dict) -> np.ndarray:
    from paddlenlp.mergekit.merge_method import MergeMethod

    kind, consensus = GTA[method]
    seed = tensor_seed(params["seed"], name)
    deltas = [sparsify(kind, t - base, p, bool(params["rescale"]), np.random.default_rng([seed, i]))
              for i, (t, p) in enumerate(zip(tensors, model_params))]
    weights = [float(p["weight"]) for p in model_params]
    if consensus:  # sign election over the weighted task vectors, mean over the agreeing ones (if normalize)
        cfg = _pnlp_config(weight_list=weights, normalize=bool(params["normalize"]), ties_elect_type=params["consensus"])
        mixed = MergeMethod(cfg).ties(deltas)
    else:
        mixed = sum(w * d for w, d in zip(weights, deltas))
        if params["normalize"] and abs(sum(weights)) >= 1e-8:
            mixed = mixed / sum(weights)
    return base + float(params["lambda"]) * mixed


def merge_tensor(method: str, name: str, tensors: list[np.ndarray], base: Optional[np.ndarray], model_params: list[dict],
                 params: dict) -> np.ndarray:
    """`tensors[i]` is model i's tensor, `model_params[i]` its parameters resolved for this tensor (the
    global ones filled in), `params` the global ones (every parameter present: llmx.merge.recipe.defaults)."""
    from paddlenlp.mergekit.merge_method import MergeMethod

    if method == "linear":
        weights = [float(p["weight"]) for p in model_params]
        return MergeMethod(_pnlp_config(weight_list=weights, normalize=bool(params["normalize"]))).linear(tensors)
    if method == "slerp":
        return MergeMethod(_pnlp_config(slerp_alpha=float(params["t"]))).slerp([base, tensors[0]])
    if method == "model_stock":
        return model_stock(tensors, base)
    if method in GTA:
        return task_arithmetic_family(method, name, tensors, base, model_params, params)
    raise ValueError(method)


def model_stock(tensors: list[np.ndarray], base: np.ndarray) -> np.ndarray:
    """Model Stock (Jang et al. 2024): t = N cos / (1 + (N - 1) cos) from the mean pairwise cosine of the task
    vectors (per tensor, flattened; norm products floored at 1e-6 as mergekit floors them), then
    t * mean(models) + (1 - t) * base."""
    deltas = [(t - base).ravel().astype(np.float64) for t in tensors]
    cos = []
    for i in range(len(deltas)):
        for j in range(i + 1, len(deltas)):
            den = max(np.linalg.norm(deltas[i]) * np.linalg.norm(deltas[j]), 1e-6)
            cos.append(float(np.clip(deltas[i] @ deltas[j] / den, -1, 1)))
    c, n = float(np.mean(cos)), len(tensors)
    t = n * c / (1 + (n - 1) * c)
    return (t * np.mean(tensors, axis=0) + (1 - t) * base).astype(tensors[0].dtype)
