//! One emulator run (Bochs or QEMU) of the ISO: its process, working
//! directory, serial console, hard timeout, and failure reports.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::console::{Console, escape, remaining, tail};
use crate::iso::Iso;
use crate::pattern::Pattern;

/// Console text that means hv or dom0 failed: `expect` stops waiting early
/// when one shows up before what it waits for.
pub const DEFAULT_FAILURE_MARKERS: &[&str] = &["EXCEPTION", "panicked at", "hv: cannot start: "];

/// A duration in seconds, multiplied by `$MICA_TEST_TIMEOUT_SCALE` (default 1)
/// for slow machines.
pub fn seconds(count: u64) -> Duration {
    let scale = std::env::var("MICA_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|text| text.parse::<f64>().ok())
        .filter(|scale| *scale > 0.0)
        .unwrap_or(1.0);
    Duration::from_secs_f64(count as f64 * scale)
}

/// Fails the test with the harness's (multi-line) message:
/// `machine.expect(...).unwrap_or_else(fail)`.
pub fn fail<T>(message: String) -> T {
    panic!("\n{message}\n")
}

/// A running emulator with the ISO inserted and COM1 connected to a `Console`.
/// Dropping it kills the emulator and removes its working directory (kept
/// when the test panics or `$MICA_TEST_KEEP` is set).
pub struct Machine {
    name: &'static str,
    child: Arc<Mutex<Child>>,
    exit_status: Option<ExitStatus>,
    directory: PathBuf,
    /// Files whose tails go into failure reports (bochs.log, stderr), with
    /// how many lines to show.
    logs: Vec<(PathBuf, usize)>,
    console: Console,
    watchdog: Watchdog,
    failure_markers: Vec<String>,
    /// Signal that makes the emulator log its state and exit (Bochs: INT,
    /// its debugger then dumps the CPU registers into bochs.log and quits).
    report_signal: Option<&'static str>,
    stopped_for_report: bool,
    _slot: EmulatorSlot,
}

impl Machine {
    /// Waits up to `timeout` for `pattern` in the console text not yet
    /// consumed; returns that text up to and including the match, and
    /// consumes it. Fails early when a failure marker (EXCEPTION, ...) shows
    /// up first or the emulator ends; the error explains what was expected
    /// and shows what was seen. A failure stops Bochs (after it logs the CPU
    /// state) so that the report holds its complete log.
    pub fn expect(&mut self, pattern: impl Pattern, timeout: Duration) -> Result<String, String> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut marker_grace: Option<Instant> = None;
        let failure = loop {
            let shared = self.console.shared();
            let mut transcript = shared.lock();
            let unread = &transcript.text[self.console.cursor()..];
            if let Some(end) = pattern.find_end(unread) {
                let found = unread[..end].to_owned();
                drop(transcript);
                self.console.advance_to(self.console.cursor() + end);
                return Ok(found);
            }
            if let Some(grace) = marker_grace {
                // Give the failing code a moment to print the rest of its report.
                if Instant::now() >= grace {
                    let marker_line = self.failure_markers.iter().find_map(|marker| line_containing(unread, marker));
                    break format!(
                        "hv or dom0 reported a failure while waiting for {}: {:?}",
                        pattern.describe(),
                        marker_line.unwrap_or_default()
                    );
                }
            } else if self.failure_markers.iter().any(|marker| unread.contains(marker.as_str())) {
                marker_grace = Some(Instant::now() + Duration::from_millis(1500));
            }
            if let Some(reason) = &transcript.closed {
                break format!("{reason} while waiting for {}", pattern.describe());
            }
            let Some(left) = remaining(deadline) else {
                break format!("timed out after {:.1?} waiting for {}", timeout, pattern.describe());
            };
            transcript = shared.wait(transcript, left.min(Duration::from_millis(200)));
            drop(transcript);
        };
        Err(self.report(&failure))
    }

    /// Types raw bytes on COM1.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let result = self.console.send(bytes);
        result.map_err(|error| self.report(&error))
    }

    /// Types `line` and Enter ("\r") on COM1.
    pub fn send_line(&mut self, line: &str) -> Result<(), String> {
        let result = self.console.send_line(line);
        result.map_err(|error| self.report(&error))
    }

    /// Waits for the emulator to end by itself; returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return if self.watchdog.fired() {
                    Err(self.report("the emulator did not end by itself: the run's hard timeout killed it"))
                } else {
                    Ok(status)
                };
            }
            if remaining(deadline).is_none() {
                return Err(self.report(&format!("{} did not exit by itself within {timeout:.1?}", self.name)));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces the console texts that make `expect` fail early.
    pub fn set_failure_markers(&mut self, markers: &[&str]) {
        self.failure_markers = markers.iter().map(|marker| marker.to_string()).collect();
    }

    /// Everything COM1 has shown so far.
    pub fn transcript(&self) -> String {
        self.console.transcript()
    }

    /// The emulator's working directory (logs, bochsrc).
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The text of a log file in the working directory (e.g. "bochs.log").
    pub fn log(&self, name: &str) -> String {
        fs::read(self.directory.join(name))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            self.exit_status = child.try_wait().ok().flatten();
        }
        self.exit_status
    }

    /// A failure message: what went wrong, the emulator's state, the console
    /// text since the last match and overall, and the tails of the logs.
    /// Tests call it for checks of their own on text `expect` returned:
    /// `panic!("\n{}\n", machine.report("..."))`. Stops Bochs (see `expect`).
    pub fn report(&mut self, what: &str) -> String {
        // When the serial line closed, the process is usually just exiting.
        if self.console.shared().lock().closed.is_some() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.try_wait().is_none() && remaining(deadline).is_some() {
                thread::sleep(Duration::from_millis(50));
            }
        }
        if let (None, Some(signal)) = (self.try_wait(), self.report_signal) {
            let pid = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).id();
            let sent = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
            if sent.is_ok_and(|status| status.success()) {
                self.stopped_for_report = true;
                let deadline = Instant::now() + Duration::from_secs(5);
                while self.try_wait().is_none() && remaining(deadline).is_some() {
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let state = match self.try_wait() {
            Some(status) if self.watchdog.fired() => {
                format!("{} was killed by the run's hard timeout of {:.0?} ({status})", self.name, self.watchdog.limit)
            }
            Some(_) if self.stopped_for_report => format!(
                "{} was stopped by the harness for this report with SIG{}; its CPU state is at the end of its log",
                self.name,
                self.report_signal.unwrap_or_default()
            ),
            Some(status) => format!("{} has exited: {status}", self.name),
            None => format!("{} is still running", self.name),
        };
        let transcript = self.console.transcript();
        let cursor = self.console.cursor().min(transcript.len());
        let mut message = format!("{}: {what}\n({state}; working directory {})\n", self.name, self.directory.display());
        if cursor > 0 {
            let unread = &transcript[cursor..];
            let _ = write!(
                message,
                "--- console text after the last match ({} bytes) ---\n{}\n",
                unread.len(),
                escape(tail(unread, 4000))
            );
        }
        let _ = write!(
            message,
            "--- whole console transcript ({} bytes{}) ---\n{}\n",
            transcript.len(),
            if transcript.len() > 8000 { ", last 8000 shown" } else { "" },
            escape(tail(&transcript, 8000))
        );
        for (log, count) in &self.logs {
            let lines = last_lines(log, *count);
            let _ = write!(message, "--- {} (last {} lines) ---\n{}\n", log.display(), lines.len(), lines.join("\n"));
        }
        message.push_str("--- end of report ---");
        message
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.watchdog.stop();
        {
            let mut child = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if self.exit_status.is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if thread::panicking() || std::env::var_os("MICA_TEST_KEEP").is_some() {
            eprintln!("{}: kept the working directory {}", self.name, self.directory.display());
        } else {
            let _ = fs::remove_dir_all(&self.directory);
        }
    }
}

fn line_containing(text: &str, needle: &str) -> Option<String> {
    text.lines().find(|line| line.contains(needle)).map(str::to_owned)
}

fn last_lines(path: &Path, count: usize) -> Vec<String> {
    let Ok(file) = File::open(path) else {
        return vec![format!("(cannot read {})", path.display())];
    };
    let lines: Vec<String> = BufReader::new(file)
        .split(b'\n')
        .map_while(Result::ok)
        .map(|line| String::from_utf8_lossy(&line).into_owned())
        .collect();
    lines[lines.len().saturating_sub(count)..].to_vec()
}

/// Kills the emulator when a run exceeds its hard time limit.
struct Watchdog {
    limit: Duration,
    stop: Arc<(Mutex<bool>, Condvar)>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(child: Arc<Mutex<Child>>, limit: Duration) -> Watchdog {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let fired = Arc::new(AtomicBool::new(false));
        let (thread_stop, thread_fired) = (Arc::clone(&stop), Arc::clone(&fired));
        thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let (stopped, wake) = &*thread_stop;
            let mut stopped = stopped.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            while !*stopped {
                let Some(left) = remaining(deadline) else {
                    thread_fired.store(true, Ordering::SeqCst);
                    let mut child = child.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    let _ = child.kill();
                    return;
                };
                stopped = wake
                    .wait_timeout(stopped, left)
                    .map_or_else(|poisoned| poisoned.into_inner().0, |(guard, _)| guard);
            }
        });
        Watchdog { limit, stop, fired }
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        wake.notify_all();
    }
}

