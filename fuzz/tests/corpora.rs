//! Replays every fuzz target's checked-in corpus (`corpus/<target>/`) and
//! its regressions (`regressions/<target>/`: inputs that once failed) as
//! ordinary tests, so `cargo test --workspace` on stable runs each input
//! the fuzzers kept through the same code libFuzzer runs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use mica_fuzz::{TARGETS, Target};

fn inputs(directory: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(directory) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.map(|entry| entry.expect("a directory entry").path()).filter(|path| path.is_file()).collect();
    files.sort();
    files
}

/// Runs `target` on every input of its corpus and regressions; fails naming
/// each input that panicked. A target with an empty corpus fails too: the
/// replay must have something to replay.
fn replay(name: &str) {
    let target: Target = TARGETS.iter().find(|(known, _)| *known == name).expect("a target of that name").1;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = inputs(&root.join("corpus").join(name));
    assert!(!corpus.is_empty(), "corpus/{name} is empty");
    let regressions = inputs(&root.join("regressions").join(name));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("a readable input");
        if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{name}: {} of {} inputs failed: {failed:#?}",
        failed.len(),
        corpus.len() + regressions.len()
    );
    println!("{name}: {} corpus inputs and {} regressions replayed", corpus.len(), regressions.len());
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*

        /// Every target in the library has a replay test above, and only those.
        #[test]
        fn every_target_is_replayed() {
            let mut tested = vec![$(stringify!($name)),*];
            let mut targets: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
            tested.sort();
            targets.sort();
            assert_eq!(tested, targets);
        }
    };
}

replay_tests!(block_request, net_request, ring, store, config, tar, elf, multiboot2, acpi, switch);

/// Every corpus directory belongs to a target (none left behind by a rename).
#[test]
fn every_corpus_belongs_to_a_target() {
    for folder in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(folder)) else { continue };
        for entry in entries {
            let name = entry.expect("a directory entry").file_name();
            let name = name.to_str().expect("a UTF-8 name");
            assert!(TARGETS.iter().any(|(target, _)| *target == name), "{folder}/{name} has no target");
        }
    }
}
