/*
 * Benchmark guest, virtio-pci interrupts: bench_irq_mmio.S over virtio-pci. Finds the first
 * virtio-blk function (1af4:1042), gives queue 0 MSI-X vector 1 (IDT vector MSI_VECTOR + 1),
 * then submits REQUESTS FLUSH requests one at a time, each waited for in HLT until its MSI-X
 * message (an irqfd on KVM) reaches msi_handler1, which only counts and EOIs: MSI-X needs no
 * ISR read. Exits 0, or the failed check's number.
 */
#include "common.S"
#include "pci.S"

#define REQUESTS    10000                           /* benches/interrupts.rs counts on it */
#define RING0       0x40000
#define HDR         0x60000
#define STATUS      0x60100
#define QUEUE_IRQS  (msi_count + 4)                 /* queue 0 is MSI-X vector 1 */

main:
    call irq_init
    mov edi, 0x10421af4
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
    mov edx, 2                                      /* config and queue 0 */
    mov ecx, MSI_VECTOR
    call msix_setup
    mov rsi, RING0
    mov edx, 1
    mov r9d, 1
    call virtio_pci_init
    test eax, 4
    mov al, 12
    jz 9f
    mov dword ptr [HDR], 4                          /* FLUSH: header, status */
    DESC RING0, 0, HDR, 16, F_NEXT, 1
    DESC RING0, 1, STATUS, 1, F_WRITE, 0

    mov rdi, LAPIC                                  /* the watchdog, one-shot */
    mov dword ptr [rdi + 0x3e0], 0xa                /* divide by 128 */
    mov dword ptr [rdi + 0x320], WATCHDOG_VECTOR
    mov dword ptr [rdi + 0x380], 0x10000000         /* 2^28 * 128 ns */

    mov r12d, REQUESTS
    xor r13d, r13d                                  /* interrupts expected so far */
1:  mov byte ptr [STATUS], 0xff
    mov rsi, RING0
    xor r8d, r8d
    xor eax, eax
    call vq_post                                    /* ECX = the used index to expect */
    inc r13d
2:  cli
    cmp [rip + QUEUE_IRQS], r13d
    jae 3f
    cmp byte ptr [rip + watchdog_fired], 0
    mov al, 13
    jne 9f
    sti                                             /* hlt in sti's shadow */
    hlt
    jmp 2b
3:  cmp cx, word ptr [RING0 + 0x2002]               /* the request was used */
    mov al, 14
    jne 9f
    cmp byte ptr [STATUS], 0
    mov al, 15
    jne 9f
    dec r12d
    jnz 1b
    xor eax, eax
9:  ret

    .section .bss
    .align 8
vp: .skip VP_SIZE
