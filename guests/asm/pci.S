/*
 * PCI and virtio-pci helpers for the test guests (x86_64), after common.S.
 *
 * A config address is the CF8 layout without the enable bit:
 *   bus << 16 | device << 11 | function << 8 | register
 * (PCI_DEV(d) builds it for bus 0, function 0.) ECAM reaches the same register at
 * ECAM + (bus << 20 | device << 15 | function << 12 | register).
 *
 *   pci_read32/16/8    EDI = config address -> EAX, through ports 0xcf8/0xcfc (a 16-bit
 *   pci_write32/16/8   register at 0xcfc + (reg & 2), a byte at 0xcfc + (reg & 3)); writes take
 *                      the value in EAX/AX/AL
 *   ecam_read32/16/8   the same through the ECAM window
 *   ecam_write32
 *   pci_find_device    EDI = device ID << 16 | vendor ID -> EAX = config address of the first
 *                      bus 0 function 0 with it, -1 if none
 *   pci_find_cap       EDI = function's config address, ESI = capability ID, EDX = virtio
 *                      cfg_type to match (0: the first of that ID) -> EAX = its offset, 0 if
 *                      none
 *   putnhex            EAX = number, ECX = how many hex digits
 *
 * virtio-pci (RBX = a VP_* block whose VP_CFG the caller set):
 *   virtio_pci_probe   reads BAR0 and the capabilities into the block; EAX = 0, or 1 when a
 *                      capability is missing or not in BAR0
 *   msix_setup         EDX = entries, ECX = first IDT vector: entry i -> APIC 0, vector
 *                      ECX + i, unmasked; then enables MSI-X with the function unmasked
 *   virtio_pci_init    virtio.S's virtio_init over the common config: RSI = ring memory
 *                      (queue q at RSI + q * 0x4000, 8 descriptors), EDX = queues, R9D != 0:
 *                      config -> MSI-X vector 0 and queue q -> vector q + 1 (else NO_VECTOR).
 *                      EAX = device status (DRIVER_OK, bit 2, on success)
 *   vq_post            RSI = the queue's rings, R8D = queue, EAX = head: makes the chain
 *                      available and notifies; ECX = the used index to wait for
 *   vq_submit          vq_post, then polls the used ring: EAX = 0, or 1 on timeout
 *
 * Interrupts: irq_init enables the local APIC and installs msi_handler<i> (counts into dword
 * msi_count[i], EOIs) at IDT vector MSI_VECTOR + i, i < 4, and the watchdog timer's handler.
 *   wait_irq           RDI = a counter, ESI = a value: sleeps in HLT until dword [RDI] >= ESI,
 *                      a LAPIC timer watchdog (about 8 s) stopping it. EAX = 0, or 1 on timeout;
 *                      returns with interrupts off.
 *
 * DESC, F_NEXT and F_WRITE come from virtio.S (its virtio-mmio functions go unused).
 */
#include "virtio.S"

#define ECAM        0xe0000000
#define PCI_DEV(d)  ((d) << 11)

/* Config space registers */
#define PCI_ID          0x00
#define PCI_COMMAND     0x04
#define PCI_STATUS      0x06
#define PCI_REVISION    0x08
#define PCI_HEADER      0x0c
#define PCI_BAR0        0x10
#define PCI_BAR1        0x14
#define PCI_SUBSYSTEM   0x2c
#define PCI_CAP_PTR     0x34
#define PCI_INTERRUPT   0x3c
#define CMD_MEMORY      0x02
#define CMD_MASTER      0x04
#define STATUS_CAPS     0x10
#define CAP_VENDOR      0x09
#define CAP_MSIX        0x11
#define MSIX_ENABLE     0x8000
#define MSIX_MASKALL    0x4000

/* virtio-pci capability cfg_type */
#define VIRTIO_CAP_COMMON   1
#define VIRTIO_CAP_NOTIFY   2
#define VIRTIO_CAP_ISR      3
#define VIRTIO_CAP_DEVICE   4

