"""Weight quantization and pruning algorithms: RTN, magnitude N:M, GPTQ and SparseGPT.

Pure numpy, float64 throughout, deterministic (no random numbers, stable tie breaking). Every
function returns a `QuantizedWeight` whose scales are the fixed-point scales of the integer
contract (`mant[n, j] * 2^-shift[n]`, docs/integer.md), and whose codes were rounded against those
*exact* scales, so `numpy()` is precisely the weight the hardware multiplies with.

Rounding of codes is half away from zero in float64: `code = clip(round(w / s), -qmax, qmax)`.
A group whose (kept) weights are all zero gets the smallest positive scale of its row, or 1.0 if
the whole row is zero; a positive scale that would round to mantissa 0 gets mantissa 1.
"""
from __future__ import annotations

import numpy as np

from llmfab.ir.packing import hardware_k
from llmfab.ir.quant import (MANT_BITS, QuantError, QuantizedWeight, QuantScheme, block_counts, block_quota,
                             scale_multipliers)

MANT_MAX = (1 << MANT_BITS) - 1
DAMP_RETRIES = 3                      # a failing Cholesky is retried with damp * 10, 100, 1000


def round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


# ---- checks -------------------------------------------------------------------------------------

def _weight(w, scheme: QuantScheme, name: str = "") -> np.ndarray:
    """w as a float64 copy [N, K] (QuantError for a shape no scheme takes, naming the weight when the
    caller gave its name)."""
    where = f"{name}: " if name else ""
    w = np.array(w, dtype=np.float64)
    if w.ndim != 2 or 0 in w.shape:
        raise QuantError(f"{where}a weight to quantize must be a non-empty [N, K] matrix, not shape {list(w.shape)}")
    if not np.isfinite(w).all():
        raise QuantError(f"{where}the weight has non-finite values (NaN or inf)")
    return w


def padded_group(scheme: QuantScheme, k: int) -> tuple[int, int]:
    """(g, Kp): the group the algorithms work with and K padded to whole groups with zero columns.
    Zero columns change no group's max |w| and are never kept before a real weight (ties go to the
    lower index), so a partial last group or N:M block gets its scale and mask from its real
    columns only; the padding is cut off again. Per row, the group is K rounded up to the N:M block."""
    g, kp = scheme.group_size(k), hardware_k(scheme, k)
    return (g if g < k else kp), kp


def _pad(a: np.ndarray, kp: int) -> np.ndarray:
    return np.pad(a, ((0, 0), (0, kp - a.shape[1])))


def _pad_hessian(h: np.ndarray, kp: int) -> np.ndarray:
    """H [K, K] to [Kp, Kp]: the padding columns are independent inputs (no coupling, so no error
    reaches them) with the mean diagonal, so the damping, d * mean(diag H), does not change."""
    k = h.shape[0]
    out = np.zeros((kp, kp))
    out[:k, :k] = h
    out[range(k, kp), range(k, kp)] = np.mean(np.diag(h)) if k else 0.0
    return out


def _mask(mask, scheme: QuantScheme, w: np.ndarray) -> np.ndarray | None:
    """The N:M mask to use: the given one (checked), the magnitude mask, or None for dense schemes."""
    if scheme.sparsity is None:
        if mask is not None:
            raise QuantError(f"a mask needs a sparse scheme; {scheme} stores every weight")
        return None
    n, m = scheme.sparsity
    if mask is None:
        return nm_mask_magnitude(w, n, m)
    mask = np.asarray(mask)
    if mask.shape != w.shape or mask.dtype != np.bool_:
        raise QuantError(f"mask must be a bool array of the weight's shape {list(w.shape)}, "
                         f"not {mask.dtype} {list(mask.shape)}")
    kept, quota = block_counts(mask, m), block_quota(w.shape[1], n, m)
    if (kept != quota).any():
        r, b = np.argwhere(kept != quota)[0]
        hi = min(b * m + m, w.shape[1])
        raise QuantError(f"mask keeps {kept[r, b]} of the {hi - b * m} weights at row {r}, columns "
                         f"{b * m}..{hi - 1}; {scheme} needs exactly {quota[b]}")
    return mask.copy()