/// At most `$MICA_TEST_EMULATORS` (default 2) emulators run at once in one
/// test process: each is CPU-bound.
struct EmulatorSlot;

static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

impl EmulatorSlot {
    fn acquire() -> EmulatorSlot {
        let limit =
            std::env::var("MICA_TEST_EMULATORS").ok().and_then(|text| text.parse().ok()).unwrap_or(2usize).max(1);
        let (running, freed) = &SLOTS;
        let mut running = running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while *running >= limit {
            running = freed.wait(running).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *running += 1;
        EmulatorSlot
    }
}

impl Drop for EmulatorSlot {
    fn drop(&mut self) {
        let (running, freed) = &SLOTS;
        *running.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) -= 1;
        freed.notify_one();
    }
}

/// A fresh working directory for one run, under the system temp directory.
fn make_directory(emulator: &str) -> Result<PathBuf, String> {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let directory = std::env::temp_dir().join(format!(
        "mica-{emulator}-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&directory);
    fs::create_dir_all(&directory).map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    Ok(directory)
}

/// Copies the ISO in, so that a rebuild during the run cannot change it.
fn copy_iso(iso: &Iso, directory: &Path) -> Result<(), String> {
    fs::copy(iso.path(), directory.join("mica.iso"))
        .map(drop)
        .map_err(|error| format!("cannot copy {} into {}: {error}", iso.path().display(), directory.display()))
}

/// A command that starts emulator `program` so that it dies with the
/// thread that started it: `setpriv --pdeathsig KILL` (util-linux) when it
/// is there. Dropping a [`Machine`] ends its emulator, but a test process
/// killed from outside (a timeout, Ctrl-C) never drops it, and an
/// orphaned Bochs would spin on a core for good.
fn emulator_command(program: &str) -> Command {
    if command_exists("setpriv") {
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "KILL", program]);
        command
    } else {
        Command::new(program)
    }
}

