/* Serial input: print "ready", wait for one received byte (LSR.DR), echo it. */
#include "common.S"

main:
    lea rsi, [rip + ready]
    call puts
1:  mov dx, COM1_LSR
    in al, dx
    test al, LSR_DR
    jz 1b
    mov dx, COM1
    in al, dx
    lea rsi, [rip + got]
    call puts
    call putc
    lea rsi, [rip + nl]
    call puts
    xor eax, eax
    ret

    .section .rodata
ready: .asciz "ready\r\n"
got:   .asciz "got "
nl:    .asciz "\r\n"
