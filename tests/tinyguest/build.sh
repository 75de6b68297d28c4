#!/bin/sh
# Builds the tiny test guest (an x86-64 ELF kernel) from source with gcc and ld.
# usage: tests/tinyguest/build.sh OUT_DIR   -> OUT_DIR/tinyguest.elf (ELF kernel) and
#                                             OUT_DIR/tinyguest.bzImage (the same code as a bzImage),
#                                             OUT_DIR/tinyguest-pvh.elf (an ELF kernel with a PVH note)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/tinyguest}
mkdir -p "$out"
cc=${CC:-gcc}
flags="-std=c11 -O2 -Wall -Wextra -Werror -ffreestanding -fno-pic -fno-pie -fno-stack-protector
    -fno-asynchronous-unwind-tables -mno-red-zone -mgeneral-regs-only -m64"
link() { ${LD:-ld} -nostdlib -static -no-pie --no-warn-rwx-segments -z max-page-size=0x1000 -T "$here/link.ld" "$1" -o "$2"; }
# shellcheck disable=SC2086
$cc $flags -c "$here/guest.c" -o "$out/guest.o"
# shellcheck disable=SC2086
$cc $flags -DTINYGUEST_PVH -c "$here/guest.c" -o "$out/guest-pvh.o"
link "$out/guest.o" "$out/tinyguest.elf"
link "$out/guest-pvh.o" "$out/tinyguest-pvh.elf"
# bzImage: 0x200 bytes of padding (the payload is loaded at 1 MiB, entered at +0x200) + the code.
${OBJCOPY:-objcopy} -O binary "$out/tinyguest.elf" "$out/tinyguest.text"
{ head -c 512 /dev/zero; cat "$out/tinyguest.text"; } > "$out/tinyguest.flat"
python3 "$here/mkbzimage.py" "$out/tinyguest.flat" "$out/tinyguest.bzImage"
echo "$out/tinyguest.elf"
