/*
 * A known sequence of exits for the exit-trace test (and the walk-through in
 * docs/vm-exits.md): a write to an empty port, a write and a read of the test device's port,
 * an MMIO write and read of the test device's page, then exit 0 through the debug-exit port.
 */
#include "common.S"

#define TEST_PORT 0x510
#define TEST_MMIO 0xd1001000

main:
    mov al, 0x42
    out 0x80, al                    /* nobody there */
    mov dx, TEST_PORT
    mov eax, 0x12345678
    out dx, eax                     /* the test device keeps it */
    in eax, dx                      /* and answers its bitwise NOT */
    mov ebx, TEST_MMIO
    mov dword ptr [rbx], 0xcafe
    mov eax, dword ptr [rbx + 4]
    xor eax, eax
    ret
