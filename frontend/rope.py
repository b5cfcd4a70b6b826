"""Rotary position tables as Hugging Face computes them (default, linear, Llama 3.1 and Phi-3's longrope scaling)."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np


def rope_cos_sin(head_dim: int, theta: float, start: int, length: int,
                 scaling: Mapping | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables [length, head_dim] (float32) for positions start..start+length-1, as HF computes them.

    `scaling` is a resolved rope-scaling dict: {"rope_type": "linear", "factor": f}, the Llama 3.1
    rule {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"}, or Phi-3's {"rope_type": "longrope", "short_factor",
    "long_factor" (head_dim / 2 each), "original_max_position_embeddings", "attention_factor"}: the
    long factors when the positions reach past the original length (start + length > it; Hugging
    Face picks by the highest position of the forward). Hugging Face also multiplies longrope's
    tables by attention_factor; these stay within [-1, 1] and the caller folds its square into the
    attention scale (as passes/fold_scales.py does for an export).
    """
    f32 = np.float32
    inv_freq = f32(1.0) / (f32(theta) ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(f32) / f32(head_dim)))
    kind = scaling["rope_type"] if scaling else "default"
    if kind == "longrope":
        long = start + length > scaling["original_max_position_embeddings"]
        ext = np.asarray(scaling["long_factor" if long else "short_factor"], f32)
        inv_freq = f32(1.0) / (ext * f32(theta) ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(f32) / f32(head_dim)))
    elif kind == "linear":
        inv_freq = inv_freq / f32(scaling["factor"])
    elif kind == "llama3":
        factor, lo, hi = (f32(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
        old = f32(scaling["original_max_position_embeddings"])
        wavelen = f32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > old / lo, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (f32(1) - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv_freq = np.where(medium, smoothed, scaled).astype(f32)
    elif kind != "default":
        raise ValueError(f"rope scaling type {kind!r} is not supported")
    pos = np.arange(start, start + length, dtype=np.int64).astype(f32)
    freqs = np.outer(pos, inv_freq).astype(f32)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(f32), np.sin(emb).astype(f32)
