//! Hostile-guest suite: attack-dom0 attacks dom0's services from a guest.
//! Its command line names the attacks, run in order:
//!
//! - `store`: probes other domains' store nodes for existence: each
//!   operation on a path that may exist (another domain's vif) is compared
//!   with the same operation on a path that cannot (a made-up device); any
//!   difference reveals a node. Then tries to rewrite and remove the `name`
//!   and `domid` dom0 wrote in its home. Reports
//!   `attack-dom0: store: other domains' nodes revealed: N` and
//!   `attack-dom0: store: rewrite my name: <result>`.
//! - `escape`: writes terminal escape sequences (set the title, clear the
//!   screen) on its console, into the store (`data/evil`) and into hv's
//!   log (through Xen's `console_io`, `PWNED-LOG-XEN`, and Mica's
//!   `ConsoleWrite`, `PWNED-LOG-MICA`), all marked `PWNED`, which dom0
//!   must show escaped.
//!
//! It ends with `attack-dom0: done` and waits.
#![no_std]
#![no_main]

use core::fmt::Write;

use abi::xen::io::store::XsdSockmsgType;
use arrayvec::ArrayString;
use pv_drivers::guest::{self, Guest};
use pv_drivers::hypercall;

/// Domains probed: ids 1 to this (the suite's victims are among the first).
const PROBED_DOMAINS: u32 = 16;

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let mut cmdline = ArrayString::<256>::new();
    let _ = cmdline.try_push_str(guest.cmdline());
    for attack in cmdline.split_whitespace() {
        match attack {
            "store" => probe_store(&mut guest),
            "escape" => inject_escapes(&mut guest),
            other => {
                let _ = writeln!(guest, "attack-dom0: unknown attack {other:?}");
            }
        }
    }
    let _ = writeln!(guest, "attack-dom0: done");
    loop {
        guest.wait_for_event();
    }
}

fn probe_store(guest: &mut Guest) {
    let me = guest.domain_id();
    let operations = [
        XsdSockmsgType::Mkdir,
        XsdSockmsgType::Read,
        XsdSockmsgType::Directory,
        XsdSockmsgType::GetPerms,
        XsdSockmsgType::SetPerms,
        XsdSockmsgType::Rm,
        XsdSockmsgType::Write,
    ];
    let mut revealed = 0;
    let mut permissions = ArrayString::<16>::new();
    let _ = write!(permissions, "b{me}");
    for domain in (1..=PROBED_DOMAINS).filter(|&domain| domain != me) {
        let mut maybe = ArrayString::<64>::new();
        let mut missing = ArrayString::<64>::new();
        let _ = write!(maybe, "/local/domain/{domain}/device/vif/0");
        let _ = write!(missing, "/local/domain/{domain}/device/no-such-device/0");
        for operation in operations {
            let mut ask = |path: &str| {
                let fields: &[&str] = match operation {
                    XsdSockmsgType::SetPerms => &[path, &permissions],
                    XsdSockmsgType::Write => &[path, "x"],
                    _ => &[path],
                };
                guest.store_op(operation, fields).map(|_| ())
            };
            let (on_maybe, on_missing) = (ask(&maybe), ask(&missing));
            if on_maybe != on_missing {
                revealed += 1;
                let _ = writeln!(
                    guest,
                    "attack-dom0: store: {operation:?} {maybe}: {on_maybe:?}, on a missing path: {on_missing:?}"
                );
            }
        }
    }
    let _ = writeln!(guest, "attack-dom0: store: other domains' nodes revealed: {revealed}");
    let rewrite = guest.store_write("name", "Domain-0");
    let _ = writeln!(guest, "attack-dom0: store: rewrite my name: {rewrite:?}");
    let rewrite = guest.store_write("domid", "0");
    let _ = writeln!(guest, "attack-dom0: store: rewrite my domid: {rewrite:?}");
    let removed = guest.store_op(XsdSockmsgType::Rm, &["name"]).map(|_| ());
    let _ = writeln!(guest, "attack-dom0: store: remove my name: {removed:?}");
}

fn inject_escapes(guest: &mut Guest) {
    // Set the window title, clear the screen, home the cursor, ring the bell.
    let _ = writeln!(guest, "attack-dom0: escape: \x1b]0;PWNED-CONSOLE\x07\x1b[2J\x1b[H\x07 end");
    let stored = guest.store_write("data/evil", "\x1b]0;PWNED-STORE\x07\x1b[2J");
    let xen = pv_drivers::xen::console_write(b"attack-dom0: log \x1b]0;PWNED-LOG-XEN\x07\x1b[2J end\n");
    let mica = hypercall::console_write(b"attack-dom0: log \x1b]0;PWNED-LOG-MICA\x07\x1b[2J end\n");
    let _ =
        writeln!(guest, "attack-dom0: escape: stored {stored:?}, logged through Xen's call {xen:?}, Mica's {mica:?}");
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("attack-dom0: panic: {info}\n"))
}
