"""Peak memory of a large Parquet pool with embedded image bytes: read -> validate -> select -> write subset.

Generates a sharded pool (Hugging Face layout: ``data/train-000NN-of-000MM.parquet``, an ``images`` column of
``{"bytes", "path"}`` structs holding a distinct JPEG per record), then, in one process, reads it, validates it
(every embedded image opened and checked), builds a run with one loss per record, selects 15% with perplexity and
writes the Parquet subset (image bytes kept). ``--probe-limit N`` also probes the first N records with a freshly
built proxy. Prints the pool size, the embedded image bytes and the process's peak RSS after each step.

    python benchmarks/parquet_pool_memory.py --n 200000 --out /tmp/pqbench
"""

from __future__ import annotations

import argparse
import io
import resource
import time
from pathlib import Path

import numpy as np


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def generate(out: Path, n: int, shards: int, row_group: int, size: int, seed: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    total = 0
    per = -(-n // shards)
    for s in range(shards):
        lo, hi = s * per, min(n, (s + 1) * per)
        writer = None
        for start in range(lo, hi, row_group):
            rows = []
            for i in range(start, min(hi, start + row_group)):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)  # noise: nothing to compress
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
                total += buf.tell()
                rows.append({"id": f"r{i}", "images": [{"bytes": buf.getvalue(), "path": f"{i}.jpg"}],
                             "messages": [{"role": "user", "content": f"<image>What is in picture {i}?"},
                                          {"role": "assistant", "content": "Noise " * (1 + i % 7)}]})
            table = pa.Table.from_pylist(rows)
            if writer is None:
                writer = pq.ParquetWriter(data / f"train-{s:05d}-of-{shards:05d}.parquet", table.schema)
            writer.write_table(table, row_group_size=row_group)
        writer.close()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--out", type=Path, default=Path("pqbench"))
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--row-group", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--probe-limit", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from mmsift.data.io import read_pool
    from mmsift.data.validate import validate_pool
    from mmsift.report import write_selection
    from mmsift.select import select_run
    from mmsift.store import from_arrays

    t = time.perf_counter()
    if not (args.out / "data").is_dir():
        nbytes = generate(args.out, args.n, args.shards, args.row_group, args.image_size, args.seed)
        print(f"generated {args.n} records, {nbytes / 2**20:.0f} MiB of embedded JPEG bytes "
              f"({time.perf_counter() - t:.0f} s)")
    files = sorted((args.out / "data").glob("*.parquet"))
    print(f"pool: {len(files)} files, {sum(f.stat().st_size for f in files) / 2**20:.0f} MiB on disk; "
          f"peak RSS before reading {peak_mib():.0f} MiB")
    t = time.perf_counter()
    pool = read_pool(args.out / "data")
    print(f"read {len(pool)} records in {time.perf_counter() - t:.0f} s; peak RSS {peak_mib():.0f} MiB")
    t = time.perf_counter()
    report = validate_pool(pool, None)
    print(f"validated (every embedded image opened and checked): {report.n_errors} errors, "
          f"{time.perf_counter() - t:.0f} s; peak RSS {peak_mib():.0f} MiB")
    good = report.good_records(pool)
    loss = np.random.default_rng(args.seed).gamma(2.0, 1.0, size=len(good))
    run = args.out / "run"
    from_arrays(run, ids=[r.id for r in good], index=[r.index for r in good], columns={"loss": loss},
                meta={"pool": str(args.out / "data")})
    t = time.perf_counter()
    sel = select_run(str(run), "perplexity", 0.15, seed=args.seed)
    write_selection(sel, pool, args.out / "subset.parquet")
    print(f"selected {len(sel.rows)} and wrote the Parquet subset in {time.perf_counter() - t:.0f} s; "
          f"peak RSS {peak_mib():.0f} MiB")
    if args.probe_limit:
        from mmsift.models.proxy import build_proxy
        from mmsift.probe.config import ProbeConfig
        from mmsift.probe.runner import run_probe

        texts = [t.text for r in good[:2000] for t in r.turns]
        model = build_proxy(args.out / "proxy", texts=texts, seed=args.seed)
        t = time.perf_counter()
        config = ProbeConfig(images=None, model=model, out=args.out / "probe", methods=("perplexity",),
                             limit=args.probe_limit, overwrite=True, check_images=False)
        res = run_probe(args.out / "data", config)
        print(f"probed {res.n_probed} records (pool read again, not validated) in {time.perf_counter() - t:.0f} s; "
              f"peak RSS {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
