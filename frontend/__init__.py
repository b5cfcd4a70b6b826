"""llmfab.frontend: ONNX import (one handler per op) and Hugging Face config-only import."""
from .onnx_import import DEFAULT_SEQ_LEN, ImportOptions, import_onnx, input_role
from .onnx_loader import ModelError, load_onnx

__all__ = ["DEFAULT_SEQ_LEN", "ImportOptions", "ModelError", "import_onnx", "input_role", "load_onnx"]
