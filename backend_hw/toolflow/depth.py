"""Logic depth of a mapped Xilinx netlist (Yosys `write_json` after `synth_xilinx -flatten`).

The longest register-to-register path counted in LUT levels: LUT1..LUT6, INV and the LUT RAMs'
asynchronous reads (RAM32M/RAM64M/SRL address -> data) count one level each; MUXF7/8/9 and the
carry chain (CARRY4/CARRY8) count none (dedicated slice logic, tens of picoseconds a bit) but are
followed through; a DSP48E2 or block RAM whose output register is off counts one level (a flag:
its delay is several LUTs'). Paths start and end at flip-flops, registered DSP/RAM outputs and the
top's ports. Without Vivado there is no timing report for UltraScale+: this is the proxy (8
levels ~ 225 MHz), computed here in Python rather than with Yosys `ltp`, which does not know the
Xilinx primitives are registers.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Depth", "logic_depth"]

_LUTS = {"LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6", "INV"}
_FREE = {"MUXF7", "MUXF8", "MUXF9", "CARRY4", "CARRY8", "BUFG", "$scopeinfo"}
_FFS = {"FDRE", "FDSE", "FDCE", "FDPE"}
_LUTRAM_READ = {"RAM32M": "ADDR", "RAM32M16": "ADDR", "RAM64M": "ADDR", "RAM64M8": "ADDR",
                "SRL16E": "A", "SRLC32E": "A"}
_DSPS = {"DSP48E2", "DSP48E1"}


@dataclass(frozen=True)
class Depth:
    levels: int                        # LUT levels on the longest register-to-register path
    path: tuple[str, ...]              # its cells, source first (LUT-level cells only)
    unregistered: int                  # DSP cells whose outputs are not registered (PREG off)
    signals: tuple[str, ...] = ()      # the named design signals the path crosses, source first


    @property
    def units(self) -> tuple[str, ...]:
        """The design hierarchy the path crosses, in order: the module part of each named signal
        (`sfu.sfu.x1_0` -> `sfu.sfu`); top-level signals count as `top`."""
        out: list[str] = []
        for sig in self.signals:
            unit = sig.rpartition(".")[0] or "top"
            if not out or out[-1] != unit:
                out.append(unit)
        return tuple(out)


def _param_on(cell: dict, name: str) -> bool:
    v = cell.get("parameters", {}).get(name, "0")
    return int(v, 2) != 0 if isinstance(v, str) and set(v) <= {"0", "1"} else bool(v)


def logic_depth(netlist: dict, top: str) -> Depth:
    mod = netlist["modules"][top]
    driver: dict[int, tuple[str, list[int]]] = {}   # net bit -> (cell, the bits it combinationally depends on)
    weight: dict[str, int] = {}
    ends: list[int] = []                             # bits captured by a register, and the top's outputs
    unregistered = 0
    for name, c in mod["cells"].items():
        t, conns, dirs = c["type"], c["connections"], c.get("port_directions", {})

        def bits(pred):
            return [b for p, bb in conns.items() if pred(p) for b in bb if isinstance(b, int)]
        ins, outs = bits(lambda p: dirs.get(p) == "input"), bits(lambda p: dirs.get(p) == "output")
        if t in _FFS or t.startswith("RAMB") or (t in _DSPS and _param_on(c, "PREG")):
            ends += ins                                # registered: paths end at its inputs, start at its outputs
            continue
        if t in ("BUFG", "$scopeinfo"):
            continue
        if t in _LUTRAM_READ:
            ends += ins                                # the write side is clocked
            ins = bits(lambda p: p.startswith(_LUTRAM_READ[t]))
        if t in _DSPS:
            unregistered += 1
        weight[name] = 0 if t in _FREE else 1          # LUTs, LUT RAM reads, unregistered DSPs, anything else
        for b in outs:
            driver[b] = (name, ins)
    for p in mod.get("ports", {}).values():
        if p["direction"] == "output":
            ends += [b for b in p["bits"] if isinstance(b, int)]

    levels: dict[int, int] = {}                      # bit -> LUT levels from a start point
    via: dict[int, int | None] = {}                  # bit -> the input bit of its longest path
    for end in ends:                                 # iterative depth-first search, post-order
        stack, on_stack = [end], set()
        while stack:
            b = stack[-1]
            if b in levels:
                stack.pop()
                continue
            d = driver.get(b)
            if d is None:
                levels[b], via[b] = 0, None
                stack.pop()
                continue
            todo = [i for i in d[1] if i not in levels]
            if todo and b not in on_stack:
                on_stack.add(b)
                for i in todo:
                    if i in on_stack:
                        raise ValueError(f"combinational loop through {driver[i][0]}")
                stack.extend(todo)
                continue
            on_stack.discard(b)
            src = max(d[1], key=lambda i: levels[i], default=None)
            levels[b] = (levels[src] if src is not None else 0) + weight[d[0]]
            via[b] = src
            stack.pop()
    best = max(ends, key=lambda b: levels[b], default=None)
    path, bits, b = [], [], best
    while b is not None:
        bits.append(b)
        if b not in driver:
            break
        if weight[driver[b][0]]:
            path.append(driver[b][0])
        b = via[b]
    return Depth(levels[best] if best is not None else 0, tuple(reversed(path)), unregistered,
                 _signals(mod, reversed(bits)))


def _signals(mod: dict, bits) -> tuple[str, ...]:
    """The user-visible names of `bits` (ABC renames the cells it maps, but the nets of named
    signals keep their names), repeats dropped: which registers and wires a path runs through."""
    name_of: dict[int, str] = {}
    for name, net in sorted(mod.get("netnames", {}).items()):
        if net.get("hide_name"):
            continue
        for b in net["bits"]:
            if isinstance(b, int) and b not in name_of:
                name_of[b] = name.replace("\\", "")
    out: list[str] = []
    for b in bits:
        n = name_of.get(b)
        if n and (not out or out[-1] != n):
            out.append(n)
    return tuple(out)
