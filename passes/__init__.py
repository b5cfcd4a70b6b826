"""llmfab.passes: graph rewrites and analyses, each a small named pass in one explicit registry."""
from .annotate import Annotate
from .canonical_names import CanonicalNames
from .cleanup import Cleanup
from .fold_scales import FoldScales
from .fuse_activation import FuseActivation
from .fuse_attention import FuseAttention
from .fuse_linear import FuseLinear
from .fuse_norm import FuseNorm
from .fuse_rope import FuseRope
from .pass_base import Pass, PassError, parse_pipeline, run_pipeline
from .quantize import Quantize

PASSES: dict[str, type[Pass]] = {p.name: p for p in (
    FuseLinear, Cleanup, FuseNorm, FuseActivation, FuseRope, FuseAttention, FoldScales, Annotate, CanonicalNames,
    Quantize,
)}

# ONNX import -> LLM-level graph. Order matters: biases join Linears before activations are
# probed, RoPE is found before attention peels its inputs, attention takes its soft-cap before
# fold-scales takes the logits', roles are named last.
FUSION_PIPELINE = ("fuse-linear,cleanup,fuse-norm,fuse-activation,fuse-rope,fuse-attention,fold-scales,cleanup,"
                   "annotate,canonical-names")

__all__ = ["PASSES", "FUSION_PIPELINE", "Pass", "PassError", "parse_pipeline", "run_pipeline"]