/* virtio 1.x common configuration (virtio spec 4.1.4.3) */
#define VC_DFSELECT     0x00
#define VC_DF           0x04
#define VC_GFSELECT     0x08
#define VC_GF           0x0c
#define VC_MSIX_CONFIG  0x10
#define VC_NUMQ         0x12
#define VC_STATUS       0x14
#define VC_GENERATION   0x15
#define VC_QSELECT      0x16
#define VC_QSIZE        0x18
#define VC_QMSIX        0x1a
#define VC_QENABLE      0x1c
#define VC_QNOTIFYOFF   0x1e
#define VC_QDESC        0x20
#define VC_QDRIVER      0x28
#define VC_QDEVICE      0x30
#define NO_VECTOR       0xffff

/* What virtio_pci_probe and virtio_pci_init learn about one device */
#define VP_CFG          0       /* u32: config address (set by the caller) */
#define VP_MSIX_CAP     4       /* u32: offset of the MSI-X capability */
#define VP_BAR          8       /* BAR0 (with BAR1), flags cleared */
#define VP_COMMON       16
#define VP_NOTIFY       24
#define VP_NOTIFY_MUL   32      /* u32 */
#define VP_MSIX_SIZE    36      /* u32: table entries */
#define VP_ISR          40
#define VP_DEVCFG       48
#define VP_MSIX_TABLE   56
#define VP_PBA          64
#define VP_QNOTIFY      72      /* u64[4]: each queue's notify address */
#define VP_SIZE         104

#define MSI_VECTOR      0x50
#define WATCHDOG_VECTOR 0x4f
#define MSI_ADDRESS     0xfee00000      /* APIC ID 0 */

    .text
/* CF8 <- the address of EDI's dword; EDX = the data port for EDI's byte. Clobbers EAX. */
pci_select:
    mov eax, edi
    and eax, 0x00fffffc
    or eax, 0x80000000
    mov dx, 0xcf8
    out dx, eax
    mov edx, edi
    and edx, 3
    add edx, 0xcfc
    ret

pci_read32:
    push rdx
    call pci_select
    in eax, dx
    pop rdx
    ret

pci_read16:
    push rdx
    call pci_select
    in ax, dx
    movzx eax, ax
    pop rdx
    ret

pci_read8:
    push rdx
    call pci_select
    in al, dx
    movzx eax, al
    pop rdx
    ret

pci_write32:
    push rdx
    push rax
    call pci_select
    pop rax
    out dx, eax
    pop rdx
    ret

pci_write16:
    push rdx
    push rax
    call pci_select
    pop rax
    out dx, ax
    pop rdx
    ret

pci_write8:
    push rdx
    push rax
    call pci_select
    pop rax
    out dx, al
    pop rdx
    ret

/* RDX = the ECAM address of EDI's register. */
ecam_ptr:
    push rax
    mov edx, edi
    shr edx, 8                                      /* bus << 8 | devfn */
    shl edx, 12
    movzx eax, dil
    or edx, eax
    or edx, ECAM
    pop rax
    ret

ecam_read32:
    push rdx
    call ecam_ptr
    mov eax, [rdx]
    pop rdx
    ret

ecam_read16:
    push rdx
    call ecam_ptr
    movzx eax, word ptr [rdx]
    pop rdx
    ret

ecam_read8:
    push rdx
    call ecam_ptr
    movzx eax, byte ptr [rdx]
    pop rdx
    ret

ecam_write32:
    push rdx
    call ecam_ptr
    mov [rdx], eax
    pop rdx
    ret

pci_find_device:
    push rcx
    push rsi
    mov esi, edi
    xor ecx, ecx
1:  mov edi, ecx
    shl edi, 11
    call pci_read32
    cmp eax, esi
    je 2f
    inc ecx
    cmp ecx, 32
    jb 1b
    mov edi, -1
2:  mov eax, edi
    mov edi, esi
    pop rsi
    pop rcx
    ret

