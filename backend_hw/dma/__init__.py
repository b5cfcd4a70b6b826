"""The DMA (LD/ST between HBM over AXI4 and the buffers) and its cycle model."""
from .cycles import dma_cycles
from .unit import DMA

__all__ = ["DMA", "dma_cycles"]
