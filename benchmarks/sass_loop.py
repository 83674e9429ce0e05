"""Static instruction counts of the kernels' time loops, from their SASS (a CPU-side proxy for a
step's issue cost, between GPU calls).

    python benchmarks/sass_loop.py LIB.so|DUMP.sass [...] [--kernel SUBSTRING]

A .so is disassembled with `cuobjdump -sass` (the device machine has it; this one does not), a
.sass file is such a dump. For each kernel (function) the loop is the longest backward branch
(`BRA` to an earlier address): its body is every instruction from the target to the branch. Printed
per kernel: the body's length and its instructions grouped by opcode class (MMA, shared-memory
loads / stores, global loads / stores, cp.async, barriers, MUFU, the rest).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
from typing import Dict, List, Tuple

CLASSES = [  # (class, opcode prefixes), first match wins
    ("mma", ("HMMA",)),
    ("ldsm", ("LDSM",)),
    ("lds", ("LDS",)),
    ("sts", ("STS",)),
    ("stg", ("STG",)),
    ("cp.async", ("LDGSTS", "LDGDEPBAR", "DEPBAR")),
    ("ldg", ("LDG",)),
    ("barrier", ("BAR",)),
    ("mufu", ("MUFU",)),
    ("shfl", ("SHFL",)),
    ("fp32", ("FADD", "FMUL", "FFMA", "FMNMX", "FSETP", "FSEL", "F2F", "F2FP", "FCHK")),
    ("int", ("IMAD", "IADD", "LEA", "SHF", "LOP", "ISETP", "IABS", "SEL", "MOV", "PRMT", "S2R", "CS2R")),
    ("branch", ("BRA", "BSYNC", "BSSY", "EXIT", "RET", "CALL", "WARPSYNC")),
]
INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)\s*([^;]*);")


def classify(op: str) -> str:
    base = op.split(".")[0]
    for name, prefixes in CLASSES:
        if base.startswith(prefixes):
            return name
    return "other"


def functions(sass: str) -> Dict[str, List[Tuple[int, str, str]]]:
    """{function name: [(address, opcode, operands)]} of a cuobjdump -sass listing."""
    out: Dict[str, List[Tuple[int, str, str]]] = {}
    cur = None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = out.setdefault(m.group(1), [])
            continue
        m = INSN.search(line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(3), m.group(4)))
    return out


def loop_body(insns: List[Tuple[int, str, str]]) -> List[Tuple[int, str, str]]:
    """The instructions of the longest backward branch's loop (empty: no loop)."""
    best = (0, 0, 0)
    for i, (addr, op, args) in enumerate(insns):
        if op.startswith("BRA"):
            m = re.search(r"0x([0-9a-f]+)", args)
            if m and int(m.group(1), 16) < addr:
                target = int(m.group(1), 16)
                start = next(j for j, ins in enumerate(insns) if ins[0] >= target)
                if i - start > best[0]:
                    best = (i - start, start, i)
    return insns[best[1]: best[2] + 1] if best[0] else []


def report(name: str, sass: str, kernel: str) -> None:
    for fn, insns in functions(sass).items():
        if kernel not in fn:
            continue
        body = loop_body(insns)
        counts = collections.Counter(classify(op) for _, op, _ in body)
        order = [c for c, _ in CLASSES] + ["other"]
        print(f"{name}: {fn[:90]}")
        print(f"  kernel {len(insns)} instructions, loop body {len(body)}: " +
              ", ".join(f"{c} {counts[c]}" for c in order if counts[c]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--kernel", default="", help="only functions whose mangled name contains this")
    a = ap.parse_args()
    for f in a.files:
        if f.endswith(".sass") or f.endswith(".txt"):
            with open(f) as fh:
                sass = fh.read()
        else:
            sass = subprocess.run(["cuobjdump", "-sass", f], check=True, capture_output=True, text=True).stdout
        report(f, sass, a.kernel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
