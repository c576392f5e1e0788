"""``python -m benchmarks [NAME ...] [--quick | --size smoke] [--out PATH]``.

Runs the named benchmarks (all by default) one after the other, prints the results as JSON on stdout
and a summary table on stderr, and writes them to ``benchmarks/results.json`` (merged with an earlier
run on the same machine, so single benchmarks can be rerun).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.harness import SIZES, format_table, machine_info, tune_allocator, write_results

# name -> module (each has NAME, SIZES and run(size) -> list of entries)
BENCHMARKS = {
    "packing": "benchmarks.packing",
    "patterns": "benchmarks.patterns",
    "loss_memory": "benchmarks.loss_memory",
    "generation": "benchmarks.generation",
    "overhead": "benchmarks.overhead",
    "codecs": "benchmarks.codec_throughput",
    "gpu": "benchmarks.gpu",
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Measured performance suite of bagpiper_lib."
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--quick", action="store_true", help="reduced sizes (same as --size quick)")
    parser.add_argument(
        "--size", choices=SIZES, default=None, help="problem size (default: full; wins over --quick)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the results file alone")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default: 1; 0 keeps torch's default). On a shared machine a "
        "multi-threaded OpenMP region stalls whenever another process holds one of its cores",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    args.size = args.size or ("quick" if args.quick else "full")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, module in BENCHMARKS.items():
            doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()[0]
            print(f"{name:12s} {doc}")
        return 0
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    allocator = tune_allocator()
    results: dict[str, Any] = {"schema": 1, "machine": machine_info(), "benchmarks": {}}
    results["machine"]["allocator"] = allocator
    failed = []
    for name in args.names or list(BENCHMARKS):
        module = importlib.import_module(BENCHMARKS[name])
        print(f"[benchmarks] {name} ({args.size}) ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            entries = module.run(args.size)
            error = None
        except Exception as err:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc(file=sys.stderr)
            entries, error = [], f"{type(err).__name__}: {err}"
            failed.append(name)
        seconds = time.perf_counter() - start
        results["benchmarks"][name] = {
            "size": args.size,
            "seconds": round(seconds, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "error": error,
            "entries": entries,
        }
        print(f"[benchmarks] {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    if not args.no_write:
        write_results(results, args.out)
    print(json.dumps(results, indent=2))
    print(format_table(results), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