fn command_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|directory| directory.join(name).is_file()))
}

/// Bochs settings for one run.
#[derive(Debug, Clone)]
pub struct BochsOptions {
    /// Kill Bochs after this long whatever happens.
    pub hard_timeout: Duration,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// How long Bochs may take to connect COM1 to the harness.
    pub connect_timeout: Duration,
    /// The physical disk (ata1-master): this image file, used in place (so
    /// a later run sees what an earlier one wrote). `None`: a fresh, zeroed
    /// 32 MiB `disk.img` in the run's own directory.
    pub disk_image: Option<PathBuf>,
    /// The images disk (ata1-slave): an ext4 image of guest kernels and
    /// configs ([`make_images_disk`](crate::iso::make_images_disk) makes one), used in
    /// place. `None`: no second disk.
    pub images_disk: Option<PathBuf>,
    /// The e1000's Bochs back end: `null` (frames go nowhere) or `vnet`
    /// (Bochs's built-in virtual host at 192.168.10.1: ARP, ICMP echo).
    pub network: &'static str,
    /// CPUs of the emulated machine (Bochs `cpu: count=`). Default: the
    /// `MICA_CPUS` environment variable (1 to 4), else 1, so the whole suite
    /// can run on several CPUs (`MICA_CPUS=2 tests/run.sh`).
    pub cpus: u32,
}

/// The CPU count tests get unless they ask for one: `MICA_CPUS`, else 1.
pub fn default_cpus() -> u32 {
    match std::env::var("MICA_CPUS") {
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(cpus @ 1..=4) => cpus,
            _ => panic!("MICA_CPUS={text:?}: give a CPU count from 1 to 4"),
        },
        Err(_) => 1,
    }
}

