#!/usr/bin/env python3
"""Wraps a flat 64-bit kernel image in a minimal bzImage (x86 boot protocol 2.15).

usage: mkbzimage.py FLAT OUT
FLAT is loaded at 1 MiB (code32_start) and entered, as for Linux, at its 64-bit entry point:
load address + 0x200 (so FLAT's first 0x200 bytes are padding). The setup part is one sector
after the boot sector and holds only the header: there is no real-mode or 32-bit code, so only
boot loaders using the 64-bit entry (like vmm) can start it.
"""
import struct
import sys

flat = open(sys.argv[1], "rb").read()
setup_sects = 1
setup = bytearray(512 * (setup_sects + 1))
def put(off, fmt, val):
    struct.pack_into("<" + fmt, setup, off, val)
put(0x1F1, "B", setup_sects)
put(0x1FE, "H", 0xAA55)          # boot_flag
put(0x200, "H", 0x66EB)          # jump over the header (never executed here)
setup[0x202:0x206] = b"HdrS"
put(0x206, "H", 0x020F)          # boot protocol version
put(0x211, "B", 0x01)            # loadflags: LOADED_HIGH
put(0x214, "I", 0x100000)        # code32_start
put(0x22C, "I", 0x37FFFFFF)      # initrd_addr_max
put(0x230, "I", 0x200000)        # kernel_alignment
put(0x236, "H", 0x0001)          # xloadflags: XLF_KERNEL_64
put(0x238, "I", 4096)            # cmdline_size
put(0x260, "I", len(flat) + (1 << 20))  # init_size: image plus room for its bss
with open(sys.argv[2], "wb") as f:
    f.write(setup)
    f.write(flat)
