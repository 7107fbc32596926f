"""Run every benchmark with its defaults, one after the other, and print all their tables.

Each script's JSON lines go to stdout as they come (prefixed by nothing, so
`run_all.py > results.jsonl` keeps them machine-readable apart from the tables); progress
goes to stderr. The whole set takes about 10 minutes on 2 idle CPUs (more under load).

Run:  .venv/bin/python benchmarks/run_all.py
      .venv/bin/python benchmarks/run_all.py --only crf knn
      .venv/bin/python benchmarks/run_all.py --quick        (train at 112 px, fewer repeats)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("crf", "knn", "extract", "train", "dvc", "integrity", "reader", "decode", "trace", "writer")
QUICK = {
    "crf": ["--images", "32", "--repeats", "2"],
    "knn": ["--sizes", "10000", "--repeats", "2"],
    "extract": ["--repeats", "2"],
    "train": ["--resolution", "112", "--repeats", "2", "--steps", "5", "--rss-crops", "128"],
    "dvc": ["--repeats", "2", "--change-repeats", "1"],
    "integrity": ["--crops", "80", "--repeats", "2"],
    "reader": ["--resolution", "112", "--crops", "200", "--feature-crops", "10", "--repeats", "2", "--loss-steps", "5"],
    "decode": ["--images", "8", "--repeats", "2"],
    "trace": ["--rows", "5000", "--repeats", "2", "--updates", "20000"],
    "writer": ["--chunks", "4", "--repeats", "2", "--extract-images", "16"],
}


def main() -> int:
    """Run the chosen benchmarks; return 1 if any of them failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="benchmarks to run")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a smoke run, not for the README)")
    args = parser.parse_args()
    tables, failed, durations = [], [], {}
    for name in args.only:
        command = [sys.executable, str(HERE / f"bench_{name}.py"), *(QUICK[name] if args.quick else [])]
        print(f"[run_all] {' '.join(command[1:])}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        table: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("{"):
                print(line, end="", flush=True)
            elif line.strip() or table:
                table.append(line)
        durations[name] = time.perf_counter() - start
        if process.wait() != 0:
            failed.append(name)
        tables.append("".join(table))
    for table in tables:
        print(table)
    print("\n| benchmark | wall time, s |\n|---|---|")
    for name, seconds in durations.items():
        print(f"| {name}{' (FAILED)' if name in failed else ''} | {seconds:.0f} |")
    print(f"| total | {sum(durations.values()):.0f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
