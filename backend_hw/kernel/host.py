"""What a host runner does with a compiled build on the Vitis kernel, as data (no XRT here:
llmfab/run_xrt.py makes the calls, tests check the plan against the manifest and kernel.xml).

- `buffers`: one device buffer per memory channel k (`hbm<k>`: the build's image k, zero
  padded to `hbm.bytes_per_channel`), in the bank link.cfg connects m_axi_hbm<k> to; on
  m_axi_hbm0's bank a `programs` buffer (every program's instruction words, each at a 4 KiB
  aligned offset) and a `tokens` buffer (one prefill chunk of int32 ids). Each buffer is
  allocated for the argument it is reached through (`arg`: XRT's `kernel.group_id(index)`).
- `prefill(ids)` / `decode(length, token)`: the runs of a prompt (the chunks of
  `ir.isa.prompt_chunks`, as `simulator.execute` runs them) and of one decode step: LEN, the
  program file, the token bytes to write at the start of `tokens`.
- `arguments(run)`: every argument the host sets, in kernel.xml's order: an int, or a
  `Slice(buffer, offset, size)` of a device buffer for a pointer.
- `logits(row)`: the slices of the channel buffers holding output row `row` (the prompt's rows
  after a prefill, row 0 after a decode step), to join and read as int32 Q.16.
- `drive(plan, start, read, ids, generate)`: the host loop over any kernel given its `start(run)`
  and `read(slices)`: XRT's (run_xrt.py) or, in the tests, the kernel's contract on the
  functional simulator.

The KV cache is part of the channel images and stays on the card between runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmfab.ir.isa import BufferId, prompt_chunks, program_header
from llmfab.ir.memory import AXI_PAGE_BYTES, Region

from ..buffers import buffer_ids
from .args import KernelArg, bundle, bundle_banks, kernel_args

__all__ = ["DeviceBuffer", "HostPlan", "Run", "Slice", "drive", "host_plan"]


def _pages(n: int) -> int:
    return -(-max(n, 1) // AXI_PAGE_BYTES) * AXI_PAGE_BYTES


@dataclass(frozen=True)
class DeviceBuffer:
    name: str
    arg: KernelArg       # allocated in the bank of this argument's bundle
    bank: str            # that bank, as link.cfg names it (HBM[k] / DDR[k])
    size: int            # bytes, whole 4 KiB pages
    contents: bytes      # copied to offset 0 before the first run


@dataclass(frozen=True)
class Slice:
    buffer: str
    offset: int
    size: int


@dataclass(frozen=True)
class Run:
    length: int
    program: str         # the program file (manifest "file")
    tokens: bytes        # int32 ids written at the start of the tokens buffer


@dataclass(frozen=True)
class HostPlan:
    target: object
    args: tuple[KernelArg, ...]
    buffers: tuple[DeviceBuffer, ...]
    programs: dict[str, Slice]     # program file -> its instruction words in `programs`
    entries: tuple[dict, ...]      # the manifest's program entries
    prefill_step: int
    output: Region
    vocab: int
    max_len: int

    def buffer(self, name: str) -> DeviceBuffer:
        return next(b for b in self.buffers if b.name == name)

    def _program(self, stage: str, length: int) -> str:
        for e in self.entries:
            if e["stage"] == stage and e["bucket"][0] <= length <= e["bucket"][1]:
                return e["file"]
        raise ValueError(f"the build has no {stage} program for length {length} (max_len {self.max_len})")

    def prefill(self, ids) -> list[Run]:
        ids = np.asarray(ids, np.int64).ravel()
        if not 0 < ids.size <= self.max_len:
            raise ValueError(f"a prompt of {ids.size} tokens: the build takes 1 to {self.max_len}")
        out = []
        for first, end in prompt_chunks(ids.size, self.prefill_step):
            chunk = np.zeros(self.prefill_step, "<i4")
            part = ids[first:end]
            chunk[:len(part)] = part
            out.append(Run(end, self._program("prefill", end), chunk.tobytes()))
        return out

    def decode(self, length: int, token: int) -> Run:
        if not 1 < length <= self.max_len:
            raise ValueError(f"a decode step at length {length}: the build takes up to {self.max_len}")
        return Run(length, self._program("decode", length), np.array([token], "<i4").tobytes())

    def arguments(self, run: Run) -> list[tuple[KernelArg, int | Slice]]:
        prog = self.programs[run.program]
        values = {"length": run.length, "program": prog, "program_bytes": prog.size,
                  "tokens": Slice("tokens", 0, len(run.tokens)), "tokens_bytes": len(run.tokens)}
        for b in self.buffers:
            if b.name.startswith("hbm"):
                values[b.name] = Slice(b.name, 0, b.size)
        return [(a, values[a.name]) for a in self.args if not a.readonly]

    def register_values(self, run: Run, address: dict[str, int]) -> dict[str, int]:
        """The arguments as numbers, each buffer at device address `address[name]` (for a host
        that writes the registers itself, as the Verilator test does)."""
        return {a.name: v if isinstance(v, int) else address[v.buffer] + v.offset for a, v in self.arguments(run)}

    def logits(self, row: int) -> list[Slice]:
        o = self.output
        if not 0 <= row < o.rows:
            raise ValueError(f"output row {row} outside the build's {o.rows} rows")
        return [Slice(f"hbm{o.channel + c}", o.addr + row * o.pitch, o.pitch) for c in range(o.channels)]

    def row_values(self, data: bytes) -> np.ndarray:
        """The raw int32 Q.16 logits of a row read from `logits(row)`'s slices, joined."""
        return np.frombuffer(data, "<i4")[:self.vocab].astype(np.int64)


