//! `sinew serve` as a child process, for the tests of what only a process
//! shows (signals, the ready line, two servers on one database). The binary
//! is the caller's: `env!("CARGO_BIN_EXE_sinew")` in the host's integration
//! tests, the only ones Cargo builds it for.

use crate::pg::{SECRET, cache_dir};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `sinew serve` process, killed on drop.
pub struct Proc {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its standard output, line by line, so far.
    pub lines: Arc<Mutex<Vec<String>>>,
    /// Set: the reader closes the server's stdout after the next line.
    hang_up: Arc<AtomicBool>,
    /// Set once the reader has closed it.
    hung_up: Arc<AtomicBool>,
}

impl Proc {
    /// Starts `sinew` (the binary `exe`) serving `spec` with `envs`, tokens
    /// signed with [`SECRET`] and the tests' component cache, and waits
    /// (at most 120 s) for it to announce its address.
    pub fn start(exe: &str, spec: &Path, envs: &[(&str, &str)], data_dir: &Path) -> Proc {
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg(spec)
            .args(["--port", "0", "--listen", "127.0.0.1"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("SINEW_JWT_SECRET", SECRET)
            .env("SINEW_CACHE_DIR", cache_dir().join("cache"))
            .env_remove("DATABASE_URL")
            // Snapshots cost seconds of CPU per new spec in the background;
            // the tests that want one say SINEW_NO_SNAPSHOT=false.
            .env("SINEW_NO_SNAPSHOT", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        let hang_up = Arc::new(AtomicBool::new(false));
        let hung_up = Arc::new(AtomicBool::new(false));
        let (hang, hung) = (hang_up.clone(), hung_up.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if hang.load(Ordering::SeqCst) {
                    break;
                }
                let addr = line.find("on http://").map(|i| {
                    let rest = &line[i + "on http://".len()..];
                    rest.chars().take_while(|c| *c != '"').collect::<String>()
                });
                // Kept before the address is announced: a caller that reads
                // the ready line right after `start` finds it.
                sink.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
            // The reader is gone: the pipe's read end closes with it.
            hung.store(true, Ordering::SeqCst);
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "the server did not start:\n{}\n{}",
                    lines.lock().unwrap().join("\n"),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        Proc {
            child,
            base: format!("http://{addr}"),
            lines,
            hang_up,
            hung_up,
        }
    }

    /// The first log line so far that contains `needle`.
    pub fn line(&self, needle: &str) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// Closes the server's standard output once it writes its next line
    /// (as a log collector that died would); see [`Proc::hung_up`].
    pub fn close_stdout(&self) {
        self.hang_up.store(true, Ordering::SeqCst);
    }

    /// Whether its standard output is closed.
    pub fn hung_up(&self) -> bool {
        self.hung_up.load(Ordering::SeqCst)
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term();
        self.wait_exit()
    }

    /// Sends SIGTERM.
    pub fn signal_term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits (at most 20 s) for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sinew audit verify` (the binary `exe`) on `url`: whether it succeeded,
/// and its output.
pub fn verify_audit(exe: &str, url: &str) -> (bool, String) {
    let out = Command::new(exe)
        .args(["audit", "verify"])
        .env("DATABASE_URL", url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
