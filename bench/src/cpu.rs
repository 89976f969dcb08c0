//! Where the CPU of a run goes: the server processes, Postgres (every
//! process of the private cluster) and this process (the load generator),
//! read from `/proc` (Linux) at the start and the end of the measured
//! window. Divided by the answers of the window, it says what one answer
//! costs each part: the ratio of two servers' throughputs on a CPU-bound
//! machine is the inverse ratio of these sums.

use std::fs;

/// CPU seconds (user + system) spent, by part, and the write-ahead log
/// Postgres wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// The server processes under load (all their threads).
    pub server: f64,
    /// Every `postgres` process.
    pub postgres: f64,
    /// This process: the load generator (and the bench's own bookkeeping).
    pub load: f64,
    /// Bytes of write-ahead log the cluster wrote: what its writes cost,
    /// counted rather than timed (the same on a quiet or a noisy machine).
    pub wal: f64,
}

/// The cluster whose write-ahead log [`Cpu::wal`] counts.
static WAL_URL: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Counts the write-ahead log of the cluster at `url` from now on (what
/// the harness that started it says).
pub fn watch_wal(url: String) {
    if let Ok(mut u) = WAL_URL.lock() {
        *u = Some(url);
    }
}

impl Cpu {
    /// What the parts spent between `self` (earlier) and `later`.
    pub fn until(self, later: Cpu) -> Cpu {
        Cpu {
            server: later.server - self.server,
            postgres: later.postgres - self.postgres,
            load: later.load - self.load,
            wal: later.wal - self.wal,
        }
    }

    /// Microseconds of each part (and bytes of log) per answer, over
    /// `answers`.
    pub fn per(self, answers: u64) -> Cpu {
        let n = answers.max(1) as f64;
        Cpu {
            server: self.server * 1e6 / n,
            postgres: self.postgres * 1e6 / n,
            load: self.load * 1e6 / n,
            wal: self.wal / n,
        }
    }

    /// The three parts' CPU together.
    pub fn total(self) -> f64 {
        self.server + self.postgres + self.load
    }
}

/// The CPU seconds spent so far by `servers`, by Postgres and by this
/// process (zeros where `/proc` cannot tell: not Linux), and the position
/// of the cluster's write-ahead log in bytes (zero without [`WAL_URL`]).
pub async fn sample(servers: &[u32]) -> Cpu {
    let mut cpu = Cpu {
        server: servers.iter().filter_map(|&p| seconds(p)).sum(),
        load: seconds(std::process::id()).unwrap_or(0.0),
        postgres: 0.0,
        wal: wal_position().await.unwrap_or(0.0),
    };
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres")
            {
                cpu.postgres += seconds(pid).unwrap_or(0.0);
            }
        }
    }
    cpu
}

/// The cluster's current write-ahead log position, in bytes.
async fn wal_position() -> Option<f64> {
    let url = WAL_URL.lock().ok()?.clone()?;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8",
            &[],
        )
        .await
        .ok()?;
    row.try_get(0).ok()
}

/// utime + stime of process `pid`, in seconds.
fn seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// The unit of `/proc/*/stat`'s times per second: Linux's USER_HZ, which
/// its ABI fixes at 100 on every architecture this runs on.
fn clock_ticks() -> f64 {
    100.0
}
