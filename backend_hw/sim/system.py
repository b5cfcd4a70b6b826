"""`SimSystem`: the accelerator with one `AxiRam` per memory channel, a closed design that runs a
compiled program in Verilator (or amaranth.sim) with no Python model in the loop.

    host port ---------------------+
    start, length -> Accelerator --+-- axi[c] <-> AxiRam[c]  (dbg port: load / read out)

The buffers (the program in INST, the token ids in ACT, ...) and the channel images are either
preloaded (`buffers`, `hbm_images` as bytes: baked into the Verilog) or written at run time
through `host` and the RAMs' debug port (`hbm_images` as sizes): then one Verilator build serves
every program and state of the same model, and read-out after the run uses the same ports.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from llmfab.ir.isa import QUEUE_OF, BufferId, Opcode, Program, Queue, SysFunc, encode, op_name
from llmfab.ir.target import Target

from ..accelerator import DEFAULT_FORMATS, Accelerator
from ..buffers import buffer_ids, data_width
from ..protocol.buffer_port import BufferPortSignature
from ..toolflow.verilator import SimRun, VerilatorError, VerilatorSim
from .axi_ram import AxiRam

__all__ = ["SimSystem", "SystemRun", "VerilatorSystem", "system_verilog"]

TOP = "sim_system"


class SimSystem(wiring.Component):
    """`hbm_images`: one entry per memory channel, the channel's bytes (preloaded; the RAM is that
    size rounded up to a beat) or an int (the RAM's size in bytes, zero-filled); `buffers`:
    BufferId -> bytes preloaded into the accelerator's buffers.

    Ports: `start`, `length` (32), `running`, `halted`, `error` (the accelerator's); `axi_error`
    (a RAM saw a burst it does not serve); `host` (the accelerator's buffer host port: `buf`,
    `addr` word address, `re`, `we`, `be`, `wdata`, `rdata` one cycle after `re`); `dbg_chan`
    (which RAM), `dbg_addr` (word address), `dbg_we`, `dbg_wdata`, `dbg_data` (one cycle after)."""

    def __init__(self, target: Target, formats=DEFAULT_FORMATS, hbm_images=None, buffers=None,
                 organisation: str = "ports"):
        if not isinstance(target, Target):
            raise TypeError(f"target must be a Target, not {target!r}")
        channels = target.memory.channels
        if hbm_images is None or len(hbm_images) != channels:
            raise ValueError(f"hbm_images must give one image or size per memory channel ({channels}), "
                             f"not {hbm_images!r:.60}")
        self.accelerator = Accelerator(target, formats, init=dict(buffers or {}), buffers=organisation)
        width = target.memory.port_width_bits
        beat = width // 8
        self.rams = []
        for img in hbm_images:
            size = img if isinstance(img, int) else len(img)
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ValueError(f"a channel image must be bytes or a positive size, not {img!r:.60}")
            size += -size % beat
            self.rams.append(AxiRam(size, width, self.accelerator.dma_load.addr_width,
                                    init=b"" if isinstance(img, int) else bytes(img)))
        dbg_aw = max(r.dbg_addr.shape().width for r in self.rams)
        super().__init__({"start": In(1), "length": In(32), "running": Out(1), "halted": Out(1),
                          "error": Out(1), "axi_error": Out(1), "issued": Out(4), "completed": Out(4),
                          "host": In(BufferPortSignature(data_width(target))),
                          "dbg_chan": In(max(1, (channels - 1).bit_length())), "dbg_addr": In(dbg_aw),
                          "dbg_we": In(1), "dbg_wdata": In(width), "dbg_data": Out(width)})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.accelerator = acc = self.accelerator
        m.d.comb += [acc.start.eq(self.start), acc.length.eq(self.length), self.running.eq(acc.running),
                     self.halted.eq(acc.halted), self.error.eq(acc.error),
                     self.issued.eq(acc.issued), self.completed.eq(acc.completed)]
        wiring.connect(m, wiring.flipped(self.host), acc.host)
        connect_rams(m, self, acc.axi)
        return m


def connect_rams(m: Module, top, axi) -> None:
    """`top.rams` on the AXI ports `axi` (one a channel), and `top`'s debug port on them: the host
    reads and writes channel `dbg_chan`'s memory; `axi_error` when any RAM saw a bad request."""
    chan = Signal.like(top.dbg_chan)
    m.d.sync += chan.eq(top.dbg_chan)                  # which RAM answers next cycle
    for k, ram in enumerate(top.rams):
        m.submodules[f"ram{k}"] = ram
        wiring.connect(m, axi[k], ram.axi)
        m.d.comb += [ram.dbg_addr.eq(top.dbg_addr), ram.dbg_wdata.eq(top.dbg_wdata),
                     ram.dbg_we.eq(top.dbg_we & (top.dbg_chan == k))]
        with m.If(chan == k):
            m.d.comb += top.dbg_data.eq(ram.dbg_data)
    m.d.comb += top.axi_error.eq(Cat(*(r.error for r in top.rams)).any())


def _cache_root(cache_dir) -> Path:
    return Path(cache_dir) if cache_dir is not None else \
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmfab" / "verilator"


def _sources(start: Path) -> list[Path]:
    """`start` and every llmfab module it imports, transitively (by its `import` lines)."""
    root = start.parent.parent                     # the package root: backend_hw/, ir/, ...
    seen, todo = set(), [start]
    while todo:
        f = todo.pop()
        if f in seen or not f.is_file():
            continue
        seen.add(f)
        for rel, name in re.findall(r"^\s*from\s+(\.+|llmfab\.)([\w.]*)\s+import", f.read_text(), re.M):
            base = f.parent if rel.startswith(".") else root
            for _ in range(len(rel) - 1 if rel.startswith(".") else 0):
                base = base.parent
            path = base.joinpath(*name.split(".")) if name else base
            todo += [path.with_suffix(".py"), path / "__init__.py"]
    return sorted(seen)


def system_verilog(target: Target, formats, channel_bytes: list[int], *, cache_dir=None,
                   organisation: str = "ports") -> str:
    """The Verilog of `SimSystem(target, formats, channel_bytes)` (run-time loaded, no init), cached
    on disk: Amaranth takes ~40 s to convert it. The key covers the target, the formats, the sizes,
    the Amaranth version and the source of every module the design is elaborated from
    (backend_hw/ and ir/), so an edit there converts again."""
    import amaranth
    from amaranth.back import verilog
    h = hashlib.sha256(repr((target, tuple(formats), tuple(channel_bytes), organisation,
                             amaranth.__version__)).encode())
    for f in _sources(Path(__file__).resolve()):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    path = _cache_root(cache_dir) / "verilog" / f"{TOP}-{h.hexdigest()[:20]}.v"
    if path.is_file():
        return path.read_text()
    text = verilog.convert(SimSystem(target, formats, list(channel_bytes), organisation=organisation), name=TOP)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return text


@dataclass(frozen=True)
class SystemRun:
    hbm: list[bytes]                    # every channel's bytes after the run (its `channel_bytes`)
    buffers: dict[BufferId, bytes]      # every buffer's bytes after the run (INST included)
    cycles: int                         # from the `start` cycle to the first cycle `halted` is seen
    sim: SimRun                         # the raw run (cycles simulated, seconds, cycles_per_second)
    # per executed instruction: (index, queue, opcode or function, cycle its unit took it, cycle it
    # finished), cycles from `start`; the units report in order, so the k-th of a queue pairs up
    trace: tuple = ()


class VerilatorSystem:
    """A `SimSystem` built in Verilator with run-time loading: one build (cached) runs any program
    of a model from any state. `channel_bytes`: the size of each channel's RAM."""

    def __init__(self, target: Target, formats=DEFAULT_FORMATS, channel_bytes: list[int] | None = None, *,
                 cache_dir=None, organisation: str = "ports"):
        beat = target.memory.beat_bytes
        if channel_bytes is None or len(channel_bytes) != target.memory.channels:
            raise ValueError(f"channel_bytes must give one size per memory channel ({target.memory.channels}), "
                             f"not {channel_bytes!r}")
        if data_width(target) > 64:
            raise ValueError(f"VerilatorSystem loads buffers up to 64 bits wide, not {data_width(target)}")
        self.target, self.beat = target, beat
        self.sizes = list(channel_bytes)                    # what `run` gives back of each channel
        self.channel_bytes = [n + -n % beat for n in channel_bytes]   # the RAMs: whole beats
        t0 = time.perf_counter()
        verilog = system_verilog(target, formats, self.channel_bytes, cache_dir=cache_dir, organisation=organisation)
        self.verilog_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.vsim = VerilatorSim(verilog, TOP, cache_dir=cache_dir)
        self.build_seconds = time.perf_counter() - t0

    def run(self, program: Program, length: int, hbm: list[bytes], buffers: dict[BufferId, bytes], *,
            max_cycles: int) -> SystemRun:
        """Load `buffers` (INST gets `program`) and the channel images, pulse `start` with LEN =
        `length`, run `max_cycles` cycles, read everything back. Raises VerilatorError if the
        program did not halt within `max_cycles` or the accelerator or a RAM flagged an error."""
        ids = buffer_ids(self.target)
        init = {b: bytes(v) for b, v in buffers.items() if b is not BufferId.INST}
        init[BufferId.INST] = b"".join(encode(i) for i in program.instructions)
        for b, raw in init.items():
            if b not in ids or len(raw) > ids[b][0]:
                raise ValueError(f"{b.name} image of {len(raw)} bytes does not fit the buffer")
        if len(hbm) != len(self.channel_bytes) or any(len(h) > n for h, n in zip(hbm, self.channel_bytes)):
            raise ValueError("hbm must give one image per channel, each within its RAM")
        buf_words = {b: nbytes * 8 // w for b, (nbytes, w) in ids.items()}
        ram_words = [n // self.beat for n in self.channel_bytes]
        n_buf, n_ram = sum(buf_words.values()), sum(ram_words)
        start = n_buf + n_ram
        total = start + 1 + max_cycles + n_buf + n_ram + 1
        v = {name: np.zeros(total, dtype=np.int64) for name in
             ("host__buf", "host__addr", "host__re", "host__we", "host__be", "host__wdata",
              "dbg_chan", "dbg_addr", "dbg_we", "start", "length")}
        wdata = [0] * total
        # load: every buffer word through the host port, then every RAM word through the debug port
        at = 0
        for b, depth in buf_words.items():
            w = ids[b][1] // 8
            raw = init.get(b, b"").ljust(depth * w, b"\0")
            sl = slice(at, at + depth)
            v["host__buf"][sl], v["host__addr"][sl], v["host__we"][sl] = int(b), np.arange(depth), 1
            v["host__be"][sl] = (1 << w) - 1
            v["host__wdata"][sl] = np.frombuffer(raw, f"<u{w}").astype(np.int64)
            at += depth
        for k, depth in enumerate(ram_words):
            raw = bytes(hbm[k]).ljust(depth * self.beat, b"\0")
            sl = slice(at, at + depth)
            v["dbg_chan"][sl], v["dbg_addr"][sl], v["dbg_we"][sl] = k, np.arange(depth), 1
            wdata[at:at + depth] = [int.from_bytes(raw[i:i + self.beat], "little") for i in range(0, len(raw), self.beat)]
            at += depth
        v["start"][start] = 1
        v["length"][start:] = length
        # read out after the run: each word's data comes one cycle after its address
        at = rd = start + 1 + max_cycles
        for b, depth in buf_words.items():
            sl = slice(at, at + depth)
            v["host__buf"][sl], v["host__addr"][sl], v["host__re"][sl] = int(b), np.arange(depth), 1
            at += depth
        for k, depth in enumerate(ram_words):
            sl = slice(at, at + depth)
            v["dbg_chan"][sl], v["dbg_addr"][sl] = k, np.arange(depth)
            at += depth
        run = self.vsim.run({**v, "dbg_wdata": wdata}, total,
                            outputs=("error", "axi_error", "halted", "host__rdata", "dbg_data", "issued", "completed"))
        out = run.outputs
        for flag in ("error", "axi_error"):
            if np.any(out[flag][start:rd]):
                raise VerilatorError(f"{flag} rose at cycle {int(np.argmax(out[flag][start:rd] != 0))} after start")
        halted = np.nonzero(out["halted"][start + 1:rd])[0]
        if len(halted) == 0:
            raise VerilatorError(f"the program did not halt within {max_cycles} cycles")
        got, at = {}, rd + 1
        rdata = out["host__rdata"]
        for b, depth in buf_words.items():
            w = ids[b][1] // 8
            words = (rdata[at:at + depth] & np.uint64((1 << 8 * w) - 1)).astype(f"<u{w}")
            got[b] = words.tobytes()
            at += depth
        mem = []
        for depth, size in zip(ram_words, self.sizes):
            mem.append(b"".join(int(x).to_bytes(self.beat, "little") for x in out["dbg_data"][at:at + depth])[:size])
            at += depth
        trace = _trace(program, out["issued"][start:rd], out["completed"][start:rd])
        return SystemRun(hbm=mem, buffers=got, cycles=int(halted[0]) + 1, sim=run, trace=trace)


def _trace(program: Program, issued, completed) -> tuple:
    """Pair each queued instruction (in program order per queue, up to END) with the cycles its
    unit took and finished it."""
    out = []
    for q in Queue:
        bit = int(q).bit_length() - 1
        took = np.nonzero(np.asarray(issued, dtype=np.int64) >> bit & 1)[0]
        done = np.nonzero(np.asarray(completed, dtype=np.int64) >> bit & 1)[0]
        mine = []
        for k, inst in enumerate(program.instructions):
            if inst.op is Opcode.SYS and inst["func"] is SysFunc.END:
                break
            if QUEUE_OF[inst.op] is q:
                mine.append((k, inst))
        for (k, inst), a, b in zip(mine, took, done):
            out.append((k, q.name.lower(), op_name(inst), int(a), int(b)))
    return tuple(sorted(out))
