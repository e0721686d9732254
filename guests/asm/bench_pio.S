/* Benchmark guest: 20,000 port writes to 0x80 (no device behind it), then exit. */
#include "common.S"

main:
    mov ecx, 20000
1:  out 0x80, al
    dec ecx
    jnz 1b
    xor eax, eax
    ret
