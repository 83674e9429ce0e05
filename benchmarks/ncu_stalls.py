"""Where a kernel's warps wait, from an ncu source page (`ncu -i REPORT --page source --csv
--print-source sass > FILE.csv`, with the SourceCounters and WarpStateStats sections collected):
the stall reasons over all samples, the main loop (the instructions executed most often: their
count, first and last line, their share of the samples), and the instructions with most samples.

    python benchmarks/ncu_stalls.py FILE.csv [--top 30]
"""

from __future__ import annotations

import argparse
import csv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("csv")
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args()
    with open(a.csv, newline="") as f:
        rows = list(csv.reader(f))
    hdr, data = rows[1], rows[2:]  # rows[0]: the kernel's name
    col = {h: i for i, h in enumerate(hdr)}

    def num(r, k) -> float:
        try:
            return float(r[col[k]].replace(",", ""))
        except (KeyError, ValueError, IndexError):
            return 0.0

    reasons = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    samples = [num(r, "Warp Stall Sampling (All Samples)") for r in data]
    executed = [num(r, "Instructions Executed") for r in data]
    total = sum(samples) or 1.0
    print(rows[0][1] if len(rows[0]) > 1 else rows[0][0])
    print(f"samples {total:.0f}")
    for name, v in sorted(((k, sum(num(r, k) for r in data)) for k in reasons), key=lambda kv: -kv[1])[:10]:
        print(f"  {name[6:]:20s} {v:8.0f} {100 * v / total:5.1f}%")
    most = max(executed)
    loop = [i for i, e in enumerate(executed) if e >= 0.95 * most]
    span = range(loop[0], loop[-1] + 1)
    print(f"loop: {len(loop)} instructions, lines {loop[0]}..{loop[-1]}, executed {most:.0f} times each, "
          f"{100 * sum(samples[i] for i in span) / total:.1f}% of the samples")
    for i in sorted(sorted(range(len(data)), key=lambda i: -samples[i])[:a.top]):
        top3 = sorted(((num(data[i], k), k[6:]) for k in reasons), reverse=True)[:3]
        print(f"{i:5d} {data[i][col['Source']].strip()[:60]:60s} {samples[i]:6.0f} "
              + " ".join(f"{k}:{v:.0f}" for v, k in top3 if v))


if __name__ == "__main__":
    main()
