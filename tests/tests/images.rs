//! System tests of the images disk: an ext4 filesystem on a second ATA
//! disk (ata1-slave), made here with `mkfs.ext4 -d` as an operator makes
//! one, holding guest configs and kernels that are not in the boot
//! ramdisk. dom0 finds it at boot, `ls` lists it, `create` builds guests
//! from it; a missing name, a guest disk on it and a corrupt filesystem
//! each get a clear error while dom0 keeps working.

use std::path::PathBuf;

use mica_tests::iso::{built_guest, make_images_disk};
use mica_tests::session::{attach, boot_with, command, create, destroy, detach, expect_memory_back, fail_with, mem};
use mica_tests::{BochsOptions, Machine, fail, line_where, seconds};

/// A config only on the images disk, whose kernel is only there too.
const DISK_COUNTER_CFG: &str = "# The counter guest, from the images disk.
name = \"diskcounter\"
memory = 4
kernel = \"kernels/diskcounter.elf\"
on_crash = \"destroy\"
";

/// A config whose disk region lies on the images disk itself.
const ON_IMAGES_CFG: &str = "name = \"onimages\"
memory = 4
kernel = \"kernels/diskcounter.elf\"
disk = [ \"ata1-slave:2048+64\" ]
";

/// A folder of its own for this test's images disk (tests run in parallel
/// and Bochs locks the image it uses).
fn scratch(test: &str) -> PathBuf {
    let folder = std::env::temp_dir().join(format!("mica-images-test-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).unwrap_or_else(|error| fail(format!("creating {}: {error}", folder.display())));
    folder
}

/// The images disk the tests boot with: the counter guest's kernel under
/// another name in a folder, and two configs (written into `folder`).
fn images_disk(folder: &std::path::Path) -> PathBuf {
    let write = |name: &str, text: &str| {
        let path = folder.join(name);
        std::fs::write(&path, text).unwrap_or_else(|error| fail(format!("writing {}: {error}", path.display())));
        path
    };
    let files = [
        ("diskcounter.cfg", write("diskcounter.cfg", DISK_COUNTER_CFG)),
        ("onimages.cfg", write("onimages.cfg", ON_IMAGES_CFG)),
        ("kernels/diskcounter.elf", built_guest("counter").unwrap_or_else(fail)),
    ];
    make_images_disk(&files, 32, &folder.join("images.img")).unwrap_or_else(fail)
}

fn boot_with_images(image: PathBuf) -> Machine {
    boot_with(&BochsOptions { images_disk: Some(image), hard_timeout: seconds(600), ..BochsOptions::default() })
}

/// The one line of `output` that starts with `prefix`.
fn line_of(machine: &mut Machine, output: &str, prefix: &str, what: &str) -> String {
    match output.lines().find(|line| line.starts_with(prefix)) {
        Some(line) => line.to_owned(),
        None => {
            fail_with(machine, &format!("{what} should print a line starting with {prefix:?}; it printed:\n{output}"))
        }
    }
}

/// Attaches to counter guest `name` and waits for one of its `counter: N` lines.
fn expect_counting(machine: &mut Machine, name: &str, id: u64) {
    attach(machine, name, id);
    machine
        .expect(line_where("a line \"counter: <N>\"", |line| line.starts_with("counter: ")), seconds(60))
        .unwrap_or_else(fail);
    detach(machine);
}

#[test]
fn guests_are_created_from_the_images_disk() {
    let folder = scratch("create");
    let image = images_disk(&folder);
    let kernel_size = std::fs::metadata(built_guest("counter").unwrap_or_else(fail)).map(|m| m.len()).unwrap_or(0);
    let mut machine = boot_with_images(image);
    let boot_log = machine.transcript();
    if !boot_log.lines().any(|line| line == "dom0: images: ext4 on ata1-slave, 3 files") {
        fail_with(&mut machine, "dom0 should say \"dom0: images: ext4 on ata1-slave, 3 files\" at boot");
    }
    let (baseline_text, baseline) = mem(&mut machine);

    // `ls`: the disk's files with their sizes, and the ramdisk's still.
    let listing = command(&mut machine, "ls");
    let expected = [
        format!("ata1-slave  {:>10}  diskcounter.cfg", DISK_COUNTER_CFG.len()),
        format!("ata1-slave  {kernel_size:>10}  kernels/diskcounter.elf"),
        format!("ata1-slave  {:>10}  onimages.cfg", ON_IMAGES_CFG.len()),
    ];
    for line in &expected {
        if !listing.lines().any(|listed| listed == line) {
            fail_with(&mut machine, &format!("`ls` should list {line:?}; it printed:\n{listing}"));
        }
    }
    if !listing.lines().any(|line| line.starts_with("ramdisk ") && line.ends_with("  counter.cfg")) {
        fail_with(&mut machine, &format!("`ls` should still list the ramdisk's counter.cfg; it printed:\n{listing}"));
    }

    // `create NAME`: the config and the kernel only on the disk.
    let id = create(&mut machine, "diskcounter", "diskcounter");
    expect_counting(&mut machine, "diskcounter", id);
    destroy(&mut machine, "diskcounter", id);
    // `create NAME.cfg` too.
    let id = create(&mut machine, "diskcounter.cfg", "diskcounter");
    expect_counting(&mut machine, "diskcounter", id);

    // A guest disk on the images disk: refused, at create and at block-attach.
    let output = command(&mut machine, "create onimages");
    let refused = line_of(&mut machine, &output, "dom0: create:", "`create onimages`");
    if !refused.contains("ata1-slave is the images disk") {
        fail_with(
            &mut machine,
            &format!("`create onimages` should refuse a disk on ata1-slave, the images disk; it printed {refused:?}"),
        );
    }
    let output = command(&mut machine, "block-attach diskcounter ata1-slave:4096+64");
    let refused = line_of(&mut machine, &output, "dom0: block-attach:", "`block-attach` of an images disk region");
    if !refused.contains("ata1-slave is the images disk") {
        fail_with(
            &mut machine,
            &format!("`block-attach` on the images disk should be refused; it printed {refused:?}"),
        );
    }

    // A name in neither store: where it was looked for.
    let output = command(&mut machine, "create nosuch");
    let missing = line_of(&mut machine, &output, "dom0: create:", "`create nosuch`");
    let expected =
        "dom0: create: no file 'nosuch.cfg' or 'nosuch' in the ramdisk or on the images disk ata1-slave (see 'ls')";
    if missing != expected {
        fail_with(&mut machine, &format!("`create nosuch` should say {expected:?}; it printed {missing:?}"));
    }
    eprintln!("errors:\n  {refused}\n  {missing}");

    // dom0 still works: the ramdisk's guests start beside the disk's.
    let counter = create(&mut machine, "counter", "counter");
    expect_counting(&mut machine, "counter", counter);
    destroy(&mut machine, "counter", counter);
    destroy(&mut machine, "diskcounter", id);
    expect_memory_back(&mut machine, &baseline, &baseline_text, "after the guests from both stores are destroyed");
    let _ = std::fs::remove_dir_all(&folder);
}

#[test]
fn a_corrupt_images_disk_is_reported_and_dom0_carries_on() {
    let folder = scratch("corrupt");
    let image = images_disk(&folder);
    // The superblock's label changed behind its checksum (mkfs.ext4 turns
    // metadata checksums on): the magic says ext4, the filesystem is not
    // to be trusted.
    let mut bytes = std::fs::read(&image).unwrap_or_else(|error| fail(format!("reading the image: {error}")));
    bytes[1024 + 0x78] ^= 0x20;
    std::fs::write(&image, &bytes).unwrap_or_else(|error| fail(format!("writing the image: {error}")));
    let mut machine = boot_with_images(image);
    let boot_log = machine.transcript();
    let prefix = "dom0: images: ata1-slave has an ext4 superblock but its filesystem cannot be read (";
    let Some(reported) = boot_log.lines().find(|line| line.starts_with(prefix)) else {
        fail_with(&mut machine, &format!("dom0 should report the corrupt images disk at boot with {prefix:?}..."))
    };
    if !reported.ends_with("); carrying on without an images disk") {
        fail_with(&mut machine, &format!("the corrupt disk's line should say dom0 carries on; it is {reported:?}"));
    }
    eprintln!("boot: {reported}");
    let listing = command(&mut machine, "ls");
    if listing.contains("ata1-slave") || !listing.lines().any(|line| line.ends_with("  counter.cfg")) {
        fail_with(&mut machine, &format!("`ls` should list the ramdisk alone; it printed:\n{listing}"));
    }
    let output = command(&mut machine, "create diskcounter");
    let missing = line_of(&mut machine, &output, "dom0: create:", "`create diskcounter`");
    let expected = "dom0: create: no file 'diskcounter.cfg' or 'diskcounter' in the ramdisk (see 'ls')";
    if missing != expected {
        fail_with(&mut machine, &format!("`create diskcounter` should say {expected:?}; it printed {missing:?}"));
    }
    let counter = create(&mut machine, "counter", "counter");
    expect_counting(&mut machine, "counter", counter);
    destroy(&mut machine, "counter", counter);
    let _ = std::fs::remove_dir_all(&folder);
}
