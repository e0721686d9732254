/*
 * A console flood: writes "flood " to COM1 for ever, half the time waiting for LSR.THRE as a
 * polling driver does and half the time not (as a guest that ignores its transmitter).
 */
#include "common.S"

main:
    xor ebx, ebx
1:  lea rsi, [rip + text]
    call puts
    inc ebx
    test ebx, 1
    jz 1b
    mov dx, COM1
    mov ecx, 64
2:  mov al, 'y'
    out dx, al
    loop 2b
    jmp 1b

    .section .rodata
text: .asciz "flood "
