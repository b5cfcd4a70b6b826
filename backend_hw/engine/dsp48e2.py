"""One DSP chain stage as a Xilinx UltraScale+ DSP48E2 (UG579), and its simulation model.

Yosys maps a behavioural multiply-add chain for `-family xcup` to DSP48E2 multipliers with the
adders in fabric, so the chain instantiates the primitive itself. Only two modes are used:

| opmode        | W | Z    | Y | X | P (registered)                         |
|---------------|---|------|---|---|----------------------------------------|
| `OPMODE_M`    | 0 | 0    | M | M | `A * B` (first stage of a group)        |
| `OPMODE_PCIN` | 0 | PCIN | M | M | `PCIN + A * B` (every later stage)      |

Registers: AREG = BREG = 1 (A2/B2), MREG = 1, PREG = 1, so P holds the product of the A and B
presented three cycles earlier (plus the PCIN presented one cycle earlier). ALUMODE, INMODE,
CARRYINSEL and OPMODE are constants, so their registers are off. The caller sign-extends A to 30
bits and B to 18 bits: the multiplier reads A[26:0] and B[17:0] as signed.
"""
from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

OPMODE_M = 0b00_000_01_01      # W=0, Z=0, Y=M, X=M
OPMODE_PCIN = 0b00_001_01_01   # W=0, Z=PCIN, Y=M, X=M
OPMODES = (OPMODE_M, OPMODE_PCIN)
LATENCY = 3                    # A/B to P: the A2/B2, M and P registers


def _check_opmode(opmode) -> None:
    if opmode not in OPMODES:
        raise ValueError(f"opmode must be one of {', '.join(f'0x{o:03x}' for o in OPMODES)}, not {opmode!r}")


class DSP48E2Signature(wiring.Signature):
    """The DSP48E2 ports the chain drives, named as in UG579."""

    def __init__(self):
        super().__init__({
            "A": In(30), "B": In(18), "PCIN": In(48),
            "P": Out(48), "PCOUT": Out(48),
        })


class DSP48E2Model(wiring.Component):
    """Bit-accurate model of the DSP48E2 in `OPMODE_M` / `OPMODE_PCIN` with AREG = BREG = MREG =
    PREG = 1 (same ports, registers and latency as `dsp48e2_instance`), for amaranth.sim and
    Verilator. Registers start at 0 like the primitive after configuration; no reset is used."""

    def __init__(self, opmode: int):
        _check_opmode(opmode)
        self.opmode = opmode
        super().__init__(DSP48E2Signature())

    def elaborate(self, platform) -> Module:
        m = Module()
        a2 = Signal(30, reset_less=True)
        b2 = Signal(18, reset_less=True)
        mreg = Signal(48, reset_less=True)
        p = Signal(48, reset_less=True)
        # 27 x 18 signed multiplier; its 45-bit product enters the 48-bit ALU sign-extended.
        product = a2[:27].as_signed() * b2.as_signed()
        m.d.sync += [a2.eq(self.A), b2.eq(self.B), mreg.eq(product)]
        m.d.sync += p.eq(self.PCIN + mreg if self.opmode == OPMODE_PCIN else mreg)  # wraps at 48 bits
        m.d.comb += [self.P.eq(p), self.PCOUT.eq(p)]
        return m


def dsp48e2_instance(opmode: int, *, A, B, PCIN, P, PCOUT) -> Instance:
    """The primitive in the same mode as `DSP48E2Model(opmode)`; every input is tied."""
    _check_opmode(opmode)
    return Instance(
        "DSP48E2",
        p_AREG=1, p_BREG=1, p_ACASCREG=1, p_BCASCREG=1, p_MREG=1, p_PREG=1,
        p_ADREG=0, p_DREG=0, p_CREG=0, p_INMODEREG=0, p_OPMODEREG=0, p_ALUMODEREG=0,
        p_CARRYINREG=0, p_CARRYINSELREG=0,
        p_A_INPUT="DIRECT", p_B_INPUT="DIRECT", p_AMULTSEL="A", p_BMULTSEL="B", p_PREADDINSEL="A",
        p_USE_MULT="MULTIPLY", p_USE_SIMD="ONE48", p_USE_PATTERN_DETECT="NO_PATDET",
        i_CLK=ClockSignal(),
        i_A=A, i_B=B, i_PCIN=PCIN,
        i_OPMODE=C(opmode, 9), i_ALUMODE=C(0, 4), i_INMODE=C(0, 5),
        i_CARRYINSEL=C(0, 3), i_CARRYIN=C(0, 1), i_CARRYCASCIN=C(0, 1), i_MULTSIGNIN=C(0, 1),
        i_C=C(0, 48), i_D=C(0, 27), i_ACIN=C(0, 30), i_BCIN=C(0, 18),
        i_CEA1=C(0, 1), i_CEA2=C(1, 1), i_CEB1=C(0, 1), i_CEB2=C(1, 1), i_CEM=C(1, 1), i_CEP=C(1, 1),
        i_CEAD=C(0, 1), i_CEALUMODE=C(0, 1), i_CEC=C(0, 1), i_CECARRYIN=C(0, 1), i_CECTRL=C(0, 1),
        i_CED=C(0, 1), i_CEINMODE=C(0, 1),
        i_RSTA=C(0, 1), i_RSTB=C(0, 1), i_RSTM=C(0, 1), i_RSTP=C(0, 1), i_RSTC=C(0, 1),
        i_RSTD=C(0, 1), i_RSTCTRL=C(0, 1), i_RSTINMODE=C(0, 1), i_RSTALUMODE=C(0, 1),
        i_RSTALLCARRYIN=C(0, 1),
        o_P=P, o_PCOUT=PCOUT,
    )
