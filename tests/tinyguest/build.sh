#!/bin/sh
# Builds the tiny test guest (an x86-64 ELF kernel) from source with gcc and ld.
# usage: tests/tinyguest/build.sh OUT_DIR   -> OUT_DIR/tinyguest.elf
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/tinyguest}
mkdir -p "$out"
cc=${CC:-gcc}
$cc -std=c11 -O2 -Wall -Wextra -Werror -ffreestanding -fno-pic -fno-pie -fno-stack-protector \
    -fno-asynchronous-unwind-tables -mno-red-zone -mgeneral-regs-only -m64 \
    -c "$here/guest.c" -o "$out/guest.o"
${LD:-ld} -nostdlib -static -no-pie -z max-page-size=0x1000 -T "$here/link.ld" "$out/guest.o" -o "$out/tinyguest.elf"
echo "$out/tinyguest.elf"
