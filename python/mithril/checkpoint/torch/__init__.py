"""PyTorch Distributed Checkpoint (DCP) with Mithril compression: a one-line change.

    import torch.distributed.checkpoint as dcp
    from mithril.checkpoint.torch import MithrilReader, MithrilWriter

    dcp.save(state_dict, storage_writer=MithrilWriter("ckpt/step_100"))
    dcp.save(state_dict, storage_writer=MithrilWriter("ckpt/step_200", base="ckpt/step_100"))
    dcp.load(state_dict, storage_reader=MithrilReader("ckpt/step_200"))

It works on one rank or many (any process group DCP supports), with plain tensors,
DTensor/FSDP2 shards, optimizer state and arbitrary objects, and DCP reshards on load to a
different world size. DCP's own planners are used unchanged: they already store each
replicated tensor once across ranks, and each rank writes a single file here, so small
tensors need no grouping. A directory holds one ``__<rank>_<save id>.mithril`` file per rank
and a JSON commit record, ``mithril-dcp.json``, written last and atomically.
"""

from __future__ import annotations

from mithril.checkpoint.torch._convert import convert, detect, inspect_dir, load_flat
from mithril.checkpoint.torch._reader import MithrilReader
from mithril.checkpoint.torch._writer import MithrilWriter

__all__ = ["MithrilWriter", "MithrilReader", "convert", "detect", "inspect_dir", "load_flat"]
