"""`llmfab execute BUILD --tokens "..." --out logits.npy`: run a build's programs on the functional
model (simulator/functional.py) from its weight images: the prompt in chunks of the build's
prefill step (one prefill program run each), then one decode step per `--generate` token
(greedy), and write the prompt's logits."""
from __future__ import annotations

import numpy as np

from llmfab.ir.fixed_point import from_fixed
from llmfab.ir.host import require
from llmfab.ir.isa import BufferId, prompt_chunks
from llmfab.ir.memory import Region

from .functional import Machine


class ExecuteError(ValueError):
    pass


def run_prompt(machine: Machine, ids: np.ndarray, step: int, program_for) -> None:
    """The host's prefill: per chunk, its ids at act[0] (a padded tail reads id 0), LEN = the chunk's
    end, then the program `program_for(LEN)` serves; the KV cache and logits rows fill in HBM."""
    for first, end in prompt_chunks(len(ids), step):
        chunk = np.zeros(step, "<i4")
        part = ids[first:end]
        chunk[:len(part)] = part
        machine.write(BufferId.ACT, 0, chunk.tobytes())
        machine.run(program_for(end), end)


def execute(build, tokens: np.ndarray, generate: int = 0) -> tuple[np.ndarray, list[int]]:
    """Logits [1, L, vocab] (float32) of the prompt, and `generate` greedily decoded token ids, of
    `build` (a `llmfab.build.Build`: `.manifest`, `.target`, `.images()`, `.program_for`)."""
    logits, generated = _execute(build, tokens, generate)
    return from_fixed(logits).astype(np.float32)[None], generated


def prompt_logits(build, tokens: np.ndarray) -> np.ndarray:
    """The prompt's logits [L, vocab] as float64, exactly the Q.16 values / 2^16 (as
    `run_integer`'s): perplexities from them equal the integer model's to the last digit."""
    return from_fixed(_execute(build, tokens, 0)[0])


def _execute(build, tokens: np.ndarray, generate: int) -> tuple[np.ndarray, list[int]]:
    """The prompt's raw Q.16 logits [L, vocab] (int64) and the generated ids."""
    m = build.manifest
    if not m["weights"]:
        raise ExecuteError(f"{build.path}: a config-only build has no weight images to execute")
    ids = np.asarray(tokens, np.int64).ravel()
    vocab = m["output"]["vocab"]
    if ids.size == 0 or ids.size + generate > m["max_len"]:
        raise ExecuteError(f"{ids.size} prompt tokens + {generate} generated must fit max_len {m['max_len']}")
    if ids.min() < 0 or ids.max() >= vocab:
        raise ExecuteError(f"token ids must be in [0, {vocab}), got {ids.min()}..{ids.max()}")
    channels, per_channel = len(m["weights"]), m["hbm"]["bytes_per_channel"]
    require(channels * per_channel + sum(build.target.buffer_bytes.values()),
            f"{build.path}/manifest.json: {channels} HBM channels of {per_channel:,} bytes (hbm.bytes_per_channel)")
    machine = Machine.for_target(build.target, build.images(), per_channel)
    o = m["output"]
    out = Region(o["addr"], o["channel"], o["channels"], o["row_bytes"], o["rows"])

    def row(r: int) -> np.ndarray:
        return np.frombuffer(machine.read_row(out, r), "<i4")[:vocab].astype(np.int64)

    run_prompt(machine, ids, m["prefill_step"], lambda end: build.program_for("prefill", end))
    logits = np.stack([row(r) for r in range(ids.size)])
    generated = []
    last = logits[-1]
    for _ in range(generate):
        nxt = int(np.argmax(last))
        generated.append(nxt)
        length = ids.size + len(generated)
        machine.write(BufferId.ACT, 0, np.array([nxt], "<i4").tobytes())
        machine.run(build.program_for("decode", length), length)
        last = row(0)
    return logits, generated
