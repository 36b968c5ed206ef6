/*
 * A guest in C on Xen's own public headers (Debian's libxen-dev), built
 * freestanding with the host's C compiler: it checks that Mica speaks the
 * Xen interface as Xen's headers define it (numbers, structures, the
 * 2-level event layout of shared_info_t), then powers off.
 *
 * Entry: Mica's guest entry (64-bit mode, identity-mapped RAM, a stack,
 * the start-info page's address in rdi, unused here), linked at 1 MiB with
 * pv-drivers/linker.ld.
 */
#include <stdint.h>
/*
 * Without it Xen's headers describe interface version 0, whose names are
 * the retired calls (__HYPERVISOR_sched_op is then sched_op_compat, 6);
 * Mica offers only the current ones, as a guest that asks for the latest
 * interface (Linux does) uses them.
 */
#define __XEN_INTERFACE_VERSION__ 0x00040e00
#include <xen/xen.h>
#include <xen/version.h>
#include <xen/sched.h>
#include <xen/memory.h>
#include <xen/event_channel.h>

/* A Xen hypercall: vmcall with the number in rax, arguments in rdi, rsi. */
static long hypercall(unsigned long number, unsigned long a1, unsigned long a2)
{
    long result;
    __asm__ volatile("vmcall" : "=a"(result) : "a"(number), "D"(a1), "S"(a2) : "memory");
    return result;
}

/* console_io's write has three arguments: the count in rsi, the bytes in rdx. */
static void write_text(const char *text, unsigned long length)
{
    long result;
    __asm__ volatile("vmcall"
                     : "=a"(result)
                     : "a"((unsigned long)__HYPERVISOR_console_io), "D"((unsigned long)CONSOLEIO_write),
                       "S"(length), "d"(text)
                     : "memory");
    (void)result;
}

/* A line under construction. */
static char line[256];
static unsigned long used;

static void put(const char *text)
{
    while (*text && used < sizeof(line) - 1)
        line[used++] = *text++;
}

static void put_number(long value)
{
    char digits[24];
    int count = 0;
    if (value < 0) {
        put("-");
        value = -value;
    }
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value && count < (int)sizeof(digits));
    while (count)
        line[used < sizeof(line) - 1 ? used++ : used] = digits[--count];
}

static void end_line(void)
{
    put("\n");
    write_text(line, used);
    used = 0;
}

/* The page that becomes the shared info, with Xen's own layout. */
static union {
    shared_info_t info;
    unsigned char bytes[4096];
} shared __attribute__((aligned(4096)));

void _start(void)
{
    long version = hypercall(__HYPERVISOR_xen_version, XENVER_version, 0);
    xen_extraversion_t extra = {0};
    long extra_result = hypercall(__HYPERVISOR_xen_version, XENVER_extraversion, (unsigned long)extra);
    put("xenhello-c: Xen ");
    put_number(version >> 16);
    put(".");
    put_number(version & 0xffff);
    put(extra_result == 0 ? extra : "?");
    end_line();

    struct xen_add_to_physmap add = {
        .domid = DOMID_SELF,
        .space = XENMAPSPACE_shared_info,
        .idx = 0,
        .gpfn = (unsigned long)&shared / 4096,
    };
    long placed = hypercall(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, (unsigned long)&add);

    struct evtchn_alloc_unbound alloc = {.dom = DOMID_SELF, .remote_dom = DOMID_SELF};
    long allocated = hypercall(__HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound, (unsigned long)&alloc);
    struct evtchn_bind_interdomain bind = {.remote_dom = DOMID_SELF, .remote_port = alloc.port};
    long bound = hypercall(__HYPERVISOR_event_channel_op, EVTCHNOP_bind_interdomain, (unsigned long)&bind);
    struct evtchn_send send = {.port = bind.local_port};
    long sent = hypercall(__HYPERVISOR_event_channel_op, EVTCHNOP_send, (unsigned long)&send);

    volatile shared_info_t *info = &shared.info;
    unsigned long word = alloc.port / (8 * sizeof(xen_ulong_t));
    unsigned long bit = alloc.port % (8 * sizeof(xen_ulong_t));
    put("xenhello-c: shared info ");
    put_number(placed);
    put(", channel ");
    put_number(allocated);
    put(" ");
    put_number(bound);
    put(" ");
    put_number(sent);
    put(": pending ");
    put_number((long)((info->evtchn_pending[word] >> bit) & 1));
    put(", upcall ");
    put_number(info->vcpu_info[0].evtchn_upcall_pending);
    put(", selector ");
    put_number((long)info->vcpu_info[0].evtchn_pending_sel);
    end_line();

    struct sched_shutdown shutdown = {.reason = SHUTDOWN_poweroff};
    hypercall(__HYPERVISOR_sched_op, SCHEDOP_shutdown, (unsigned long)&shutdown);
    put("xenhello-c: still running after poweroff");
    end_line();
    for (;;)
        __asm__ volatile("pause");
}
