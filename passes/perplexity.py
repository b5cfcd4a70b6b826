"""Perplexity on an evaluation set of token ids: the measurement `quantize --eval` and
`execute --eval` report.

An evaluation set is a `.npy` file of integer token ids `[sequences, length]` (read with
`allow_pickle=False`: never unpickled). Each sequence is run on its own from an empty KV cache;
position t's logits predict token t + 1, so a sequence of L tokens makes L - 1 predictions, and
perplexity is exp of the mean negative log-likelihood over every prediction of every sequence,
computed in float64 from the logits (for the integer model and the simulator, the exact Q.16
values `q / 2^16`, so equal logits give equal perplexities to the last digit).
"""
from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np


class EvalDataError(ValueError):
    pass


@dataclass(frozen=True)
class EvalSet:
    path: str
    ids: np.ndarray            # int64 [sequences, length]

    @property
    def sequences(self) -> int:
        return int(self.ids.shape[0])

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])

    def check(self, vocab: int, max_len: int | None, what: str) -> None:
        """Every id in [0, vocab) and sequences no longer than `max_len` (`what` names that limit)."""
        lo, hi = int(self.ids.min()), int(self.ids.max())
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            r, c = (int(v[0]) for v in np.nonzero(self.ids == bad))
            raise EvalDataError(f"{self.path}: token id {bad} at [{r}, {c}] is outside the model's vocabulary "
                                f"[0, {vocab})")
        if max_len is not None and self.length > max_len:
            raise EvalDataError(f"{self.path}: sequences of {self.length} tokens are longer than {what} ({max_len})")


def load_eval(path: str) -> EvalSet:
    """The evaluation set in `path`, checked for shape and dtype (ids against a model: `EvalSet.check`)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise EvalDataError(f"{path}: cannot read the evaluation set ({e.strerror or e})") from None
    if magic != b"\x93NUMPY":
        kind = "an .npz archive" if zipfile.is_zipfile(path) else "not a .npy file"
        raise EvalDataError(f"{path}: {kind}; --eval takes one .npy array of token ids [sequences, length]")
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        why = "it holds Python objects" if "allow_pickle" in str(e) else str(e).rstrip(".")
        raise EvalDataError(f"{path}: not a .npy array of token ids ({why})") from None
    if a.dtype.kind not in "iu":
        raise EvalDataError(f"{path}: token ids must be integers, not {a.dtype} (an array [sequences, length])")
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 2:
        raise EvalDataError(f"{path}: token ids must be [sequences, length] with length >= 2, not shape {list(a.shape)}")
    if a.dtype.kind == "u" and int(a.max()) > np.iinfo(np.int64).max:
        raise EvalDataError(f"{path}: token id {int(a.max())} does not fit int64")
    return EvalSet(path, np.ascontiguousarray(a, dtype=np.int64))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p over the last axis of `logits` [positions, vocab], in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll_sum(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """(sum of -log p(ids[t+1] | logits[t]) over t, number of predictions) of one sequence:
    `logits` [L, vocab] (float64), `ids` [L]."""
    logp = log_softmax(np.asarray(logits, np.float64)[:-1])
    return -float(logp[np.arange(len(logp)), ids[1:]].sum()), len(logp)


def perplexity(data: EvalSet, logits_of: Callable[[np.ndarray], np.ndarray],
               sequences: Iterable[int] | None = None) -> float:
    """exp(mean NLL) over the sequences of `data`; `logits_of(ids [1, L])` -> logits [L, vocab]."""
    total, count = 0.0, 0
    for i in range(data.sequences) if sequences is None else sequences:
        ids = data.ids[i]
        s, n = nll_sum(logits_of(ids[None]), ids)
        total, count = total + s, count + n
    return math.exp(total / count)


def _tokens(g):
    from llmfab.ir import InputRole
    return next(n for n in g.inputs() if n.attrs.role is InputRole.TOKENS)


def bound_length(g) -> int:
    """The sequence length a fused graph is bound to (its token input's last dimension)."""
    return int(_tokens(g).type.shape[-1])


def graph_vocab(g) -> int:
    """The vocabulary of a fused graph: the rows of the table its token ids index."""
    from llmfab.ir import OpKind
    tok = _tokens(g)
    return next(g.node(u.inputs[0]).type.shape[0] for u in g.users(tok.name) if u.op is OpKind.EMBEDDING)


def position_limit(g) -> int | None:
    """The positions a learned position table gives (GPT-2, OPT: its rows less the offset of the
    first position id), or None when the graph has none (RoPE: no limit the file records)."""
    from llmfab.ir import OpKind
    limits = []
    for n in g.nodes():
        if n.op is OpKind.EMBEDDING and g.node(n.inputs[1]).op is OpKind.CONST:
            ids = g.node(n.inputs[1]).data
            if ids.has_values:
                limits.append(g.node(n.inputs[0]).type.shape[0] - int(np.asarray(ids.numpy()).min()))
    return min(limits, default=None)


def model_perplexities(g, q, data: EvalSet, *, integer: bool = True) -> tuple[float, float]:
    """(float perplexity of the fused float graph `g`, perplexity of the quantized model): `g` bound
    to the evaluation length; `q` the policy's quantized graph (at any length: its parameters are put
    into a copy of `g`, by name: passes.quantize.adopt_parameters). `integer`: the integer model (int8 activations and KV
    cache); else dequantized weights with float activations."""
    from llmfab.ir import run
    from llmfab.ir.integer import run_integer

    from .quantize import adopt_parameters, feeds_for

    qe = g.copy()
    adopt_parameters(qe, q)
    run_q = run_integer if integer else run

    def logits(graph, runner):
        return lambda ids: np.asarray(runner(graph, feeds_for(graph, ids))["logits"], np.float64)[0]

    return perplexity(data, logits(g, run)), perplexity(data, logits(qe, run_q))
