/*
 * String port I/O (`rep ins`/`rep outs`): every element is its own access to the device at
 * port 0x520. Reads 1, 2, 4 and 16 bytes, 3 words, 4 dwords, 600 dwords into a buffer that
 * crosses a page boundary, then 5000 bytes (more than KVM's one-page data area holds, so
 * several exits), and writes the same elements back in the same order. The test checks the
 * device's log; the guest exits 0.
 */
#include "common.S"

#define PORT 0x520

main:
    cld
    mov dx, PORT
    lea rdi, [rip + buf]
    mov ecx, 1
    rep insb
    mov ecx, 2
    rep insb
    mov ecx, 4
    rep insb
    mov ecx, 16
    rep insb
    mov ecx, 3
    rep insw
    mov ecx, 4
    rep insd
    lea rdi, [rip + pages + 4096 - 6]
    mov ecx, 600
    rep insd
    lea rdi, [rip + big]
    mov ecx, 5000
    rep insb

    lea rsi, [rip + buf]
    mov ecx, 1
    rep outsb
    mov ecx, 2
    rep outsb
    mov ecx, 4
    rep outsb
    mov ecx, 16
    rep outsb
    mov ecx, 3
    rep outsw
    mov ecx, 4
    rep outsd
    lea rsi, [rip + pages + 4096 - 6]
    mov ecx, 600
    rep outsd
    lea rsi, [rip + big]
    mov ecx, 5000
    rep outsb

    lea rsi, [rip + ok]
    call puts
    xor eax, eax
    ret

    .section .rodata
ok: .asciz "string io done\r\n"
    .section .bss
buf: .skip 64
    .align 4096
pages: .skip 8192
big: .skip 8192
