//! Example guest: uses the store over its ring (Xen's xs_wire messages):
//! writes and reads back a key in its home, reads the name dom0 gave it,
//! checks that another domain's home and dom0's tree are refused, and uses
//! transactions: their writes are invisible outside until they commit, a
//! conflict answers "retry" (EAGAIN) and the retry commits, an abandoned
//! one leaves nothing.
#![no_std]
#![no_main]

use core::fmt::Write;

use abi::xen::errno::Errno;
use pv_drivers::guest::{self, Guest, StoreFailure, TransactionEnd};

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
        other == Err(StoreFailure::Refused(Errno::Eacces)),
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

    // A transaction's write: seen inside, not outside, until it commits.
    let missing = Err(StoreFailure::Refused(Errno::Enoent));
    let result = guest.store_transaction_start().and_then(|transaction| {
        guest.store_write_in(Some(transaction), "data/tx", "inside")?;
        let inside = guest.store_read_in(Some(transaction), "data/tx", &mut value);
        let outside = guest.store_read("data/tx", &mut value);
        let end = guest.store_transaction_end(transaction, true)?;
        Ok((inside, outside, end))
    });
    let after = guest.store_read("data/tx", &mut value);
    let text = core::str::from_utf8(&value[..*after.as_ref().unwrap_or(&0)]).unwrap_or("?");
    check(
        &mut guest,
        "a transaction's write is invisible outside until it commits",
        matches!(result, Ok((Ok(6), ref outside, TransactionEnd::Done)) if *outside == missing) && text == "inside",
        format_args!("{result:?}, after the commit {after:?} {text:?}"),
    );

    // A conflict: the transaction read a key that changed before it
    // committed; the store says retry and applies nothing; the retry commits.
    let conflict = |guest: &mut Guest, meddle: bool| -> Result<TransactionEnd, StoreFailure> {
        let transaction = guest.store_transaction_start()?;
        let mut seen = [0u8; 64];
        guest.store_read_in(Some(transaction), "data/greeting", &mut seen)?;
        if meddle {
            guest.store_write("data/greeting", "changed meanwhile")?;
        }
        guest.store_write_in(Some(transaction), "data/greeting", "from the transaction")?;
        guest.store_transaction_end(transaction, true)
    };
    let first = conflict(&mut guest, true);
    let between = guest.store_read("data/greeting", &mut value);
    let between_text =
        core::str::from_utf8(&value[..*between.as_ref().unwrap_or(&0)]).unwrap_or("?") == "changed meanwhile";
    let retry = conflict(&mut guest, false);
    let after = guest.store_read("data/greeting", &mut value);
    let text = core::str::from_utf8(&value[..*after.as_ref().unwrap_or(&0)]).unwrap_or("?");
    check(
        &mut guest,
        "a conflicting commit says retry, the retry commits",
        first == Ok(TransactionEnd::Retry)
            && between_text
            && retry == Ok(TransactionEnd::Done)
            && text == "from the transaction",
        format_args!("{first:?} (unapplied: {between_text}), then {retry:?}, {text:?}"),
    );

    // An abandoned transaction leaves nothing.
    let result = guest.store_transaction_start().and_then(|transaction| {
        guest.store_write_in(Some(transaction), "data/abandoned", "x")?;
        guest.store_transaction_end(transaction, false)
    });
    let after = guest.store_read("data/abandoned", &mut value);
    check(
        &mut guest,
        "an abandoned transaction leaves nothing",
        result == Ok(TransactionEnd::Done) && after == missing,
        format_args!("{result:?}, then {after:?}"),
    );

    let _ = writeln!(guest, "storetest: {passed} of {total} checks passed");
    loop {
        guest.wait_for_event();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    guest::crash(format_args!("storetest: panic: {info}\n"))
}