impl Default for BochsOptions {
    fn default() -> Self {
        BochsOptions {
            hard_timeout: seconds(120),
            memory_mib: 256,
            connect_timeout: seconds(30),
            disk_image: None,
            images_disk: None,
            network: "null",
            cpus: default_cpus(),
        }
    }
}

/// Why a Bochs that died at start is started again: its only headless
/// display on Debian is its VNC server, which takes a port from 5900 to
/// 5949 and crashes when it finds none free (seen under load).
const NO_DISPLAY_PORT: &str = "its VNC display found no free port (5900-5949) and Bochs died before booting";

/// Whether Bochs's log `log` shows its display finding no free port.
fn no_display_port(log: &str) -> bool {
    log.contains("Could not bind socket") && log.contains("Trying port 5949")
}

/// Boots the ISO in Bochs, whose CPU emulation includes VT-x with EPT.
pub struct Bochs;

impl Bochs {
    pub fn boot(iso: &Iso) -> Result<Machine, String> {
        Bochs::boot_with(iso, &BochsOptions::default())
    }

    pub fn boot_with(iso: &Iso, options: &BochsOptions) -> Result<Machine, String> {
        // Bochs's only headless display on Debian is its VNC server, which
        // takes a port from 5900 to 5949 and crashes when it finds none free
        // (seen under load). That is the emulator failing to start, not Mica
        // failing: start it again, at most twice, and say so.
        // Bochs killed by a signal before it opened COM1 (a SIGSEGV of the
        // emulator at start, seen once with 4 CPUs): nothing of Mica's had
        // run yet either.
        let died_at_start = |error: &str| error.contains("(signal: ") && error.contains("before connecting COM1");
        let mut attempt = 1;
        loop {
            let why = match Bochs::boot_once(iso, options) {
                Err(error) if attempt < 3 && died_at_start(&error) => {
                    "the emulator died before connecting COM1 (no Mica code had run)"
                }
                Err(error) if attempt < 3 && error.contains(NO_DISPLAY_PORT) => NO_DISPLAY_PORT,
                Err(error) => return Err(error),
                Ok(machine) => {
                    // The display starts after COM1 connects: wait for the
                    // first console byte, or for the display to give up.
                    let deadline = Instant::now() + seconds(30);
                    while machine.transcript().is_empty()
                        && Instant::now() < deadline
                        && !no_display_port(&machine.log("bochs.log"))
                    {
                        thread::sleep(Duration::from_millis(50));
                    }
                    if attempt >= 3 || !no_display_port(&machine.log("bochs.log")) {
                        return Ok(machine);
                    }
                    NO_DISPLAY_PORT
                }
            };
            eprintln!("Bochs: {why}; starting it again");
            // The Bochs that died leaves the lock of a caller's disk image
            // behind (`<image>.lock`), which would stop the next one.
            for image in options.disk_image.iter().chain(&options.images_disk) {
                let _ = std::fs::remove_file(format!("{}.lock", image.display()));
            }
            attempt += 1;
            thread::sleep(Duration::from_millis(500));
        }
    }

    fn boot_once(iso: &Iso, options: &BochsOptions) -> Result<Machine, String> {
        let bios = Path::new("/usr/share/bochs/BIOS-bochs-latest");
        let vga_bios = Path::new("/usr/share/bochs/VGABIOS-lgpl-latest");
        if !command_exists("bochs") || !bios.is_file() || !vga_bios.is_file() {
            return Err(format!(
                "Bochs is not installed (need `bochs` in PATH, {} and {}); the system tests \
                 boot Mica in it. Install it with tests/run.sh (installs every missing package) \
                 or: sudo apt-get install bochs bochsbios vgabios",
                bios.display(),
                vga_bios.display()
            ));
        }
        let slot = EmulatorSlot::acquire();
        let directory = make_directory("bochs")?;
        copy_iso(iso, &directory)?;

        // Bochs connects COM1 to us (socket-client): bind first, then write
        // the port into the bochsrc. If nobody listened, Bochs would boot on
        // without COM1 and the test would hang.
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|error| format!("cannot listen on 127.0.0.1: {error}"))?;
        let port = listener.local_addr().map_err(|error| error.to_string())?.port();
        let disk = match &options.disk_image {
            Some(path) => path.clone(),
            None => {
                let path = directory.join("disk.img");
                let file = File::create(&path).map_err(|error| format!("cannot create {}: {error}", path.display()))?;
                file.set_len(32 << 20).map_err(|error| format!("cannot size {}: {error}", path.display()))?;
                path
            }
        };
        let bochsrc =
            bochsrc(options.memory_mib, options.cpus, &disk, options.images_disk.as_deref(), options.network, port);
        let write = |name: &str, text: &str| {
            fs::write(directory.join(name), text).map_err(|error| format!("cannot write {name}: {error}"))
        };
        write("bochsrc", &bochsrc)?;
        // `c` starts the simulation; `quit` ends Bochs if it ever stops in
        // its debugger (magic breakpoint), instead of waiting for a user.
        write("dbg.rc", "c\nquit\n")?;

