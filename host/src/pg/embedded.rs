//! The embedded default: a private Postgres cluster in a directory of the
//! project (`./.sinew/pg`), started with the machine's own PostgreSQL
//! (`initdb` and `pg_ctl`), listening only on a unix socket, stopped on exit
//! by the process that started it.
//! Its data persists across restarts. Tests use the same code on a
//! temporary directory.

use anyhow::{Context, Result, anyhow, bail};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The port number in the socket's name (no TCP listener is opened).
const PORT: u16 = 5432;
/// The cluster's superuser.
pub const USER: &str = "sinew";

/// A running private cluster.
pub struct Embedded {
    data: PathBuf,
    socket: PathBuf,
    bin: PathBuf,
    /// The unprivileged user the server runs as when sinew runs as root
    /// (Postgres refuses to run as root).
    run_as: Option<String>,
    /// Whether this process started the server (and so stops it): a server
    /// found running (another sinew's, or left by a killed one) is left
    /// running.
    owned: bool,
    stopped: bool,
}

/// Where `initdb` and `pg_ctl` are: on `PATH`, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn find_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Ok(dir);
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| {
        anyhow!(
            "PostgreSQL is not installed (no `initdb` on PATH or under /usr/lib/postgresql/*/bin). \
             Install it (Debian/Ubuntu: `apt-get install postgresql`; macOS: `brew install postgresql`), \
             or set DATABASE_URL to a database of yours"
        )
    })
}

