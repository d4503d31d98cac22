"""The pack's graph nodes, one module per node family. Node ids are permanent once shipped."""

from .context import GlobalContextEncoder
from .encode import TiledDecode, UpscaleEncode
from .partition import PatchPartitioner
from .sampler import PatchSampler
from .stitch import LatentStitcher

NODES = [PatchPartitioner, UpscaleEncode, GlobalContextEncoder, LatentStitcher, PatchSampler, TiledDecode]
