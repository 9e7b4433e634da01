#!/usr/bin/env python3
"""Tests of scripts/sass_loop_count.py on hand-made nvdisasm listings (ctest sass_loop_count).

The branch encodings are real sm_90 ones: BRA instructions of the score pass whose targets
nvdisasm printed as labels, so the decoder is checked against the disassembler's own answer.
"""
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sass_loop_count as slc  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sass_loop_count.py')


def encode(addr, target):
    """The first word of a BRA at addr to target, as sm_90 lays it out (see branch_target)."""
    words = (target - addr - 16) // 4
    return ((words >> 8) & ((1 << 30) - 1)) << 34 | (words & 0xff) << 16 | 0x8947


def line(addr, text, word=0x000fe20000000f00):
    return f'        /*{addr:04x}*/                   {text} ;    /* 0x{word:016x} */'


class BranchTarget(unittest.TestCase):
    def test_forward_and_backward_branches_of_real_code(self):
        # (address, first word, the target nvdisasm's label stood at)
        for addr, word, target in [(0x0060, 0x0000000000148947, 0x00c0),
                                   (0x1a40, 0x0000001c00f08947, 0x3a10),
                                   (0x3a00, 0xffffffe0001c8947, 0x1a80)]:
            self.assertEqual(slc.branch_target(addr, word), target, hex(addr))
            self.assertEqual(encode(addr, target) & 0xffffffff00ffffff,
                             word & 0xffffffff00ffffff, hex(addr))


class LoopCounts(unittest.TestCase):
    def listing(self, lines):
        f = tempfile.NamedTemporaryFile('w', suffix='.sass', delete=False)
        f.write('.text._Z6kernelv:\n' + '\n'.join(lines) + '\n')
        f.close()
        self.addCleanup(os.unlink, f.name)
        return f.name

    def run_script(self, path, *args):
        out = subprocess.run([sys.executable, SCRIPT, path, '_Z6kernel', *args],
                             capture_output=True, text=True, check=True)
        return out.stdout

    def test_counts_the_loop_that_holds_the_mmas_per_unit(self):
        # The loop runs 0x00-0x60 (its back edge at 0x60). After the exit, a stub jumps back
        # to 0x30, inside the loop: its range is shorter and holds every HMMA too, but it
        # spans the exit, so it is not the loop (the score pass has such a stub: a divergent
        # warp sync's slow path).
        lines = [line(0x00, 'MOV R1, R2'),
                 line(0x10, 'LOP3.LUT R0, R1, 0xf, RZ, 0xc0, !PT'),
                 line(0x20, 'LOP3.LUT R0, R0, 0x6400, RZ, 0xfc, !PT'),
                 line(0x30, 'ISETP.NE.AND P0, PT, R0, RZ, PT'),
                 line(0x40, 'HMMA.16816.F32 R4, R8, R12, R4'),
                 line(0x50, 'HMMA.16816.F32 R4, R8, R12, R4'),
                 line(0x60, '@P0 BRA `(.L_x_1)', encode(0x60, 0x00)),
                 line(0x70, 'EXIT'),
                 line(0x80, 'BRA `(.L_x_2)', encode(0x80, 0x30))]
        out = self.run_script(self.listing(lines), '--n', '2')
        self.assertIn('loop 0x0-0x60: 7, 7.0 per 2 HMMA', out)
        self.assertIn('LOP3         2.0', out)

    def test_an_unrolled_kernel_counts_from_the_first_to_the_last(self):
        lines = [line(0x00, 'MUFU.EX2 R1, R2'), line(0x10, 'FMUL R1, R1, R3'),
                 line(0x20, 'MUFU.EX2 R4, R5'), line(0x30, 'EXIT')]
        out = self.run_script(self.listing(lines), '--op', 'MUFU', '--n', '1')
        self.assertIn('counting from the first to the last', out)
        self.assertIn('loop 0x0-0x20: 3, 1.5 per 1 MUFU', out)

if __name__ == '__main__':
    unittest.main()
