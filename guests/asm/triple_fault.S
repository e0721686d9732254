/* An exception with an empty IDT: #UD -> #DF -> triple fault. */
#include "common.S"

main:
    lidt [rip + empty_idt]
    ud2
    mov al, 1
    ret

    .section .rodata
    .align 8
empty_idt:
    .word 0
    .quad 0