        let output = File::create(directory.join("bochs.out")).map_err(|error| error.to_string())?;
        let errors = output.try_clone().map_err(|error| error.to_string())?;
        let child = emulator_command("bochs")
            .args(["-q", "-f", "bochsrc", "-rc", "dbg.rc"])
            .current_dir(&directory)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .map_err(|error| format!("cannot start bochs: {error}"))?;
        let child = Arc::new(Mutex::new(child));
        let logs = vec![(directory.join("bochs.log"), 60), (directory.join("bochs.out"), 8)];

        let stream = match accept(&listener, &child, options.connect_timeout) {
            Ok(stream) => stream,
            Err(error) => {
                let mut report =
                    format!("Bochs: {error} (working directory {})\n--- bochsrc ---\n{bochsrc}", directory.display());
                // Said here, from the whole log: with 4 CPUs the register
                // dumps push the display's lines out of the excerpt below.
                if no_display_port(&std::fs::read_to_string(directory.join("bochs.log")).unwrap_or_default()) {
                    let _ = writeln!(report, "--- {NO_DISPLAY_PORT} ---");
                }
                for (log, count) in &logs {
                    let lines = last_lines(log, *count);
                    let _ = write!(
                        report,
                        "--- {} (last {} lines) ---\n{}\n",
                        log.display(),
                        lines.len(),
                        lines.join("\n")
                    );
                }
                let mut child = child.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let _ = child.kill();
                let _ = child.wait();
                return Err(report);
            }
        };
        // Our typed bytes go out at once; Bochs reads them when the UART has room.
        let _ = stream.set_nodelay(true);
        let reader = stream.try_clone().map_err(|error| error.to_string())?;
        let console = Console::new(reader, Box::new(stream));
        let watchdog = Watchdog::start(Arc::clone(&child), options.hard_timeout);
        Ok(Machine {
            name: "Bochs",
            child,
            exit_status: None,
            directory,
            logs,
            console,
            watchdog,
            failure_markers: DEFAULT_FAILURE_MARKERS.iter().map(|marker| marker.to_string()).collect(),
            report_signal: Some("INT"),
            stopped_for_report: false,
            _slot: slot,
        })
    }
}

/// The bochsrc of a test run: `tests/bochsrc.template` (shared with
/// run-qemu.sh) with the guest memory, the CPU count, the disk image, the
/// images disk if any, the e1000's network back end and COM1 connected to
/// the harness on `com1_port`.
pub fn bochsrc(
    memory_mib: u32,
    cpus: u32,
    disk: &Path,
    images: Option<&Path>,
    network: &str,
    com1_port: u16,
) -> String {
    let images =
        images.map_or(String::new(), |path| format!("ata1-slave: type=disk, mode=flat, path={}", path.display()));
    include_str!("../bochsrc.template")
        .replace("@MEMORY@", &memory_mib.to_string())
        .replace("@CPUS@", &cpus.to_string())
        .replace("@DISK@", &disk.display().to_string())
        .replace("@ATA1_SLAVE@", &images)
        .replace("@ETHMOD@", network)
        .replace("@COM1@", &format!("mode=socket-client, dev=127.0.0.1:{com1_port}"))
}

