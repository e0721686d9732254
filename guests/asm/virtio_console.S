/*
 * virtio-console through the polling driver: sends a greeting on the transmit queue, posts
 * a receive buffer, waits for host input and echoes it back as "got: <input>".
 */
#include "common.S"
#include "virtio.S"

#define VCON    0xd0000000
#define RINGRX  0x40000
#define RINGTX  0x44000
#define INBUF   0x60000
#define OUTBUF  0x61000
#define HELLO_LEN 27

main:
    mov rdi, VCON
    mov rsi, RINGRX
    mov edx, 2
    call virtio_init
    test eax, 4
    mov al, 10
    jz 9f

    /* Transmit the greeting (queue 1). */
    lea rax, [rip + hello]
    DESC RINGTX, 0, rax, HELLO_LEN, 0, 0
    mov rsi, RINGTX
    mov r8d, 1
    xor eax, eax
    call virtq_submit
    test al, al
    mov al, 11
    jnz 9f

    /* Post a receive buffer (queue 0) and wait, however long, for input. */
    DESC RINGRX, 0, INBUF, 64, F_WRITE, 0
    mov rsi, RINGRX
    xor r8d, r8d
    xor eax, eax
    call virtq_post
1:  cmp cx, word ptr [RINGRX + 0x2002]
    je 2f
    pause
    jmp 1b
2:  mov ebx, dword ptr [RINGRX + 0x2000 + 4 + 4]    /* used.ring[0].len */

    /* Echo: "got: " + input + "\r\n" from OUTBUF (queue 1). */
    lea rsi, [rip + got]
    mov rdi, OUTBUF
    mov ecx, 5
    rep movsb
    mov rsi, INBUF
    mov ecx, ebx
    rep movsb
    mov word ptr [rdi], 0x0a0d
    lea edx, [ebx + 7]
    DESC RINGTX, 1, OUTBUF, edx, 0, 0
    mov rdi, VCON
    mov rsi, RINGTX
    mov r8d, 1
    mov eax, 1
    call virtq_submit
    test al, al
    mov al, 12
    jnz 9f
    xor eax, eax
9:  ret

    .section .rodata
hello: .ascii "hello from virtio-console\r\n"     /* HELLO_LEN bytes */
got:   .ascii "got: "
