"""Reading checkpoints tensor by tensor, and writing model folders atomically."""

from .checkpoint import Checkpoint, TensorInfo, open_checkpoint
from .writer import ShardedWriter, parse_size

__all__ = ["Checkpoint", "TensorInfo", "open_checkpoint", "ShardedWriter", "parse_size"]
