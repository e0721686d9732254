/*
 * virtio-net over virtio-pci with MSI-X (config -> vector 0, receive queue -> 1, transmit
 * queue -> 2): sends one broadcast frame (ethertype 0x88b5, payload "hello from the guest")
 * and sleeps until its transmit interrupt, then sleeps on receive interrupts until a frame of
 * the same ethertype arrives (reposting the buffer after any other traffic) and prints its
 * payload as "received: <payload>". Exits 0 or the number of the failed check.
 */
#include "common.S"
#include "pci.S"

#define RINGRX  0x40000
#define RINGTX  0x44000
#define RXBUF   0x60000
#define TXBUF   0x62000
#define HDR     12
#define ETHERTYPE_LE 0xb588                         /* 0x88b5 in network order, read as LE */
#define RX_IRQS (msi_count + 4)
#define TX_IRQS (msi_count + 8)

main:
    call irq_init
    mov edi, 0x10411af4
    call pci_find_device
    lea rbx, [rip + vp]
    mov [rbx + VP_CFG], eax
    cmp eax, -1
    mov al, 10
    je 9f
    call virtio_pci_probe
    test eax, eax
    mov al, 11
    jnz 9f
    cmp dword ptr [rbx + VP_MSIX_SIZE], 3           /* two queues + config */
    mov al, 12
    jne 9f
    mov edx, 3
    mov ecx, MSI_VECTOR
    call msix_setup
    mov rsi, RINGRX
    mov edx, 2
    mov r9d, 1
    call virtio_pci_init
    test eax, 4
    mov al, 13
    jz 9f

    call post_rx

    /* The frame: header (zeros), broadcast, our MAC, ethertype, payload. */
    mov rdi, TXBUF
    xor eax, eax
    mov ecx, HDR + 60
    rep stosb
    mov dword ptr [TXBUF + HDR], 0xffffffff
    mov word ptr [TXBUF + HDR + 4], 0xffff
    mov rsi, [rbx + VP_DEVCFG]                      /* MAC from the config space, */
    xor ecx, ecx                                    /* a byte at a time as Linux reads it */
1:  mov al, [rsi + rcx]
    mov [TXBUF + HDR + 6 + rcx], al
    inc ecx
    cmp ecx, 6
    jb 1b
    mov word ptr [TXBUF + HDR + 12], ETHERTYPE_LE
    lea rsi, [rip + hello]
    mov rdi, TXBUF + HDR + 14
    mov ecx, 20
    rep movsb
    DESC RINGTX, 0, TXBUF, HDR + 60, 0, 0
    mov rsi, RINGTX
    mov r8d, 1
    xor eax, eax
    call vq_post
    lea rdi, [rip + TX_IRQS]
    mov esi, 1
    call wait_irq
    test eax, eax
    mov al, 14
    jnz 9f
    cmp cx, word ptr [RINGTX + 0x2002]
    mov al, 15
    jne 9f

    /* Sleep until our ethertype arrives; repost the buffer after anything else. */
    mov r13d, 3                                     /* watchdog periods to wait for it */
2:  mov esi, [rip + RX_IRQS]
    inc esi
    cmp r12w, word ptr [RINGRX + 0x2002]
    je 3f
    lea rdi, [rip + RX_IRQS]
    call wait_irq
    test eax, eax
    jz 2b
    dec r13d
    jnz 2b
    lea rsi, [rip + s_timeout]                      /* what the rings say */
    call puts
    movzx eax, word ptr [RINGRX + 0x1002]
    call putdec
    lea rsi, [rip + s_used]
    call puts
    movzx eax, word ptr [RINGRX + 0x2002]
    call putdec
    lea rsi, [rip + s_count]
    call puts
    mov eax, [rip + RX_IRQS]
    call putdec
    lea rsi, [rip + s_tx]
    call puts
    mov eax, [rip + TX_IRQS]
    call putdec
    lea rsi, [rip + nl]
    call puts
    mov al, 16
    jmp 9f
3:  cmp word ptr [RXBUF + HDR + 12], ETHERTYPE_LE
    je 4f
    call post_rx
    jmp 2b
4:  mov byte ptr [RXBUF + HDR + 14 + 40], 0
    lea rsi, [rip + received]
    call puts
    mov rsi, RXBUF + HDR + 14
    call puts
    lea rsi, [rip + s_count]
    call puts
    mov eax, [rip + RX_IRQS]
    call putdec
    lea rsi, [rip + s_tx]
    call puts
    mov eax, [rip + TX_IRQS]
    call putdec
    lea rsi, [rip + nl]
    call puts
    xor eax, eax
9:  ret

/* Makes RXBUF available on queue 0; R12W = the used index that means "filled". */
post_rx:
    DESC RINGRX, 0, RXBUF, 2048, F_WRITE, 0
    mov rsi, RINGRX
    xor r8d, r8d
    xor eax, eax
    call vq_post
    mov r12d, ecx
    ret

    .section .rodata
hello:    .ascii "hello from the guest"
received: .asciz "received: "
s_count:  .asciz "\r\nmsi-x interrupts: rx "
s_tx:     .asciz ", tx "
nl:       .asciz "\r\n"
s_timeout: .asciz "no frame of ours: receive queue avail "
s_used:   .asciz ", used "

    .section .bss
    .align 8
vp: .skip VP_SIZE