pci_find_cap:
    push rbx
    push rcx
    push rdi
    push r10
    push r11
    mov ebx, edi
    xor r10d, r10d
    lea edi, [rbx + PCI_COMMAND]                    /* command | status << 16 */
    call pci_read32
    bt eax, 16 + 4                                  /* status: capability list */
    jnc 9f
    lea edi, [rbx + PCI_CAP_PTR]
    call pci_read32
    movzx r10d, al
    mov ecx, 48                                     /* a looping list ends here */
1:  and r10d, 0xfc
    jz 9f
    lea edi, [rbx + r10]
    call pci_read32                                 /* id | next << 8 | len << 16 | type << 24 */
    cmp al, sil
    jne 2f
    test edx, edx
    jz 9f
    mov r11d, eax
    shr r11d, 24
    cmp r11d, edx
    je 9f
2:  shr eax, 8                                      /* next */
    movzx r10d, al
    dec ecx
    jnz 1b
    xor r10d, r10d
9:  mov eax, r10d
    pop r11
    pop r10
    pop rdi
    pop rcx
    pop rbx
    ret

putnhex:
    push rax
    push rcx
    push rdx
    mov edx, eax
    shl ecx, 2
    ror edx, cl                                     /* the first digit to the top */
    shr ecx, 2
1:  rol edx, 4
    mov eax, edx
    and eax, 0xf
    add al, '0'
    cmp al, '9'
    jbe 2f
    add al, 'a' - '0' - 10
2:  call putc
    loop 1b
    pop rdx
    pop rcx
    pop rax
    ret

/* EDX = cfg_type -> RAX = BAR0 + the capability's offset, ECX = the capability's offset in
 * config space; CF set when there is none or it is not in BAR0. */
vcap_addr:
    push rdi
    push rsi
    mov edi, [rbx + VP_CFG]
    mov esi, CAP_VENDOR
    call pci_find_cap
    test eax, eax
    jz 8f
    mov ecx, eax
    mov edi, [rbx + VP_CFG]
    lea edi, [rdi + rcx + 4]                        /* bar, id, padding */
    call pci_read32
    test al, al
    jnz 8f
    add edi, 4                                      /* offset */
    call pci_read32
    add rax, [rbx + VP_BAR]
    clc
    jmp 9f
8:  stc
9:  pop rsi
    pop rdi
    ret

virtio_pci_probe:
    push rcx
    push rdx
    push rdi
    push rsi
    mov edi, [rbx + VP_CFG]
    add edi, PCI_BAR1
    call pci_read32
    mov ecx, eax
    shl rcx, 32
    sub edi, 4
    call pci_read32
    and eax, 0xfffffff0
    or rax, rcx
    mov [rbx + VP_BAR], rax

    mov edx, VIRTIO_CAP_COMMON
    call vcap_addr
    jc 8f
    mov [rbx + VP_COMMON], rax
    mov edx, VIRTIO_CAP_ISR
    call vcap_addr
    jc 8f
    mov [rbx + VP_ISR], rax
    mov edx, VIRTIO_CAP_DEVICE
    call vcap_addr
    jc 8f
    mov [rbx + VP_DEVCFG], rax
    mov edx, VIRTIO_CAP_NOTIFY
    call vcap_addr
    jc 8f
    mov [rbx + VP_NOTIFY], rax
    mov edi, [rbx + VP_CFG]
    lea edi, [rdi + rcx + 16]                       /* notify_off_multiplier */
    call pci_read32
    mov [rbx + VP_NOTIFY_MUL], eax

    mov edi, [rbx + VP_CFG]
    mov esi, CAP_MSIX
    xor edx, edx
    call pci_find_cap
    test eax, eax
    jz 8f
    mov [rbx + VP_MSIX_CAP], eax
    lea edi, [rdi + rax]
    call pci_read32                                 /* message control in the top half */
    shr eax, 16
    and eax, 0x7ff
    inc eax
    mov [rbx + VP_MSIX_SIZE], eax
    add edi, 4                                      /* table offset | BIR */
    call pci_read32
    test al, 7
    jnz 8f
    add rax, [rbx + VP_BAR]
    mov [rbx + VP_MSIX_TABLE], rax
    add edi, 4                                      /* PBA offset | BIR */
    call pci_read32
    test al, 7
    jnz 8f
    add rax, [rbx + VP_BAR]
    mov [rbx + VP_PBA], rax
    xor eax, eax
    jmp 9f