fn socket_owner_file(socket: &Path) -> PathBuf {
    socket.with_extension("owner")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of a user, from `/etc/passwd`.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut parts = l.split(':');
        (parts.next()? == name).then_some(())?;
        let _ = parts.next()?;
        let uid = parts.next()?.parse().ok()?;
        let gid = parts.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

impl Embedded {
    /// Starts (creating it the first time) the cluster in `data`, for a
    /// server: one already running on it is reused, and adopted (stopped on
    /// exit) when the sinew that started it is gone (killed).
    pub fn start(data: &Path) -> Result<Embedded> {
        Self::open(data, true)
    }

    /// [`Embedded::start`] for a command that is not a server (`migrate`,
    /// `audit`, `keys`…): a cluster found running is used and left running
    /// on exit, whoever started it (a `sinew serve --database-url` may be
    /// using one a killed sinew left); one it starts, it stops.
    pub fn start_for_command(data: &Path) -> Result<Embedded> {
        Self::open(data, false)
    }

    /// Starts the cluster in `data`; `adopt`: take over (and so stop on
    /// exit) a running one whose owner is gone.
    fn open(data: &Path, adopt: bool) -> Result<Embedded> {
        let bin = find_bin()?;
        std::fs::create_dir_all(data)
            .with_context(|| format!("cannot create `{}`", data.display()))?;
        let data = data
            .canonicalize()
            .with_context(|| format!("cannot resolve `{}`", data.display()))?;
        let run_as = if is_root() {
            let user = "postgres";
            let Some((uid, gid)) = user_ids(user) else {
                bail!(
                    "sinew runs as root, and Postgres refuses to: create a user `postgres` \
                     (it comes with the postgresql package) or set DATABASE_URL"
                );
            };
            std::os::unix::fs::chown(&data, Some(uid), Some(gid))
                .with_context(|| format!("cannot give `{}` to {user}", data.display()))?;
            Some(user.to_owned())
        } else {
            None
        };
        // Unix socket paths are short (107 bytes): the socket lives in a
        // directory of its own under the temp dir, named after the data dir.
        let tag = &sinew_core::hash::sha256_hex(data.to_string_lossy().as_bytes())[..16];
        let socket = std::env::temp_dir().join(format!("sinew-pg-{tag}"));
        std::fs::create_dir_all(&socket)
            .with_context(|| format!("cannot create `{}`", socket.display()))?;
        // Only this user (and root) may reach the socket: the cluster
        // trusts local connections. A directory someone else made is refused.
        let me = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(0);
        let owner = std::fs::metadata(&socket)
            .map(|m| m.uid())
            .unwrap_or(u32::MAX);
        let server_uid = run_as.as_deref().and_then(user_ids).map(|(uid, _)| uid);
        if owner != me && Some(owner) != server_uid {
            bail!(
                "`{}` belongs to another user; remove it or choose another data directory",
                socket.display()
            );
        }
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot protect `{}`", socket.display()))?;
        }
        if let Some(user) = &run_as
            && let Some((uid, gid)) = user_ids(user)
        {
            std::os::unix::fs::chown(&socket, Some(uid), Some(gid))
                .with_context(|| format!("cannot give `{}` to {user}", socket.display()))?;
        }
        let mut pg = Embedded {
            data,
            socket,
            bin,
            run_as,
            owned: false,
            stopped: false,
        };
        if !pg.data.join("PG_VERSION").is_file() {
            pg.run(
                "initdb",
                &[
                    "-D",
                    &pg.data.to_string_lossy(),
                    "-U",
                    USER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
            )?;
        }
        let status = pg.command("pg_ctl", &["-D", &pg.data.to_string_lossy(), "status"]);
        let running = status.and_then(|mut c| Ok(c.output()?.status.success()))?;
        // `sinew.owner` holds the pid of the sinew that started the server;
        // a server whose owner is gone (killed) is adopted.
        let owner_file = socket_owner_file(&pg.socket);
        let owner_alive = std::fs::read_to_string(&owner_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !running || (adopt && !owner_alive) {
            pg.owned = true;
            let _ = std::fs::write(&owner_file, std::process::id().to_string());
        }
        if !running {
            pg.pg_ctl(&["-t", "60", "start"])?;
        }
        Ok(pg)
    }

    fn command(&self, program: &str, args: &[&str]) -> Result<Command> {
        let exe = self.bin.join(program);
        let mut c = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        c.args(args).current_dir("/");
        Ok(c)
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let out = self
            .command(program, args)?
            .output()
            .with_context(|| format!("cannot run `{program}`"))?;
        if !out.status.success() {
            bail!(
                "`{program}` failed: {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(())
    }

    /// The connection settings of the cluster's `postgres` database.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.socket)
            .port(PORT)
            .user(USER)
            .dbname("postgres")
            .application_name("sinew");
        c
    }

    /// A `DATABASE_URL` for the cluster (for `psql`, other tools).
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}@/postgres?host={}&port={PORT}",
            self.socket.display()
        )
    }

    /// The file holding the pid of the sinew that started the server.
    pub fn owner_file(&self) -> PathBuf {
        socket_owner_file(&self.socket)
    }

    /// Where its data is.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// Stops the server (fast shutdown: open transactions roll back), then
    /// removes what it left in the temp dir (see [`Embedded::clean_up`]).
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped || !self.owned {
            return Ok(());
        }
        self.stopped = true;
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )?;
        self.clean_up();
        Ok(())
    }

    /// After a clean stop: the socket's directory and the `.owner` file
    /// beside it are removed, but only while the owner file still names
    /// this process (another sinew that took the cluster over since keeps
    /// both), and the directory only when empty (the stopped server has
    /// removed its socket and lock file; anything else there is left).
    fn clean_up(&self) {
        let owner_file = socket_owner_file(&self.socket);
        let mine = std::fs::read_to_string(&owner_file)
            .is_ok_and(|p| p.trim() == std::process::id().to_string());
        if mine {
            let _ = std::fs::remove_dir(&self.socket);
            let _ = std::fs::remove_file(&owner_file);
        }
    }

    /// Stops the server abruptly and starts it again (tests of recovery).
    pub fn restart(&self) -> Result<()> {
        self.pg_ctl(&["-m", "immediate", "restart"])
    }

    /// `pg_ctl` on this cluster with its server options, waiting for the
    /// action to finish, the server's output in `server.log`.
    fn pg_ctl(&self, action: &[&str]) -> Result<()> {
        let opts = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -p {PORT} \
             -c max_connections=200 -c shared_buffers=64MB -c unix_socket_permissions=0700",
            self.socket.display()
        );
        let log = self.data.join("server.log");
        let (data, log_path) = (self.data.to_string_lossy(), log.to_string_lossy());
        let mut args = vec!["-D", &data, "-o", &opts, "-l", &log_path, "-w"];
        args.extend_from_slice(action);
        self.run("pg_ctl", &args)
            .with_context(|| format!("see `{}`", log.display()))
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
