//! The world switch: load guest registers, VMLAUNCH/VMRESUME, and on VM exit
//! save them and return to the caller as if from an ordinary function call.
//!
//! `vmx_enter` pushes hv's callee-saved registers and the register-block
//! pointer, records the stack pointer as the VMCS host RSP and enters the
//! guest. A VM exit lands at `vmx_exit` (the VMCS host RIP) on that same
//! stack (SDM Vol. 3C 28.5.1), which stores the guest registers, restores
//! hv's and returns 0. If the entry instruction itself fails it falls
//! through and returns 1 (VMfailInvalid) or 2 (VMfailValid, SDM 31.2).

use core::arch::global_asm;

/// Guest general-purpose registers that the VMCS does not hold (RSP and RIP
/// live in the VMCS). Offsets are used by the assembly below.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}
const _: () = assert!(core::mem::offset_of!(GuestRegisters, rdi) == 40);
const _: () = assert!(core::mem::offset_of!(GuestRegisters, r15) == 112);

global_asm!(
    r#"
    .section .text
    .global vmx_enter
vmx_enter:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rdi
    mov rax, 0x6c14
    vmwrite rax, rsp
    test rsi, rsi
    mov rax, [rdi + 0]
    mov rbx, [rdi + 8]
    mov rcx, [rdi + 16]
    mov rdx, [rdi + 24]
    mov rsi, [rdi + 32]
    mov rbp, [rdi + 48]
    mov r8,  [rdi + 56]
    mov r9,  [rdi + 64]
    mov r10, [rdi + 72]
    mov r11, [rdi + 80]
    mov r12, [rdi + 88]
    mov r13, [rdi + 96]
    mov r14, [rdi + 104]
    mov r15, [rdi + 112]
    mov rdi, [rdi + 40]
    jnz 2f
    vmlaunch
    jmp 3f
2:
    vmresume
3:
    mov eax, 1
    jc 4f
    mov eax, 2
4:
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

    .global vmx_exit
vmx_exit:
    push rdi
    mov rdi, [rsp + 8]
    mov [rdi + 0], rax
    mov [rdi + 8], rbx
    mov [rdi + 16], rcx
    mov [rdi + 24], rdx
    mov [rdi + 32], rsi
    mov [rdi + 48], rbp
    mov [rdi + 56], r8
    mov [rdi + 64], r9
    mov [rdi + 72], r10
    mov [rdi + 80], r11
    mov [rdi + 88], r12
    mov [rdi + 96], r13
    mov [rdi + 104], r14
    mov [rdi + 112], r15
    pop rax
    mov [rdi + 40], rax
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    xor eax, eax
    ret
"#
);

unsafe extern "C" {
    /// Enters the guest whose VMCS is current. `launched` selects VMRESUME.
    /// Returns 0 after a VM exit, 1 or 2 if the entry instruction failed.
    pub fn vmx_enter(registers: *mut GuestRegisters, launched: u64) -> u64;
    /// The VM-exit landing point (VMCS host RIP); never called directly.
    pub fn vmx_exit();
}
