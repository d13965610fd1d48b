#!/usr/bin/env python3
"""Attributes the code bytes of a firmware ELF to the crates they come from.

With LTO most engine code is inlined into a few large functions, so summing
symbol sizes by name (`nm --size-sort`) says little. Instead every instruction
is attributed through the debug info (`addr2line -i`) to the source file of
its innermost inlined frame, and files are grouped by crate. Read-only data is
attributed by symbol name. Needs binutils-arm-none-eabi and a build with debug
info (the example's release profile has `debug = true`).

Usage: footprint.py ELF
"""

import collections
import re
import subprocess
import sys

GROUPS = [
    ("device engine (mdm_sync::device)", r"/src/device/"),
    ("wire codec (mdm_sync::wire)", r"/src/wire/"),
    ("auth, time (mdm_sync)", r"/src/(auth|time)\.rs"),
    ("postcard + serde", r"/(postcard|serde|serde_core|cobs)-\d"),
    ("sha2 + digest", r"/(sha2|hmac|digest|hybrid-array|block-buffer|crypto-common|ctutils|cmov|typenum)-\d"),
    ("crc", r"/crc(-catalog)?-\d"),
    ("heapless", r"/heapless-\d"),
    ("core (inlined generic code)", r"library/core/"),
    ("compiler-builtins (mem*, 64-bit division)", r"compiler.builtins|__aeabi|__udivmoddi4"),
    ("firmware main (probe)", r"/examples/cortex-m/src/"),
    ("runtime (cortex-m-rt, semihosting)", r"/cortex-m|vector_table|__INTERRUPTS|__EXCEPTIONS|Reset|Default|HardFault"),
]

# Read-only data symbols: crate name (first path segment) to a path-like tag.
RODATA = {"sha2": "/sha2-0", "hmac": "/hmac-0", "crc": "/crc-0", "postcard": "/postcard-0",
          "heapless": "/heapless-0", "core": "library/core/"}


def run(*args, stdin=None):
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=True).stdout


def group_of(text):
    for name, pattern in GROUPS:
        if re.search(pattern, text):
            return name
    return "other"


def code_bytes(elf):
    """(address, size, enclosing symbol) of every instruction in .text."""
    insns, symbol = [], "?"
    for line in run("arm-none-eabi-objdump", "-d", "--no-show-raw-insn", "-j", ".text", elf).splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            symbol = header.group(1)
            continue
        insn = re.match(r"^\s+([0-9a-f]+):\s", line)
        if insn:
            insns.append((int(insn.group(1), 16), symbol))
    insns.sort()
    sized = []
    for (addr, sym), (nxt, _) in zip(insns, insns[1:] + [(insns[-1][0] + 2, "")]):
        sized.append((addr, nxt - addr, sym))
    return sized


def innermost_files(elf, addrs):
    """Source file of the innermost inlined frame at each address."""
    out = run("arm-none-eabi-addr2line", "-e", elf, "-i", "-a", stdin="".join(f"{a:#x}\n" for a in addrs))
    files, current = {}, None
    for line in out.splitlines():
        if re.match(r"^0x[0-9a-f]+$", line):
            current = int(line, 16)
        elif current is not None and current not in files:
            files[current] = line
    return files


def main():
    elf = sys.argv[1]
    insns = code_bytes(elf)
    files = innermost_files(elf, [a for a, _, _ in insns])
    totals = collections.Counter()
    for addr, size, sym in insns:
        where = files.get(addr, "??")
        totals[group_of(sym if where.startswith("??") else where + " " + sym)] += size
    for line in run("arm-none-eabi-nm", "-S", "-C", elf).splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[2] in "rR":
            name = parts[3]
            crate = re.split(r"::|<", name.lstrip("<&"))[0]
            if crate == "mdm_sync":
                tag = "/src/" + name.split("::")[1] + "/"
            else:
                tag = RODATA.get(crate, "")
            totals[group_of(tag + " " + name)] += int(parts[1], 16)
    width = max(len(name) for name, _ in GROUPS)
    for name, size in totals.most_common():
        print(f"  {name:<{width}} {size:6}")
    print(f"  {'total (.vector_table + .text + .rodata)':<{width}} {sum(totals.values()):6}")


if __name__ == "__main__":
    main()
