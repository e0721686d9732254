/* Benchmark guest: the smallest useful boot, one line out and exit. Has a PVH entry. */
#include "common.S"

main:
    lea rsi, [rip + msg]
    call puts
    xor eax, eax
    ret

    .section .rodata
msg: .asciz "tiny guest up\r\n"
