/* The MMIO console: probe its ID, write a greeting, wait for one input byte, echo it. */
#include "common.S"

#define MCON        0xd1000000
#define MCON_DATA   0x0
#define MCON_STATUS 0x4
#define MCON_ID     0x8

main:
    mov rdi, MCON
    cmp dword ptr [rdi + MCON_ID], 0x4e4f434d
    mov al, 10
    jne 9f
    lea rsi, [rip + hello]
    call mputs
1:  test dword ptr [rdi + MCON_STATUS], 1
    jz 1b
    mov ebx, [rdi + MCON_DATA]
    lea rsi, [rip + got]
    call mputs
    mov [rdi + MCON_DATA], bl
    lea rsi, [rip + nl]
    call mputs
    xor eax, eax
9:  ret

/* RSI = NUL-terminated string, RDI = console */
mputs:
    lodsb
    test al, al
    jz 2f
    mov [rdi + MCON_DATA], al
    jmp mputs
2:  ret

    .section .rodata
hello: .asciz "hello from the MMIO console\r\n"
got:   .asciz "got "
nl:    .asciz "\r\n"
