"""The pack's graph nodes, one module per node family. Node ids are permanent once shipped."""

from .adapter import AdapterLoader, register_folder
from .context import GlobalContextEncoder
from .encode import TiledDecode, UpscaleEncode
from .long_video import LongVideo
from .partition import PatchPartitioner
from .sampler import PatchSampler
from .stitch import LatentStitcher
from .train import AdapterTrainer

NODES = [
    PatchPartitioner,
    UpscaleEncode,
    GlobalContextEncoder,
    LatentStitcher,
    PatchSampler,
    TiledDecode,
    AdapterLoader,
    AdapterTrainer,
    LongVideo,
]
__all__ = ["NODES", "register_folder"]
