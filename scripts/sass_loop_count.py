#!/usr/bin/env python3
"""Opcode counts of a kernel's main MMA loop, from `nvdisasm -c -hex` output
(scripts/sass-count.sh runs it).

The loop is the smallest backward branch's range that holds every HMMA of the kernel (for
the score passes: one pipeline step, its copies issued, its pages estimated and stored).
Counts are reported per `--mma` HMMAs (8: one 16-token page at d = 128 and one n-tile).
Branch targets are decoded from the encodings (sm_90: the target's word offset in bits
16-23 and 34-63 of the first 64-bit word), since this nvdisasm prints only some labels.
"""
import argparse
import collections
import re
import sys

INSN = re.compile(r'^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;\s*/\* 0x([0-9a-f]{16}) \*/')


def kernel_lines(text, name):
    out, on = [], False
    for line in text.split('\n'):
        if line.startswith('.text.'):
            if on:
                break
            on = name in line
            continue
        if on:
            out.append(line)
    return out


def opcode(insn):
    parts = insn.split()
    op = parts[1] if parts[0].startswith('@') else parts[0]
    return op.split('.')[0]


def branch_target(addr, word):
    high = word >> 34  # 30 bits, signed
    if high & (1 << 29):
        high -= 1 << 30
    return addr + 16 + 4 * (((word >> 16) & 0xff) | (high << 8))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('sass', help='nvdisasm -c -hex output')
    ap.add_argument('kernel', help='substring of the mangled kernel name')
    ap.add_argument('--mma', type=int, default=8, help='HMMAs per unit of work (default 8)')
    args = ap.parse_args()
    insns = []  # (address, text, first word)
    for line in kernel_lines(open(args.sass).read(), args.kernel):
        m = INSN.match(line)
        if m and not m.group(2).startswith('NOP'):
            insns.append((int(m.group(1), 16), m.group(2), int(m.group(3), 16)))
    if not insns:
        sys.exit(f'no kernel matching {args.kernel!r} (is the input nvdisasm -c -hex?)')
    mma = [a for a, t, _ in insns if opcode(t) == 'HMMA']
    if not mma:
        sys.exit('no HMMA in that kernel')
    exits = [a for a, t, _ in insns if opcode(t) == 'EXIT']
    loops = []
    for a, t, w in insns:
        if opcode(t) == 'BRA' and '`' in t:
            target = branch_target(a, w)
            # Not a loop: a jump back from an out-of-line stub (e.g. a divergent warp sync's)
            # over the kernel's exit.
            if target <= mma[0] and a >= mma[-1] and not any(target <= e <= a for e in exits):
                loops.append((a - target, target, a))
    if not loops:
        sys.exit('no loop holds every HMMA')
    _, lo, hi = min(loops)
    body = [t for a, t, _ in insns if lo <= a <= hi]
    units = len([t for t in body if opcode(t) == 'HMMA']) / args.mma
    counts = collections.Counter(opcode(t) for t in body)
    print(f'{args.kernel}: {len(insns)} instructions; loop {lo:#x}-{hi:#x}: {len(body)}, '
          f'{len(body) / units:.1f} per {args.mma} HMMA')
    for op, n in counts.most_common():
        print(f'  {op:8s} {n / units:7.1f}')


if __name__ == '__main__':
    try:
        main()
    except BrokenPipeError:
        pass
