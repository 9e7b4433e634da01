#!/usr/bin/env python3
"""Opcode counts of a kernel's main MMA loop, from `nvdisasm -c -hex` output
(scripts/sass-count.sh runs it).

The loop is the smallest backward branch's range that holds every `--op` instruction of the
kernel (HMMA for the score passes: one pipeline step, its copies issued, its pages estimated
and stored). Counts are reported per `--n` of them (8 HMMA: one 16-token page at d = 128 and
one n-tile; 1 MUFU: one score of a top-p pass).
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
    ap.add_argument('--op', default='HMMA',
                    help='the opcode that marks the work (default HMMA; MUFU for the top-p '
                         'passes: one ex2 per score)')
    ap.add_argument('--n', type=int, default=8,
                    help='--op instructions per unit of work (default 8)')
    args = ap.parse_args()
    insns = []  # (address, text, first word)
    for line in kernel_lines(open(args.sass).read(), args.kernel):
        m = INSN.match(line)
        if m and not m.group(2).startswith('NOP'):
            insns.append((int(m.group(1), 16), m.group(2), int(m.group(3), 16)))
    if not insns:
        sys.exit(f'no kernel matching {args.kernel!r} (is the input nvdisasm -c -hex?)')
    mma = [a for a, t, _ in insns if opcode(t) == args.op]
    if not mma:
        sys.exit(f'no {args.op} in that kernel')
    exits = [a for a, t, _ in insns if opcode(t) == 'EXIT']
    loops = []
    for a, t, w in insns:
        if opcode(t) == 'BRA' and '`' in t:
            target = branch_target(a, w)
            # Not a loop: a jump back from an out-of-line stub (e.g. a divergent warp sync's)
            # over the kernel's exit.
            if target <= mma[0] and a >= mma[-1] and not any(target <= e <= a for e in exits):
                loops.append((a - target, target, a))
    if loops:
        _, lo, hi = min(loops)
    else:  # unrolled: from the first to the last (one unit short: report what lies between)
        lo, hi = mma[0], mma[-1]
        print(f'(no loop holds every {args.op}: counting from the first to the last)')
    body = [t for a, t, _ in insns if lo <= a <= hi]
    units = len([t for t in body if opcode(t) == args.op]) / args.n
    counts = collections.Counter(opcode(t) for t in body)
    print(f'{args.kernel}: {len(insns)} instructions; loop {lo:#x}-{hi:#x}: {len(body)}, '
          f'{len(body) / units:.1f} per {args.n} {args.op}')
    for op, n in counts.most_common():
        print(f'  {op:8s} {n / units:7.1f}')


if __name__ == '__main__':
    try:
        main()
    except BrokenPipeError:
        pass
