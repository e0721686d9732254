/*
 * Port and MMIO round trips to the test device, which answers every read with the bitwise
 * NOT of the last value written at that width. Exits 0, or the number of the failed check.
 */
#include "common.S"

#define TEST_PORT 0x510
#define TEST_MMIO 0xd1001000

main:
    mov dx, TEST_PORT
    mov al, 0x5a
    out dx, al
    in al, dx
    cmp al, 0xa5
    mov bl, 1
    jne fail

    mov ax, 0x1234
    out dx, ax
    in ax, dx
    cmp ax, 0xedcb
    mov bl, 2
    jne fail

    mov eax, 0x12345678
    out dx, eax
    in eax, dx
    cmp eax, 0xedcba987
    mov bl, 3
    jne fail

    mov rdi, TEST_MMIO
    mov byte ptr [rdi], 0x0f
    mov al, [rdi]
    cmp al, 0xf0
    mov bl, 4
    jne fail

    mov word ptr [rdi + 2], 0x00ff
    mov ax, [rdi + 2]
    cmp ax, 0xff00
    mov bl, 5
    jne fail

    mov dword ptr [rdi + 4], 0xcafef00d
    mov eax, [rdi + 4]
    cmp eax, 0x35010ff2
    mov bl, 6
    jne fail

    mov rax, 0x0123456789abcdef
    mov [rdi + 8], rax
    mov rcx, [rdi + 8]
    not rcx
    cmp rcx, rax
    mov bl, 7
    jne fail

    lea rsi, [rip + ok]
    call puts
    xor eax, eax
    ret
fail:
    mov al, bl
    ret

    .section .rodata
ok: .asciz "io ok\r\n"
