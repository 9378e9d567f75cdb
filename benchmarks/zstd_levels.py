#!/usr/bin/env python3
"""How the zstd level and byte grouping trade ratio for speed on model weights.

Usage::

    python benchmarks/zstd_levels.py [--mib 64]

Cuts the real all-MiniLM-L6-v2 weights (float32) and a synthetic bf16 tensor into chunks with
the store's chunker, then compresses every chunk whole at several zstd levels, and byte-grouped
(the store's codec 2), and prints stored/raw and single-core MB/s for each. This is the
measurement behind the store's choices: zstd level 1 for whole chunks, grouping for floats.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import zstandard

from cas import bytegroup
from cas.chunking import Chunker
from cas.demo import real_model_dir, safetensors_layout


def real_f32(limit: int) -> bytes:
    path = real_model_dir() / "model.safetensors"
    start, header = safetensors_layout(path)
    raw = path.read_bytes()
    parts = [raw[start + i["data_offsets"][0] : start + i["data_offsets"][1]]
             for _, i in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
             if i["dtype"] == "F32"]
    return b"".join(parts)[:limit]


def synthetic_bf16(limit: int) -> bytes:
    values = np.random.default_rng(1).normal(0, 0.02, limit // 2).astype(np.float32)
    return (values.view(np.uint32) >> 16).astype("<u2").tobytes()


def measure(name: str, chunks: list[bytes], fn) -> tuple[str, float, float]:  # type: ignore[no-untyped-def]
    raw = sum(map(len, chunks))
    t0 = time.perf_counter()
    stored = sum(fn(c) for c in chunks)
    return name, stored / raw, raw / (time.perf_counter() - t0) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=64, help="bytes of each data set to use")
    args = ap.parse_args()
    limit = args.mib << 20
    chunker = Chunker()
    for label, data, elem in (("real model, float32", real_f32(limit), 4),
                              ("synthetic bf16", synthetic_bf16(limit), 2)):
        chunks = [data[o : o + n] for o, n in chunker.cut_bytes(data)]
        rows = []
        for level in (-1, 1, 3, 6):
            ctx = zstandard.ZstdCompressor(level=level)
            rows.append(measure(f"zstd level {level}, whole chunk", chunks,
                                lambda c, ctx=ctx: min(len(ctx.compress(c)), len(c))))
        rows.append(measure(f"byte-grouped ({elem}), zstd on streams", chunks,
                            lambda c: len(bytegroup.encode(c, elem, 0, 1 / 64)[0] or c)))
        print(f"\n{label}: {len(data) / 1e6:.1f} MB in {len(chunks)} chunks")
        print(f"{'codec':<40} {'stored/raw':>10} {'MB/s':>8}")
        for name, ratio, speed in rows:
            print(f"{name:<40} {ratio:>10.3f} {speed:>8.0f}")


if __name__ == "__main__":
    main()