8:  lea rsi, [rip + s_nocap]
    call puts
    mov eax, 1
9:  pop rsi
    pop rdi
    pop rdx
    pop rcx
    ret

msix_setup:
    push rax
    push rdi
    push rsi
    mov rdi, [rbx + VP_MSIX_TABLE]
    xor esi, esi
1:  mov dword ptr [rdi], MSI_ADDRESS
    mov dword ptr [rdi + 4], 0
    lea eax, [rcx + rsi]
    mov [rdi + 8], eax                              /* data: the vector, fixed, edge */
    mov dword ptr [rdi + 12], 0                     /* vector control: unmasked */
    add rdi, 16
    inc esi
    cmp esi, edx
    jb 1b
    mov edi, [rbx + VP_CFG]
    add edi, [rbx + VP_MSIX_CAP]
    add edi, 2
    call pci_read16
    and eax, ~MSIX_MASKALL
    or eax, MSIX_ENABLE
    call pci_write16
    pop rsi
    pop rdi
    pop rax
    ret

virtio_pci_init:
    push rcx
    push rsi
    push rdi
    mov rdi, [rbx + VP_COMMON]
    mov byte ptr [rdi + VC_STATUS], 0               /* reset, done when it reads 0 */
    mov ecx, 1000000
1:  cmp byte ptr [rdi + VC_STATUS], 0
    je 2f
    pause
    loop 1b
2:  mov byte ptr [rdi + VC_STATUS], 1               /* ACKNOWLEDGE */
    mov byte ptr [rdi + VC_STATUS], 3               /* DRIVER */
    mov dword ptr [rdi + VC_DFSELECT], 1
    test dword ptr [rdi + VC_DF], 1                 /* VIRTIO_F_VERSION_1 (bit 32) offered? */
    jz 8f
    mov dword ptr [rdi + VC_GFSELECT], 1
    mov dword ptr [rdi + VC_GF], 1                  /* accept VERSION_1, nothing else */
    mov dword ptr [rdi + VC_GFSELECT], 0
    mov dword ptr [rdi + VC_GF], 0
    mov byte ptr [rdi + VC_STATUS], 11              /* FEATURES_OK */
    test byte ptr [rdi + VC_STATUS], 8
    jz 8f
    cmp [rdi + VC_NUMQ], dx
    jb 8f
    mov eax, NO_VECTOR
    test r9d, r9d
    jz 3f
    xor eax, eax
3:  mov [rdi + VC_MSIX_CONFIG], ax
    cmp [rdi + VC_MSIX_CONFIG], ax
    jne 7f
    xor ecx, ecx
4:  mov [rdi + VC_QSELECT], cx
    mov word ptr [rdi + VC_QSIZE], 8
    mov [rdi + VC_QDESC], esi
    mov dword ptr [rdi + VC_QDESC + 4], 0
    lea eax, [rsi + 0x1000]
    mov [rdi + VC_QDRIVER], eax
    mov dword ptr [rdi + VC_QDRIVER + 4], 0
    lea eax, [rsi + 0x2000]
    mov [rdi + VC_QDEVICE], eax
    mov dword ptr [rdi + VC_QDEVICE + 4], 0
    lea eax, [rcx + 1]
    test r9d, r9d
    jnz 5f
    mov eax, NO_VECTOR
