//! Example guest: uses the store over its ring: writes and reads back a key
//! in its home, reads the name dom0 gave it, and checks that another
//! domain's home and dom0's tree are refused.
#![no_std]
#![no_main]

use core::fmt::Write;

use pv_drivers::guest::{self, Guest, StoreFailure};

#[unsafe(no_mangle)]
extern "C" fn _start(start_info: u64) -> ! {
    let mut guest = Guest::init(start_info);
    let me = guest.domain_id();
    let mut passed = 0;
    let mut total = 0;
    let mut check = |guest: &mut Guest, name: &str, ok: bool, detail: core::fmt::Arguments| {
        total += 1;
        passed += ok as usize;
        let _ = writeln!(guest, "storetest: {name}: {} ({detail})", if ok { "ok" } else { "WRONG" });
    };

    let mut value = [0u8; 128];
    let written = guest.store_write("data/greeting", "hello from the store");
    let read = guest.store_read("data/greeting", &mut value);
    let text = core::str::from_utf8(&value[..*read.as_ref().unwrap_or(&0)]).unwrap_or("?");
    check(
        &mut guest,
        "write then read my own key",
        written.is_ok() && text == "hello from the store",
        format_args!("{written:?}, read {read:?} {text:?}"),
    );

    let read = guest.store_read("name", &mut value);
    let name = core::str::from_utf8(&value[..*read.as_ref().unwrap_or(&0)]).unwrap_or("?");
    check(&mut guest, "read the name dom0 wrote", name == "storetest", format_args!("{name:?}"));

    // dom0 keeps its own name at /local/domain/0/name; no guest may read it.
    let other = guest.store_read("/local/domain/0/name", &mut value);
    check(
        &mut guest,
        "read dom0's home",
        other == Err(StoreFailure::Refused(abi::store::StoreError::Access)),
        format_args!("{other:?}"),
    );
    let mut path = arrayvec::ArrayString::<64>::new();
    let _ = write!(path, "/local/domain/{}/data/greeting", me);
    let absolute = guest.store_read(&path, &mut value);
    check(&mut guest, "read my key by its absolute path", absolute == Ok(20), format_args!("{absolute:?}"));

    let dom0 = guest.store_write("/local/domain/0/backend/stolen", "yes");
    check(
        &mut guest,
        "write into dom0's tree",
        matches!(dom0, Err(StoreFailure::Refused(_))),
        format_args!("{dom0:?}"),
    );

    let bad = guest.store_write("data/../../0/escape", "x");
    check(&mut guest, "path with ..", matches!(bad, Err(StoreFailure::Refused(_))), format_args!("{bad:?}"));

    let _ = writeln!(guest, "storetest: {passed} of {total} checks passed");
    loop {
        guest.wait_for_event();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("storetest: panic: {info}\n"))
}