/// Accepts the emulator's connection, giving up when it exits or `timeout` passes.
fn accept(listener: &TcpListener, child: &Mutex<Child>, timeout: Duration) -> Result<TcpStream, String> {
    listener.set_nonblocking(true).map_err(|error| error.to_string())?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(|error| error.to_string())?;
                return Ok(stream);
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(format!("accepting the COM1 connection failed: {error}")),
        }
        if let Ok(Some(status)) = child.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).try_wait() {
            return Err(format!("exited ({status}) before connecting COM1"));
        }
        if remaining(deadline).is_none() {
            return Err(format!("did not connect COM1 within {timeout:.1?}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Boots the ISO in QEMU.
pub struct Qemu;

/// OVMF, QEMU's UEFI firmware (Debian package `ovmf`): its code and its
/// variable store (each run writes only to a snapshot of it).
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// What starts hv's first console line, its banner.
const HV_BANNER: &str = "Mica hv ";

impl Qemu {
    /// QEMU with TCG (`-cpu max`): no VT-x, so hv must refuse to start.
    /// COM1 is QEMU's stdio.
    pub fn boot_tcg(iso: &Iso, hard_timeout: Duration) -> Result<Machine, String> {
        Qemu::start(iso, &["-cdrom", "mica.iso"], hard_timeout)
    }

    /// Like [`Qemu::boot_tcg`], but the `machine` (`pc` or `q35`) boots the
    /// ISO by UEFI, with OVMF. Returns once hv's banner line has begun,
    /// with what came before it consumed: OVMF and GRUB write their own
    /// lines and terminal escape codes to COM1 first, which `expect` and
    /// the failure markers then never see (the transcript keeps them).
    pub fn boot_uefi(iso: &Iso, machine: &str, hard_timeout: Duration) -> Result<Machine, String> {
        if !Path::new(OVMF_CODE).is_file() || !Path::new(OVMF_VARS).is_file() {
            return Err(format!(
                "OVMF, QEMU's UEFI firmware, is not installed (no {OVMF_CODE} or {OVMF_VARS}); the UEFI \
                 system tests boot Mica with it. Install it with tests/run.sh (installs every missing \
                 package) or: sudo apt-get install ovmf"
            ));
        }
        let code = format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}");
        let variables = format!("if=pflash,format=raw,snapshot=on,file={OVMF_VARS}");
        // No NIC: were the ISO not bootable, OVMF would try the network for minutes.
        let args = ["-machine", machine, "-drive", &code, "-drive", &variables, "-cdrom", "mica.iso", "-nic", "none"];
        let mut machine = Qemu::start(iso, &args, hard_timeout)?;
        let seen = machine.expect(HV_BANNER, seconds(90))?;
        // Back to the start of the banner's line, firmware output consumed.
        let banner_line = seen[..seen.len() - HV_BANNER.len()].rfind('\n').map_or(0, |newline| newline + 1);
        let cursor = machine.console.cursor();
        machine.console.advance_to(cursor - (seen.len() - banner_line));
        Ok(machine)
    }

    /// Starts QEMU with TCG, `args` added, in a fresh working directory
    /// that holds a copy of the ISO.
    fn start(iso: &Iso, args: &[&str], hard_timeout: Duration) -> Result<Machine, String> {
        if !command_exists("qemu-system-x86_64") {
            return Err("QEMU is not installed (no `qemu-system-x86_64` in PATH); the system tests \
                        boot Mica in it. Install it with tests/run.sh (installs every missing package) \
                        or: sudo apt-get install qemu-system-x86"
                .to_owned());
        }
        let slot = EmulatorSlot::acquire();
        let directory = make_directory("qemu")?;
        copy_iso(iso, &directory)?;
        let errors = File::create(directory.join("qemu.err")).map_err(|error| error.to_string())?;
        let mut child = emulator_command("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-m", "256"])
            .args(args)
            .args(["-serial", "stdio", "-monitor", "none", "-display", "none", "-no-reboot"])
            .current_dir(&directory)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(errors)
            .spawn()
            .map_err(|error| format!("cannot start qemu-system-x86_64: {error}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err("QEMU started without stdio pipes".to_owned());
        };
        let child = Arc::new(Mutex::new(child));
        let console = Console::new(stdout, Box::new(stdin));
        let watchdog = Watchdog::start(Arc::clone(&child), hard_timeout);
        Ok(Machine {
            name: "QEMU",
            child,
            exit_status: None,
            logs: vec![(directory.join("qemu.err"), 40)],
            directory,
            console,
            watchdog,
            failure_markers: DEFAULT_FAILURE_MARKERS.iter().map(|marker| marker.to_string()).collect(),
            report_signal: None,
            stopped_for_report: false,
            _slot: slot,
        })
    }
}
