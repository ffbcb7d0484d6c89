"""One tensor at a time: the merge of the models' tensors (float32 numpy arrays).

linear, slerp, ties, dare_* and della* go through paddlenlp.mergekit's MergeMethod/SparsifyMethod
(`tensor_type="np"`). What it lacks is llmx's own: task_arithmetic, breadcrumbs, model_stock, and
per-model parameters (its sparsifier takes one density for all models, so each model's task vector
is sparsified with its own config here before the combination step).
"""
from __future__ import annotations

import zlib
from types import SimpleNamespace
from typing import Optional

import numpy as np

GTA = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "della", "della_linear", "breadcrumbs")
TIES_LIKE = ("ties", "dare_ties", "della")


def _pnlp_config(**kw) -> SimpleNamespace:
    """The attributes paddlenlp's MergeMethod/SparsifyMethod read (its MergeConfig also checks model
    paths and creates directories, which a per-tensor call does not want)."""
    base = dict(tensor_type="np", weight_list=None, normalize=False, slerp_alpha=0.5, slerp_normalize_eps=1e-8,
                slerp_dot_threshold=0.9995, ties_elect_type="sum", merge_type="linear", sparsify_type=None,
                rescale=True, reserve_p=1.0, epsilon=0.14)
    base.update(kw)
    return SimpleNamespace(**base)


def tensor_seed(seed: int, name: str) -> int:
    """The random drops of a tensor depend on the seed and its name only (not on the order of files)."""
    return (zlib.crc32(name.encode()) ^ int(seed)) & 0x7FFFFFFF


def breadcrumbs_mask(delta: np.ndarray, density: float, gamma: float) -> np.ndarray:
    """Keep the magnitudes ranked just below the top `gamma` fraction, `density` of them (Model
    Breadcrumbs: drop the largest outliers and the small tail)."""
    n = delta.size
    order = np.argsort(-np.abs(delta).ravel(), kind="stable")
    top, keep = int(round(gamma * n)), int(round(density * n))
    mask = np.zeros(n, dtype=bool)
    mask[order[top:top + keep]] = True
    return mask.reshape(delta.shape)


def _sparsify(method: str, delta: np.ndarray, p: dict, seed: int, index: int) -> np.ndarray:
    from paddlenlp.mergekit.sparsify_method import SparsifyMethod

    density = float(p["density"])
    if method == "breadcrumbs":
        return delta * breadcrumbs_mask(delta, density, float(p["gamma"]))
    if density >= 1.0 or method == "task_arithmetic":
        return delta
    kind = {"ties": "trim", "dare_linear": "dare", "dare_ties": "dare", "della": "magprune", "della_linear": "magprune"}[method]
    # TIES trims without rescaling (the paper's top-k), DARE/DELLA rescale the kept entries by default
    rescale = False if kind == "trim" else bool(p["rescale"])
    np.random.seed((seed + 7919 * index) & 0x7FFFFFFF)
    return SparsifyMethod(_pnlp_config(sparsify_type=kind, reserve_p=density, rescale=rescale,
                                       epsilon=float(p["epsilon"]))).sparsify(delta.copy())


def merge_tensor(method: str, name: str, tensors: list[np.ndarray], base: Optional[np.ndarray], model_params: list[dict],
                 params: dict) -> np.ndarray:
    """`tensors[i]` is model i's tensor, `model_params[i]` its parameters resolved for this tensor (the
    global ones filled in), `params` the global ones."""
    from paddlenlp.mergekit.merge_method import MergeMethod

    weights = [float(p["weight"]) for p in model_params]
    if method == "linear":
        normalize = True if params["normalize"] is None else bool(params["normalize"])
        return MergeMethod(_pnlp_config(weight_list=weights, normalize=normalize)).linear(tensors)
    if method == "slerp":
        return MergeMethod(_pnlp_config(slerp_alpha=float(params["t"]))).slerp([base, tensors[0]])
    if method == "model_stock":
        return model_stock(tensors, base)
    if method in GTA:
        seed = tensor_seed(params["seed"], name)
        deltas = [_sparsify(method, t - base, p, seed, i) for i, (t, p) in enumerate(zip(tensors, model_params))]
        # mergekit normalizes by default for every task-arithmetic family method
        normalize = True if params["normalize"] is None else bool(params["normalize"])
        if method in TIES_LIKE:
            cfg = _pnlp_config(weight_list=weights, normalize=normalize, ties_elect_type=params["consensus"])
            return base + MergeMethod(cfg).ties(deltas)
        mixed = sum(w * d for w, d in zip(weights, deltas))
        if normalize and abs(sum(weights)) > 1e-8:
            mixed = mixed / sum(weights)
        return base + mixed
    raise ValueError(method)


def model_stock(tensors: list[np.ndarray], base: np.ndarray) -> np.ndarray:
    """Model Stock (Jang et al. 2024): t = N cos / (1 + (N - 1) cos) from the mean pairwise cosine of
    the task vectors (per tensor, flattened), then t * mean(models) + (1 - t) * base."""
    deltas = [(t - base).ravel().astype(np.float64) for t in tensors]
    cos = []
    for i in range(len(deltas)):
        for j in range(i + 1, len(deltas)):
            den = np.linalg.norm(deltas[i]) * np.linalg.norm(deltas[j])
            cos.append(float(deltas[i] @ deltas[j] / den) if den > 1e-12 else 0.0)
    c, n = float(np.mean(cos)), len(tensors)
    t = n * c / (1 + (n - 1) * c) if abs(1 + (n - 1) * c) > 1e-12 else 0.0
    return (t * np.mean(tensors, axis=0) + (1 - t) * base).astype(tensors[0].dtype)
