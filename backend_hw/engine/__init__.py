"""The matrix engine's datapath: DSP chains (behavioural or explicit DSP48E2 cascades), the
packed-weight unpacker, the requantizer, and `MatrixEngine`, which puts them together for one
weight format."""
from .dsp48e2 import DSP48E2Model, dsp48e2_instance
from .dsp_chain import DSPChain
from .matrix_engine import MatrixEngine
from .requant import Requantizer
from .weight_unpack import WeightUnpacker

__all__ = ["DSP48E2Model", "DSPChain", "MatrixEngine", "Requantizer", "WeightUnpacker", "dsp48e2_instance"]