def host_plan(target, manifest: dict, programs: dict[str, bytes], images: list[bytes]) -> HostPlan:
    """The plan for a build: its `manifest` (manifest.json, checked by `llmfab.build.Build`), its
    program files by manifest name, its channel images. Refuses what the kernel cannot run: a
    build without weights, a program larger than the INST buffer (the loader would cut it), a
    prefill chunk larger than ACT."""
    channels = target.memory.channels
    if len(images) != channels:
        raise ValueError(f"the build has {len(images)} weight images; the kernel runs a build with one per "
                         f"memory channel ({channels}): compile it with weights")
    args = kernel_args(target)
    by_name = {a.name: a for a in args}
    banks = bundle_banks(target)
    ids = buffer_ids(target)
    inst_cap, act_cap = ids[BufferId.INST][0], ids[BufferId.ACT][0]
    per_channel = manifest["hbm"]["bytes_per_channel"]
    code, slices = bytearray(), {}
    for e in manifest["programs"]:
        data = programs[e["file"]]
        _, head, _ = program_header(data)
        words = data[head:]
        if len(words) > inst_cap:
            raise ValueError(f"program {e['file']} has {len(words):,} bytes of instructions; the kernel's INST buffer "
                             f"holds {inst_cap:,} (target {target.name}): the loader would cut it")
        slices[e["file"]] = Slice("programs", len(code), len(words))
        code += words
        code += bytes(-len(code) % AXI_PAGE_BYTES)
    step = manifest["prefill_step"]
    if 4 * step > act_cap:
        raise ValueError(f"a prefill chunk of {step} token ids needs {4 * step} bytes; ACT holds {act_cap}")
    buffers = [DeviceBuffer(f"hbm{k}", by_name[f"hbm{k}"], banks[bundle(k)], _pages(per_channel), images[k])
               for k in range(channels)]
    buffers += [DeviceBuffer("programs", by_name["program"], banks[bundle(0)], _pages(len(code)), bytes(code)),
                DeviceBuffer("tokens", by_name["tokens"], banks[bundle(0)], _pages(4 * step), b"")]
    for b in buffers:
        if len(b.contents) > b.size:
            raise ValueError(f"channel image {b.name} has {len(b.contents):,} bytes, more than the build's "
                             f"hbm.bytes_per_channel {per_channel:,}")
    o = manifest["output"]
    out = Region(o["addr"], o["channel"], o["channels"], o["row_bytes"], o["rows"])
    return HostPlan(target, args, tuple(buffers), slices, tuple(manifest["programs"]), step, out, o["vocab"],
                    manifest["max_len"])


def drive(plan: HostPlan, start, read, ids, generate: int = 0) -> tuple[np.ndarray, list[int], list]:
    """The host's loop over any kernel: `start(run)` writes the run's token ids, sets the
    arguments, runs and returns what it reports (kept in order); `read(slices)` returns the bytes
    of those buffer slices, joined. Returns the prompt's raw Q.16 logits [L, vocab] (int64), the
    `generate` greedily decoded ids, and the reports: `simulator.execute`'s protocol exactly."""
    ids = np.asarray(ids, np.int64).ravel()
    if ids.size + generate > plan.max_len:
        raise ValueError(f"{ids.size} prompt tokens + {generate} generated must fit max_len {plan.max_len}")
    if ids.size and (ids.min() < 0 or ids.max() >= plan.vocab):
        raise ValueError(f"token ids must be in [0, {plan.vocab}), got {ids.min()}..{ids.max()}")
    reports = [start(r) for r in plan.prefill(ids)]
    logits = np.stack([plan.row_values(read(plan.logits(r))) for r in range(ids.size)])
    generated, last = [], logits[-1]
    for _ in range(generate):
        generated.append(int(np.argmax(last)))
        reports.append(start(plan.decode(ids.size + len(generated), generated[-1])))
        last = plan.row_values(read(plan.logits(0)))
    return logits, generated, reports
