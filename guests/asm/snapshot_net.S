/*
 * For the virtio-net snapshot test, over the polling driver (no interrupts): one exchange
 * (post a receive buffer, send "guest frame 1", wait for a frame of ethertype 0x88b5 and print
 * "received: <payload>"), then PHASE = 1 and a wait until the test writes GATE >= 1 (a
 * snapshot is taken there, with both queues idle), then a second exchange ("guest frame 2")
 * through the same queues, so their indices must have survived. Prints
 * `result rx <used idx> tx <used idx>` and exits 0, or the number of the failed check.
 */
#include "common.S"
#include "virtio.S"

#define VNET    0xd0000000
#define RINGRX  0x40000
#define RINGTX  0x44000                             /* queue 1: RINGRX + 0x4000 */
#define RXBUF   0x60000
#define TXBUF   0x62000
#define HDR     12
#define ETHERTYPE_LE 0xb588                         /* 0x88b5 in network order, read as LE */
#define GATE    0x1f0008                            /* the snapshot tests' gate and phase */
#define PHASE   0x1f0010

main:
    mov rdi, VNET
    mov rsi, RINGRX
    mov edx, 2
    call virtio_init
    test eax, 4
    mov al, 10
    jz 9f

    mov bl, '1'
    call exchange
    test al, al
    jnz 9f

    mov qword ptr [PHASE], 1
1:  pause
    cmp qword ptr [GATE], 1
    jb 1b

    mov bl, '2'
    call exchange
    test al, al
    jnz 9f

    lea rsi, [rip + result]
    call puts
    movzx eax, word ptr [RINGRX + 0x2002]
    call putdec
    lea rsi, [rip + tx]
    call puts
    movzx eax, word ptr [RINGTX + 0x2002]
    call putdec
    lea rsi, [rip + nl]
    call puts
    xor eax, eax
9:  ret

/* Round BL ('1', '2'): posts RXBUF, sends "guest frame <BL>" (broadcast, our MAC), waits
 * for our ethertype (reposting after anything else), prints its payload. AL = 0 or the
 * failed check's number. */
exchange:
    call post_rx
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
    mov ecx, 12
    rep movsb
    mov [TXBUF + HDR + 26], bl
    DESC RINGTX, 0, TXBUF, HDR + 60, 0, 0
    mov rdi, VNET
    mov rsi, RINGTX
    mov r8d, 1
    xor eax, eax
    call virtq_submit
    test al, al
    mov al, 11
    jnz 9f

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
hello:    .ascii "guest frame "
received: .asciz "received: "
result:   .asciz "result rx "
tx:       .asciz " tx "
nl:       .asciz "\r\n"
