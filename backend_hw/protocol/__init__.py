"""The interfaces between the accelerator's units: AXI4 ports, the buffer port, `Valid`
pipelines, and instruction-word fields at the positions `llmfab.ir.isa` gives them."""
from .axi import AxiMemory, AxiProtocolError, AxiSignature, Burst
from .buffer_port import BUF_ADDR_BITS, BufferPortSignature, word_log
from .isa_fields import field, header
from .valid import Valid

__all__ = ["AxiMemory", "AxiProtocolError", "AxiSignature", "BUF_ADDR_BITS", "BufferPortSignature", "Burst",
           "Valid", "field", "header", "word_log"]
