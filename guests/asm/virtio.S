/*
 * A minimal polling virtio-mmio (version 2) driver for the test guests: one queue of 8
 * descriptors per device, interrupts unused (the guest never enables them).
 *
 *   virtio_init   RDI = device window, RSI = ring memory, EDX = number of queues (1 or 2).
 *                 Queue q's rings are at RSI + q * 0x4000: descriptors at +0, available
 *                 ring at +0x1000, used ring at +0x2000. Negotiates VERSION_1 only.
 *                 Returns EAX = device status (bit 2, DRIVER_OK, set on success).
 *   virtq_post    RDI = device window, RSI = the queue's ring memory, R8D = queue index,
 *                 EAX = head descriptor index. Makes the chain available and notifies.
 *                 Returns ECX = the available index the used ring must reach.
 *   virtq_submit  virtq_post, then polls the used ring. Returns EAX = 0 when the device used
 *                 the chain, 1 on timeout.
 *   DESC ring, index, addr, len, flags, next   writes one descriptor
 */

#define VIRTIO_MAGIC    0x74726976
#define VREG_MAGIC      0x000
#define VREG_DEVICE_ID  0x008
#define VREG_DRV_FEAT   0x020
#define VREG_DRV_SEL    0x024
#define VREG_QSEL       0x030
#define VREG_QNUM       0x038
#define VREG_QREADY     0x044
#define VREG_NOTIFY     0x050
#define VREG_STATUS     0x070
#define VREG_QDESC      0x080
#define VREG_QDRIVER    0x090
#define VREG_QDEVICE    0x0a0
#define VREG_CONFIG     0x100
#define F_NEXT  1
#define F_WRITE 2

.macro DESC ring, index, addr, len, flags, next
    mov rax, \addr
    mov qword ptr [\ring + \index * 16], rax
    mov dword ptr [\ring + \index * 16 + 8], \len
    mov word ptr [\ring + \index * 16 + 12], \flags
    mov word ptr [\ring + \index * 16 + 14], \next
.endm

    .text
virtio_init:
    mov dword ptr [rdi + VREG_STATUS], 0
    mov dword ptr [rdi + VREG_STATUS], 1
    mov dword ptr [rdi + VREG_STATUS], 3
    mov dword ptr [rdi + VREG_DRV_SEL], 1
    mov dword ptr [rdi + VREG_DRV_FEAT], 1          /* VIRTIO_F_VERSION_1 (bit 32) */
    mov dword ptr [rdi + VREG_DRV_SEL], 0
    mov dword ptr [rdi + VREG_DRV_FEAT], 0
    mov dword ptr [rdi + VREG_STATUS], 11
    mov eax, [rdi + VREG_STATUS]
    test eax, 8
    jz 1f
    push rsi
    push rcx
    xor ecx, ecx
2:  mov [rdi + VREG_QSEL], ecx
    mov dword ptr [rdi + VREG_QNUM], 8
    mov [rdi + VREG_QDESC], esi
    mov dword ptr [rdi + VREG_QDESC + 4], 0
    lea eax, [rsi + 0x1000]
    mov [rdi + VREG_QDRIVER], eax
    mov dword ptr [rdi + VREG_QDRIVER + 4], 0
    lea eax, [rsi + 0x2000]
    mov [rdi + VREG_QDEVICE], eax
    mov dword ptr [rdi + VREG_QDEVICE + 4], 0
    mov dword ptr [rdi + VREG_QREADY], 1
    add esi, 0x4000
    inc ecx
    cmp ecx, edx
    jb 2b
    pop rcx
    pop rsi
    mov dword ptr [rdi + VREG_STATUS], 15
    mov eax, [rdi + VREG_STATUS]
1:  ret

virtq_post:
    push rdx
    movzx ecx, word ptr [rsi + 0x1002]              /* avail.idx */
    mov edx, ecx
    and edx, 7
    mov [rsi + 0x1004 + rdx * 2], ax                /* avail.ring[idx % 8] = head */
    inc ecx
    mov [rsi + 0x1002], cx                          /* publish */
    mov [rdi + VREG_NOTIFY], r8d
    pop rdx
    ret

virtq_submit:
    push rcx
    push rdx
    call virtq_post
    mov edx, 2000000
2:  cmp cx, word ptr [rsi + 0x2002]                 /* used.idx caught up? */
    je 3f
    pause
    dec edx
    jnz 2b
    mov eax, 1
    jmp 4f
3:  xor eax, eax
4:  pop rdx
    pop rcx
    ret
