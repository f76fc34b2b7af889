"""Run every benchmark (`make bench`), then gather their result files into BENCHMARKS.md.

Each benchmark compares prolong with a baseline in the same run and writes a Markdown section to
benchmarks/results/<area>.md; this script only runs them and concatenates the sections.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ORDER = ["data", "model", "train", "eval", "tiled_mlp", "checkpoint", "plan", "demo_learning"]  # benchmarks/bench_<area>.py -> results/<area>.md
# Sections collected but not run here: results/max_length.md is written by hand from the output of
# benchmarks/bench_max_length.py (a resumable search of about 50 minutes, with its own command).
KEPT = ["max_length"]

HEADER = """# Benchmarks

Every number below comes from a benchmark in `benchmarks/` that runs prolong and a baseline in the same
process tree on the same machine, and reports ratios (these machines are noisy; absolute times mean
something only on a GPU). Reproduce everything with `make bench`, or one area with the command given in
its section. Machine for the CPU numbers: 2 cores, 24 GiB, no GPU.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--only", nargs="*", default=ORDER, help="areas to run")
    parser.add_argument("--collect", action="store_true", help="only gather existing results")
    args = parser.parse_args()
    failed = []
    if not args.collect:
        for area in args.only:
            command = [sys.executable, str(HERE / f"bench_{area}.py")] + (["--quick"] if args.quick else [])
            print("$", " ".join(command), flush=True)
            if subprocess.run(command, check=False).returncode != 0:
                failed.append(area)
    sections = [HEADER]
    for area in ORDER + KEPT:
        result = HERE / "results" / f"{area}.md"
        if result.exists():
            sections.append(result.read_text(encoding="utf-8").strip() + "\n")
    (HERE.parent / "BENCHMARKS.md").write_text("\n".join(sections), encoding="utf-8")
    print("wrote BENCHMARKS.md" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
