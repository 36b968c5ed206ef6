//! The boot image under test: built once per test process by `run-qemu.sh --build-only`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A bootable Mica ISO (GRUB, hv, dom0, ramdisk).
#[derive(Debug)]
pub struct Iso {
    path: PathBuf,
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

impl Iso {
    /// The ISO for this test process: `$MICA_ISO` if set, otherwise built once
    /// by `run-qemu.sh --build-only` into a target directory of its own
    /// (`<target>/system`), so the `cargo test` that runs us never waits for
    /// its own lock. Every caller gets the same result, error included.
    pub fn get() -> Result<&'static Iso, String> {
        static ISO: OnceLock<Result<Iso, String>> = OnceLock::new();
        ISO.get_or_init(Iso::locate_or_build).as_ref().map_err(Clone::clone)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An ISO whose hv command line also has `hv_args` (e.g. `maxcpus=2`):
    /// built after [`Iso::get`]'s, by `run-qemu.sh --build-only` with
    /// `MICA_HV_ARGS` (the binaries are built already; only the image is
    /// new). Not with `$MICA_ISO`, which names one fixed image.
    pub fn with_hv_args(hv_args: &str) -> Result<Iso, String> {
        Iso::get()?;
        if std::env::var_os("MICA_ISO").is_some() {
            return Err(format!("MICA_ISO is set: no ISO with hv arguments {hv_args:?} can be built"));
        }
        let _only_build = Iso::build_lock();
        Iso::build(Some(hv_args))
    }

    /// Held while an extra ISO is built: `run-qemu.sh --build-only` stages
    /// the ramdisk in one directory, which two builds at once would share.
    fn build_lock() -> std::sync::MutexGuard<'static, ()> {
        static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
        BUILD.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the tests' ISOs are built: `<target>/system`.
    fn target() -> PathBuf {
        let root = workspace_root();
        match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root.join(dir).join("system"),
            None => root.join("target").join("system"),
        }
    }

    fn locate_or_build() -> Result<Iso, String> {
        if let Some(path) = std::env::var_os("MICA_ISO") {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(Iso { path })
            } else {
                Err(format!("MICA_ISO={} is not a file", path.display()))
            };
        }
        Iso::build(None)
    }

    fn build(hv_args: Option<&str>) -> Result<Iso, String> {
        let root = workspace_root();
        let target = Iso::target();
        // The tests' extra ramdisk files (broken configs, a corrupt kernel)
        // go into the staging directory run-qemu.sh packs.
        let stage = target.join("ramdisk");
        std::fs::create_dir_all(&stage).map_err(|error| format!("creating {}: {error}", stage.display()))?;
        let fixtures = root.join("tests").join("fixtures").join("ramdisk");
        for entry in std::fs::read_dir(&fixtures).map_err(|error| format!("reading {}: {error}", fixtures.display()))? {
            let entry = entry.map_err(|error| error.to_string())?;
            std::fs::copy(entry.path(), stage.join(entry.file_name()))
                .map_err(|error| format!("copying {}: {error}", entry.path().display()))?;
        }
        let script = root.join("run-qemu.sh");
        let mut command = Command::new("bash");
        if let Some(hv_args) = hv_args {
            command.env("MICA_HV_ARGS", hv_args);
        }
        let output = command
            .arg(&script)
            .arg("--build-only")
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&root)
            .output()
            .map_err(|error| format!("could not run {}: {error}", script.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!(
                "building the ISO failed: `{} --build-only` (CARGO_TARGET_DIR={}) exited with {}\n\
                 --- its stderr ---\n{stderr}--- its stdout ---\n{stdout}",
                script.display(),
                target.display(),
                output.status
            ));
        }
        let path = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
        if !path.is_file() {
            return Err(format!(
                "`run-qemu.sh --build-only` succeeded but its last line of stdout, {:?}, \
                 is not an ISO file\n--- its stderr ---\n{stderr}",
                path.display()
            ));
        }
        Ok(Iso { path })
    }
}

/// Where `mkfs.ext4` is (e2fsprogs; `run-qemu.sh --install-deps` installs
/// it), or why not.
fn mkfs_ext4() -> Result<PathBuf, String> {
    ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"].into_iter().map(PathBuf::from).find(|path| path.is_file()).ok_or_else(
        || {
            "mkfs.ext4 is not installed: the images disk is made with `mkfs.ext4 -d`; \
             install e2fsprogs (`./run-qemu.sh --install-deps` or `sudo apt-get install e2fsprogs`)"
                .to_owned()
        },
    )
}

/// Makes an images disk at `image`: an ext4 filesystem of `size_mib` MiB
/// holding `files` (each a path on the disk, e.g. `guests/linux.cfg`, and
/// the host file to copy there), with `mkfs.ext4 -d` as an operator makes
/// one. Returns `image`.
pub fn make_images_disk(files: &[(&str, PathBuf)], size_mib: u32, image: &Path) -> Result<PathBuf, String> {
    let mkfs = mkfs_ext4()?;
    let folder = image.with_extension("files");
    let _ = std::fs::remove_dir_all(&folder);
    for (name, source) in files {
        let destination = folder.join(name);
        if let Some(parent) = destination.parent() {
            std::fs::create_dir_all(parent).map_err(|error| format!("creating {}: {error}", parent.display()))?;
        }
        std::fs::copy(source, &destination)
            .map_err(|error| format!("copying {} to {}: {error}", source.display(), destination.display()))?;
    }
    std::fs::create_dir_all(&folder).map_err(|error| format!("creating {}: {error}", folder.display()))?;
    let _ = std::fs::remove_file(image);
    let output = Command::new(&mkfs)
        .args(["-q", "-F", "-L", "mica-images", "-d"])
        .arg(&folder)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .output()
        .map_err(|error| format!("could not run {}: {error}", mkfs.display()))?;
    let _ = std::fs::remove_dir_all(&folder);
    if !output.status.success() {
        return Err(format!(
            "`mkfs.ext4 -d {} {} {size_mib}M` failed ({}): {}",
            folder.display(),
            image.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(image.to_path_buf())
}

/// An example guest's kernel (e.g. `counter`) as `run-qemu.sh
/// --build-only` built it for the tests' ISO:
/// `<target>/system/x86_64-unknown-none/release/<name>`.
pub fn built_guest(name: &str) -> Result<PathBuf, String> {
    Iso::get()?;
    let path = Iso::target().join("x86_64-unknown-none").join("release").join(name);
    if path.is_file() { Ok(path) } else { Err(format!("{} is not there (was the ISO built?)", path.display())) }
}
