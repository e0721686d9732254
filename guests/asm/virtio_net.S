/*
 * virtio-net through the polling driver: sends one broadcast frame (ethertype 0x88b5,
 * payload "hello from the guest"), then waits for a frame of the same ethertype from the host
 * (skipping any other traffic) and prints its payload as "received: <payload>".
 */
#include "common.S"
#include "virtio.S"

#define VNET    0xd0000000
#define RINGRX  0x40000
#define RINGTX  0x44000
#define RXBUF   0x60000
#define TXBUF   0x62000
#define HDR     12
#define ETHERTYPE_LE 0xb588                         /* 0x88b5 in network order, read as LE */

main:
    mov rdi, VNET
    mov rsi, RINGRX
    mov edx, 2
    call virtio_init
    test eax, 4
    mov al, 10
    jz 9f

    /* Post the first receive buffer. */
    call post_rx

    /* Build and send the frame: header (zeros), broadcast, our MAC, ethertype, payload. */
    mov rdi, TXBUF
    xor eax, eax
    mov ecx, HDR + 60
    rep stosb
    mov dword ptr [TXBUF + HDR], 0xffffffff
    mov word ptr [TXBUF + HDR + 4], 0xffff
    mov rdi, VNET
    mov eax, [rdi + VREG_CONFIG]                    /* MAC from the config space */
    mov [TXBUF + HDR + 6], eax
    mov ax, [rdi + VREG_CONFIG + 4]
    mov [TXBUF + HDR + 10], ax
    mov word ptr [TXBUF + HDR + 12], ETHERTYPE_LE
    lea rsi, [rip + hello]
    mov rdi, TXBUF + HDR + 14
    mov ecx, 20
    rep movsb
    DESC RINGTX, 0, TXBUF, HDR + 60, 0, 0
    mov rdi, VNET
    mov rsi, RINGTX
    mov r8d, 1
    xor eax, eax
    call virtq_submit
    test al, al
    mov al, 11
    jnz 9f

    /* Wait for our ethertype; repost the buffer after anything else. */
1:  cmp r12w, word ptr [RINGRX + 0x2002]
    je 2f
    pause
    jmp 1b
2:  cmp word ptr [RXBUF + HDR + 12], ETHERTYPE_LE
    je 3f
    call post_rx
    jmp 1b
3:  mov byte ptr [RXBUF + HDR + 14 + 40], 0
    lea rsi, [rip + received]
    call puts
    mov rsi, RXBUF + HDR + 14
    call puts
    lea rsi, [rip + nl]
    call puts
    xor eax, eax
9:  ret

/* Makes RXBUF available on queue 0; R12W = the used index that means "filled". */
post_rx:
    DESC RINGRX, 0, RXBUF, 2048, F_WRITE, 0
    mov rdi, VNET
    mov rsi, RINGRX
    xor r8d, r8d
    xor eax, eax
    call virtq_post
    mov r12d, ecx
    ret

    .section .rodata
hello:    .ascii "hello from the guest"
received: .asciz "received: "
nl:       .asciz "\r\n"
