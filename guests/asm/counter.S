/*
 * For the API and statistics tests: 1000 `out`s to port 0x80 (no device behind it), then a
 * progress counter at COUNTER (a 64-bit word) that goes up for ever. Never exits by itself.
 */
#include "common.S"

#define COUNTER 0x1f0000
#define WRITES  1000

main:
    mov ecx, WRITES
1:  out 0x80, al
    dec ecx
    jnz 1b
    mov rdi, COUNTER
2:  inc qword ptr [rdi]
    jmp 2b
