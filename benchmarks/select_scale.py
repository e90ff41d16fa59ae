"""Selection at scale: wall time and peak memory of each method on synthetic signal stores.

    python benchmarks/select_scale.py [--sizes 100000 300000 1000000] [--dim 256] [--methods ...]
                                      [--budget 0.15] [--threads 2] [--workdir DIR] [--repeat 2]

For each size a store is written with ``mmsift.store.from_arrays`` (float16 vectors, clustered, with 5%
near-duplicates; 12 tasks of LLaVA-665k-like skewed sizes; six instruction formats). Each method x size runs in its
own subprocess (load the store, score, select) so that its peak resident memory can be read from ``wait4``'s
``ru_maxrss``. Prints a table, then how time grows with N. Times depend on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_METHODS = ["el2n", "perplexity", "ifd", "loss", "selfcheck", "datatailor", "semdedup", "coincide", "ards"]
TASK_SHARES = {"llava_conv": 0.24, "vqav2": 0.16, "gqa": 0.14, "ocr_vqa": 0.12, "coco_caption": 0.08,
               "textcaps": 0.04, "refcoco": 0.07, "vg": 0.06, "okvqa": 0.02, "aokvqa": 0.03,
               "sharegpt_text": 0.03, "textvqa": 0.01}
FORMATS = (["mc", "region", "short", "caption", "other_image", "text_only"], [0.1, 0.15, 0.35, 0.1, 0.25, 0.05])


def build_store(root: Path, n: int, dim: int, vectors: set[str], seed: int = 0):
    from mmsift.store import SignalStore, from_arrays

    if (root / "manifest.json").is_file():
        store = SignalStore(root)
        if len(store) == n and vectors <= set(store.signal_names):
            return store
    rng = np.random.default_rng(seed)
    names = list(TASK_SHARES)
    tasks = np.array(names, dtype=object)[rng.choice(len(names), n, p=list(TASK_SHARES.values()))]
    fmt = np.array(FORMATS[0], dtype=object)[rng.choice(6, n, p=FORMATS[1])]
    mc = fmt == "mc"
    loss = rng.gamma(2.0, 0.6, n)
    cols = {
        "loss": loss, "loss_noq": loss + rng.normal(0.3, 0.4, n), "el2n": rng.uniform(0, 1.4, n),
        "n_tokens": rng.integers(10, 2000, n), "n_answer_tokens": rng.integers(1, 500, n),
        "n_rounds": rng.choice([1, 1, 1, 2, 3, 5, 8], n), "n_images": (fmt != "text_only").astype(np.int64),
        "sv_entropy": rng.uniform(1.0, 5.0, n), "sv_tau": rng.uniform(0.05, 0.6, n),
        "loss_sym": np.where(mc, loss + rng.normal(0.4, 0.5, n), np.nan),
        "loss_perm": np.where(mc, loss + rng.normal(0.4, 0.5, n), np.nan),
        "loss_imgnoise": np.where(~mc & (fmt != "text_only"), loss + rng.normal(0.2, 0.3, n), np.nan),
        "is_mc": mc.astype(np.int64), "fmt": fmt,
    }
    n_groups = 256
    group = rng.integers(0, n_groups, n)
    dup = rng.random(n) < 0.05  # near-duplicates of another row
    src = rng.integers(0, n, n)
    for v in sorted(vectors):
        centres = rng.standard_normal((n_groups, dim)).astype(np.float32) * 3.0
        arr = np.empty((n, dim), dtype=np.float16)
        for s in range(0, n, 100_000):
            e = min(n, s + 100_000)
            block = centres[group[s:e]] + rng.standard_normal((e - s, dim), dtype=np.float32)
            if v in ("img_mean", "txt_mean"):
                block /= np.linalg.norm(block, axis=1, keepdims=True)
            arr[s:e] = block
        d = np.flatnonzero(dup)
        arr[d] = (arr[src[d]].astype(np.float32) * (1 + 1e-3 * rng.standard_normal((len(d), dim)))).astype(np.float16)
        cols[v] = arr
    return from_arrays(root, ids=[f"s{i:08d}" for i in range(n)], columns=cols, tasks=tasks,
                       meta={"source": "benchmarks/select_scale.py", "seed": seed})


def child(store_dir: str, method: str, budget: float) -> None:
    from mmsift.scorers import make_scorer
    from mmsift.select import select_rows
    from mmsift.store import SignalStore

    t0 = time.perf_counter()
    scorer = make_scorer(method, random_state=0)
    signals = SignalStore(store_dir).load(sorted(scorer.requires))
    t1 = time.perf_counter()
    sel = select_rows(signals, scorer, budget)
    t2 = time.perf_counter()
    digest = hashlib.sha256("\n".join(sel.ids).encode()).hexdigest()[:16]
    print(json.dumps({"load_s": t1 - t0, "select_s": t2 - t1, "kept": len(sel.rows), "ids_sha256": digest,
                      "notes": sel.notes}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    ap.add_argument("--budget", type=float, default=0.15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--workdir", type=Path, default=Path("bench_select_scale"))
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each method this many times; the table shows the first run and whether the "
                         "selected ids (sha256) were identical across runs")
    ap.add_argument("--child", nargs=3, metavar=("STORE", "METHOD", "BUDGET"), help=argparse.SUPPRESS)
    ap.add_argument("--build", nargs=4, metavar=("STORE", "N", "DIM", "VECTORS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build_store(Path(args.build[0]), int(args.build[1]), int(args.build[2]), set(args.build[3].split(",")))
        return
    if args.child:
        child(args.child[0], args.child[1], float(args.child[2]))
        return

    from mmsift.scorers import SCORERS

    vectors = {r for m in args.methods for r in SCORERS[m].requires} & {"last", "mean", "attn_pool", "img_mean",
                                                                         "txt_mean"}
    rows = []
    print(f"{'method':<11} {'N':>9} {'wall s':>8} {'select s':>9} {'cpu s':>8} {'peak GiB':>9} {'kept':>8} "
          f"{'same ids':>8}", flush=True)
    for n in args.sizes:
        t = time.perf_counter()
        root = args.workdir / f"n{n}_d{args.dim}"
        # built in a subprocess: a child forked from a parent holding the arrays would report the parent's
        # resident pages in its own ru_maxrss
        subprocess.run([sys.executable, __file__, "--build", str(root), str(n), str(args.dim),
                        ",".join(sorted(vectors))], check=True)
        print(f"# store N={n} d={args.dim} ready in {time.perf_counter() - t:.0f} s: {root}", flush=True)
        for m in args.methods:
            runs = [_measured(root, m, args.budget, args.threads, args.timeout) for _ in range(args.repeat)]
            r = runs[0]
            same = "-" if args.repeat == 1 or any("error" in x for x in runs) else \
                ("yes" if len({x["ids_sha256"] for x in runs}) == 1 else "NO")
            rows.append((m, n, r))
            if "error" in r:
                print(f"{m:<11} {n:>9} ERROR {r['error']}", flush=True)
            else:
                print(f"{m:<11} {n:>9} {r['wall_s']:>8.1f} {r['select_s']:>9.1f} {r['cpu_s']:>8.1f} "
                      f"{r['peak_gib']:>9.2f} {r['kept']:>8} {same:>8}", flush=True)
    if len(args.sizes) > 1:
        print("\n# time growth: wall(N_big) / wall(N_small) against N_big / N_small")
        lo, hi = min(args.sizes), max(args.sizes)
        for m in args.methods:
            a = next((r for mm, n, r in rows if mm == m and n == lo and "error" not in r), None)
            b = next((r for mm, n, r in rows if mm == m and n == hi and "error" not in r), None)
            if a and b:  # includes interpreter start-up and store loading
                print(f"{m:<11} wall x{b['wall_s'] / a['wall_s']:.1f}, cpu x{b['cpu_s'] / a['cpu_s']:.1f} "
                      f"for x{hi / lo:.0f} rows")


def _measured(store_dir: Path, method: str, budget: float, threads: int, timeout: float) -> dict:
    """Run the child with ``os.wait4`` so that ``ru_maxrss`` is this child's own peak resident set."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    out_path = store_dir.parent / f".{store_dir.name}.{method}.json"
    err_path = store_dir.parent / f".{store_dir.name}.{method}.err"
    t0 = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(store_dir), method, str(budget)],
                                stdout=out, stderr=err, env=env)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                return {"error": f"timeout after {timeout:.0f} s"}
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        lines = err_path.read_text().strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    res = json.loads(out_path.read_text().strip().splitlines()[-1])
    # ru_maxrss is in KiB on Linux; CPU time (user + system) shows the work done independently of contention
    res.update(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, peak_gib=usage.ru_maxrss * 1024 / 2**30)
    return res


if __name__ == "__main__":
    main()