5:  mov [rdi + VC_QMSIX], ax
    cmp [rdi + VC_QMSIX], ax
    jne 7f
    movzx eax, word ptr [rdi + VC_QNOTIFYOFF]
    imul eax, [rbx + VP_NOTIFY_MUL]
    add rax, [rbx + VP_NOTIFY]
    mov [rbx + VP_QNOTIFY + rcx * 8], rax
    mov word ptr [rdi + VC_QENABLE], 1
    add esi, 0x4000
    inc ecx
    cmp ecx, edx
    jb 4b
    mov byte ptr [rdi + VC_STATUS], 15              /* DRIVER_OK */
8:  movzx eax, byte ptr [rdi + VC_STATUS]
    jmp 9f
7:  lea rsi, [rip + s_vector]                       /* the MSI-X vector did not stick */
    call puts
    xor eax, eax
9:  pop rdi
    pop rsi
    pop rcx
    ret

vq_post:
    push rdx
    movzx ecx, word ptr [rsi + 0x1002]              /* avail.idx */
    mov edx, ecx
    and edx, 7
    mov [rsi + 0x1004 + rdx * 2], ax                /* avail.ring[idx % 8] = head */
    inc ecx
    mov [rsi + 0x1002], cx                          /* publish */
    mov rdx, [rbx + VP_QNOTIFY + r8 * 8]
    mov [rdx], r8w                                  /* notify: the queue index, 16 bits */
    pop rdx
    ret

vq_submit:
    push rcx
    push rdx
    call vq_post
    mov edx, 2000000
1:  cmp cx, word ptr [rsi + 0x2002]                 /* used.idx caught up? */
    je 2f
    pause
    dec edx
    jnz 1b
    mov eax, 1
    jmp 3f
2:  xor eax, eax
3:  pop rdx
    pop rcx
    ret

irq_init:
    push rax
    push rdi
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xf0], 0x1ff               /* enable the local APIC */
    mov edi, WATCHDOG_VECTOR
    lea rax, [rip + watchdog_handler]
    call idt_set
    mov edi, MSI_VECTOR
    lea rax, [rip + msi_handler0]
    call idt_set
    inc edi
    lea rax, [rip + msi_handler1]
    call idt_set
    inc edi
    lea rax, [rip + msi_handler2]
    call idt_set
    inc edi
    lea rax, [rip + msi_handler3]
    call idt_set
    pop rdi
    pop rax
    ret

wait_irq:
    push rdx
    mov byte ptr [rip + watchdog_fired], 0
    mov rdx, LAPIC
    mov dword ptr [rdx + 0x3e0], 0xa                /* divide by 128 */
    mov dword ptr [rdx + 0x320], WATCHDOG_VECTOR    /* one-shot */
    mov dword ptr [rdx + 0x380], 0x04000000         /* 2^26 * 128 ns: about 8.6 s */
1:  cli
    cmp [rdi], esi
    jae 2f
    cmp byte ptr [rip + watchdog_fired], 0
    jne 3f
    sti                                             /* hlt runs in sti's shadow: an */
    hlt                                             /* interrupt cannot slip in between */
    jmp 1b
2:  xor eax, eax
    jmp 4f
3:  mov eax, 1
4:  mov dword ptr [rdx + 0x380], 0                  /* stop the watchdog */
    pop rdx
    ret

watchdog_handler:
    mov byte ptr [rip + watchdog_fired], 1
    push rdi
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0                   /* EOI */
    pop rdi
    iretq

.macro MSI_HANDLER n
msi_handler\n:
    lock inc dword ptr [rip + msi_count + 4 * \n]
    push rdi
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0                   /* EOI */
    pop rdi
    iretq
.endm
    MSI_HANDLER 0
    MSI_HANDLER 1
    MSI_HANDLER 2
    MSI_HANDLER 3

    .section .rodata
s_nocap:  .asciz "virtio-pci: a capability is missing or outside BAR0\r\n"
s_vector: .asciz "virtio-pci: an MSI-X vector did not read back\r\n"

    .section .data
    .align 4
msi_count: .long 0, 0, 0, 0
watchdog_fired: .byte 0

    .text
