/* Resets the machine through the i8042 (command 0xfe on port 0x64). */
#include "common.S"

main:
    lea rsi, [rip + msg]
    call puts
    mov al, 0xfe
    out 0x64, al
    mov al, 1                              /* still running: the reset did not happen */
    ret

    .section .rodata
msg: .asciz "resetting\r\n"