# ---- masks and scales ---------------------------------------------------------------------------

def _top_n(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """bool, same shape as scores [N, L]: the n largest of each block of m along the last axis
    (ties: lower index first)."""
    s = scores.reshape(scores.shape[0], -1, m)
    order = np.argsort(-s, axis=-1, kind="stable")
    keep = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return keep.reshape(scores.shape)


def nm_mask_magnitude(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """bool [N, K]: the n largest |w| of every m consecutive weights along K (ties: lower index
    first); a last block of r < m weights keeps min(n, r) of them."""
    w = np.asarray(w)
    if not (isinstance(n, (int, np.integer)) and isinstance(m, (int, np.integer)) and 0 < n <= m):
        raise QuantError(f"an N:M pattern needs 0 < n <= m, not {n}:{m}")
    if w.ndim != 2:
        raise QuantError(f"an {n}:{m} mask needs a [N, K] weight, not shape {list(w.shape)}")
    k = w.shape[1]
    return _top_n(_pad(np.abs(w.astype(np.float64)), -(-k // m) * m), n, m)[:, :k]


def _group_scales(w: np.ndarray, g: int, qmax: int, mask: np.ndarray | None) -> np.ndarray:
    """Float scales [N, G] = max |kept w| / qmax per group; zero groups take the row's smallest
    positive scale (1.0 for an all-zero row)."""
    a = np.abs(w if mask is None else np.where(mask, w, 0.0))
    s = a.reshape(w.shape[0], -1, g).max(axis=-1) / qmax
    smallest = np.where(s > 0, s, np.inf).min(axis=1)
    fill = np.where(np.isfinite(smallest), smallest, 1.0)
    return np.where(s > 0, s, fill[:, None])


def _fixed_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scale_multipliers, with positive scales that rounded to mantissa 0 raised to mantissa 1."""
    mant, shift = scale_multipliers(scales)
    return np.maximum(mant, 1), shift


def _quantize(w: np.ndarray, s: np.ndarray, qmax: int) -> np.ndarray:
    return np.clip(round_half_away(w / s), -qmax, qmax)


# ---- round to nearest ---------------------------------------------------------------------------

def rtn(w: np.ndarray, scheme: QuantScheme, mask: np.ndarray | None = None, name: str = "") -> QuantizedWeight:
    """Round to nearest with per-group fixed-point scales.

    scale[n, j] = max |kept w| / qmax over group j of row n, turned into (mant, shift) by
    `scale_multipliers` first; codes are rounded against the exact scales mant * 2^-shift. A sparse
    scheme without a mask uses `nm_mask_magnitude`; pruned weights get code 0.
    """
    w = _weight(w, scheme, name)
    mask = _mask(mask, scheme, w)
    k = w.shape[1]
    g, kp = padded_group(scheme, k)
    pmask = None if mask is None else _pad(mask, kp)
    mant, shift = _fixed_scales(_group_scales(_pad(w, kp), g, scheme.qmax, pmask))
    s = np.repeat(mant * np.exp2(-shift.astype(np.float64))[:, None], g, axis=1)[:, :k]
    codes = _quantize(w, s, scheme.qmax)
    if mask is not None:
        codes[~mask] = 0
    return QuantizedWeight(scheme, w.shape, codes.astype(np.int8), mant, shift, mask, name)


# ---- GPTQ / SparseGPT ---------------------------------------------------------------------------

def _inverse_cholesky(H, k: int, damp: float, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(U, dead): U upper triangular with U^T U = (H + d I)^-1, the damped Hessian's inverse.

    Dead inputs (H[i, i] == 0) get H[i, i] = 1. d = damp * mean(diag H); if a Cholesky fails, d is
    multiplied by 10 up to DAMP_RETRIES times before giving up."""
    H = np.array(H, dtype=np.float64)
    if H.shape != (k, k):
        raise QuantError(f"{where}H must be the [K, K] = [{k}, {k}] Hessian 2 X^T X, not shape {list(H.shape)}")
    if not np.isfinite(H).all():
        raise QuantError(f"{where}H has non-finite values (NaN or inf): the float model's inputs to this weight "
                         "are not finite on the calibration tokens")
    if not damp > 0:
        raise QuantError(f"{where}damp must be positive, not {damp!r}")
    H = (H + H.T) / 2
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    eye = np.eye(k)
    for attempt in range(DAMP_RETRIES + 1):
        d = damp * 10.0 ** attempt
        try:
            L = np.linalg.cholesky(H + d * np.mean(np.diag(H)) * eye)   # H = L L^T
            Linv = np.linalg.solve(L, eye)
            U = np.linalg.cholesky(Linv.T @ Linv).T                     # H^-1 = U^T U
        except np.linalg.LinAlgError:
            continue
        if np.isfinite(U).all() and (np.diag(U) > 0).all():
            return U, dead
    raise QuantError(f"{where}H is not positive definite even with damping {damp * 10.0 ** DAMP_RETRIES:g} * mean(diag H); "
                     "H must be 2 X^T X of the calibration inputs")


def _obs(W: np.ndarray, U: np.ndarray, scheme: QuantScheme, g: int, mant0: np.ndarray, shift: np.ndarray,
         mask: np.ndarray | None, prune: bool, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The column loop shared by GPTQ and SparseGPT (Frantar et al., Algorithm 1, lazy batches).

    Quantizes W [N, K] (updated in place) column by column, each column's error (w - q) / U[c, c]
    spread over the later columns by row c of U. With `prune`, the N:M mask of each M-block is
    chosen in `mask` (written in place) when the loop enters the block. Returns (codes, mant)."""
    N, K = W.shape
    qmax = scheme.qmax
    n, m = scheme.sparsity or (1, 1)
    pow2 = np.exp2(shift.astype(np.float64))
    dU = np.diag(U)
    codes = np.zeros((N, K), dtype=np.int8)
    mant = np.zeros((N, K // g), dtype=np.int64)
    s = None
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)

        def current(c0: int, c1: int, W1=W1, Err1=Err1, i1=i1, i2=i2) -> np.ndarray:
            """Error-updated values of the not yet quantized columns c0..c1-1 (c0 in this block):
            past the block they still lack the block's pending (lazy) update."""
            inner = W1[:, c0 - i1:min(c1, i2) - i1]
            if c1 <= i2:
                return inner
            return np.concatenate([inner, W[:, i2:c1] - Err1 @ U[i1:i2, i2:c1]], axis=1)

        for c in range(i1, i2):
            i = c - i1
            if prune and c % m == 0:
                mask[:, c:c + m] = _top_n(current(c, c + m) ** 2 / dU[c:c + m] ** 2, n, m)
            if c % g == 0:
                cur = current(c, c + g)
                if prune:        # provisional mask of the whole group, from the current weights
                    keep = _top_n(cur ** 2 / dU[c:c + g] ** 2, n, m)
                else:
                    keep = True if mask is None else mask[:, c:c + g]
                a = np.abs(np.where(keep, cur, 0.0)).max(axis=1) / qmax
                j = c // g
                mj = np.clip(round_half_away(a * pow2), 1, MANT_MAX).astype(np.int64)
                mant[:, j] = np.where(a > 0, mj, mant0[:, j])
                s = mant[:, j] / pow2
            w = W1[:, i]
            q = _quantize(w, s, qmax)
            if mask is not None:
                q[~mask[:, c]] = 0
            codes[:, c] = q
            err = (w - q * s) / U[c, c]
            W1[:, i:] -= np.outer(err, U[c, c:i2])
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return codes, mant


def _check_hessian(H, k: int, name: str) -> None:
    shape = np.shape(H)
    if shape != (k, k):
        where = f"{name}: " if name else ""
        raise QuantError(f"{where}H must be the [K, K] = [{k}, {k}] Hessian 2 X^T X, not shape {list(shape)}")


def _check_block(block) -> None:
    if not (isinstance(block, (int, np.integer)) and block > 0):
        raise QuantError(f"block must be a positive integer, not {block!r}")


def gptq(w: np.ndarray, H: np.ndarray, scheme: QuantScheme, mask: np.ndarray | None = None,
         damp: float = 0.01, block: int = 128, name: str = "") -> QuantizedWeight:
    """GPTQ / OPTQ (Frantar et al. 2022): quantize columns in K order, compensating each column's
    error on the columns not yet quantized through the inverse Hessian H^-1, H = 2 X^T X [K, K]
    from calibration inputs X [tokens, K].

    Dead inputs (H[i, i] == 0) are zeroed; damp * mean(diag H) is added to the diagonal (retried
    x10 if the Cholesky fails, then QuantError). Scales: the row shifts are fixed up front from the
    RTN scales of the original weights (`scale_multipliers`), since one shift serves all groups of
    a row; when the column loop enters a group, its mantissas are round(max |kept current w| / qmax
    * 2^shift) clipped to [1, 2^15 - 1] (from the error-updated weights, like the reference
    implementation with static_groups=False; a group that is all zero keeps its RTN mantissa).
    Codes are rounded against these exact scales. With a mask (or the magnitude mask of a sparse
    scheme when none is given), pruned weights are quantized to 0 and their error propagated.
    H = c * I gives exactly `rtn`.
    """
    w = _weight(w, scheme, name)
    _check_block(block)
    k = w.shape[1]
    g, kp = padded_group(scheme, k)
    _check_hessian(H, k, name)
    U, dead = _inverse_cholesky(_pad_hessian(np.asarray(H, np.float64), kp), kp, damp, f"{name}: " if name else "")
    w = _pad(w, kp)
    w[:, dead] = 0.0
    mask = _mask(mask, scheme, w[:, :k])
    pmask = None if mask is None else _pad(mask, kp)
    mant0, shift = _fixed_scales(_group_scales(w, g, scheme.qmax, pmask))
    codes, mant = _obs(w, U, scheme, g, mant0, shift, pmask, False, block)
    return QuantizedWeight(scheme, (w.shape[0], k), codes[:, :k], mant, shift, mask, name)


def sparsegpt(w: np.ndarray, H: np.ndarray, scheme: QuantScheme, damp: float = 0.01, block: int = 128,
              name: str = "") -> QuantizedWeight:
    """SparseGPT (Frantar & Alistarh 2023) with N:M sparsity, jointly with quantization.

    When the column loop enters an M-block, it keeps in each row the n weights of largest OBS
    saliency w^2 / U[k, k]^2 (current, error-updated weights; ties: lower index first); pruned
    weights become 0 and their error is propagated like a quantization error. Scales are handled as
    in `gptq`: row shifts up front (RTN scales of the magnitude-masked original weights), group
    mantissas when the loop enters a group, from the current weights under a provisional mask (the
    saliency top-n of every M-block of the group at that moment; the first M-block's is final).
    H = c * I gives exactly magnitude pruning + `rtn`.
    """
    if scheme.sparsity is None:
        raise QuantError(f"sparsegpt needs a sparse scheme (n:m), not {scheme}")
    w = _weight(w, scheme, name)
    _check_block(block)
    k = w.shape[1]
    g, kp = padded_group(scheme, k)
    _check_hessian(H, k, name)
    U, dead = _inverse_cholesky(_pad_hessian(np.asarray(H, np.float64), kp), kp, damp, f"{name}: " if name else "")
    w = _pad(w, kp)
    w[:, dead] = 0.0
    mant0, shift = _fixed_scales(_group_scales(w, g, scheme.qmax, nm_mask_magnitude(w, *scheme.sparsity)))
    mask = np.zeros(w.shape, dtype=bool)
    codes, mant = _obs(w, U, scheme, g, mant0, shift, mask, True, block)
    return QuantizedWeight(scheme, (w.shape[0], k), codes[:, :k], mant, shift, mask[:, :k], name)
