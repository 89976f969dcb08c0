//! A small connection pool: at most `max` connections, each with its own
//! cache of prepared statements; broken connections are dropped, not
//! reused, so the pool recovers by itself when the database comes back.

use sinew_core::ports::StorageError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls, Statement};

/// How long a request waits for a free connection before the database is
/// reported unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 512;

/// A pooled connection with its prepared statements.
pub struct Conn {
    /// The client.
    pub client: Client,
    statements: HashMap<String, Statement>,
    /// Set when an error showed the connection cannot be trusted.
    pub broken: bool,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    /// The prepared statement for `sql`, prepared once per connection.
    pub async fn prepare(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// Keeps statements prepared elsewhere on this connection's client.
    pub fn remember(&mut self, prepared: Vec<(&str, Statement)>) {
        for (sql, s) in prepared {
            self.statements.insert(sql.to_owned(), s);
        }
    }
}

/// The pool.
pub struct Pool {
    config: tokio_postgres::Config,
    idle: Mutex<Vec<(Client, HashMap<String, Statement>)>>,
    permits: Arc<Semaphore>,
    max: usize,
    /// Callers waiting for a connection.
    waiting: std::sync::atomic::AtomicUsize,
}

/// How the pool is used, now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Connections lent out.
    pub in_use: usize,
    /// Open connections waiting to be lent.
    pub idle: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    /// The most connections open at once.
    pub max: usize,
}

/// Counts a caller waiting for a connection while it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Pool {
    /// A pool of at most `max` connections to `config`.
    pub fn new(config: tokio_postgres::Config, max: usize) -> Pool {
        Pool {
            config,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max.max(1))),
            max: max.max(1),
            waiting: Default::default(),
        }
    }

    /// How it is used.
    pub fn stats(&self) -> Stats {
        use std::sync::atomic::Ordering::Relaxed;
        Stats {
            in_use: self.max - self.permits.available_permits(),
            idle: self.idle.lock().map_or(0, |v| v.len()),
            waiting: self.waiting.load(Relaxed),
            max: self.max,
        }
    }

    /// A connection: an idle one, or a new one.
    pub async fn get(&self) -> Result<Conn, StorageError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => Ok(Ok(p)),
            Err(_) => {
                self.waiting
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _waiting = Waiting(&self.waiting);
                tokio::time::timeout(ACQUIRE_TIMEOUT, self.permits.clone().acquire_owned()).await
            }
        };
        let permit = permit
            .map_err(|_| unavailable("every database connection stayed busy for 10 s"))?
            .map_err(|_| unavailable("the connection pool is closed"))?;
        loop {
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            match idle {
                Some((client, _)) if client.is_closed() => continue,
                Some((client, statements)) => {
                    return Ok(Conn {
                        client,
                        statements,
                        broken: false,
                        _permit: permit,
                    });
                }
                None => break,
            }
        }
        let client = self.connect().await?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
            broken: false,
            _permit: permit,
        })
    }

    /// Opens connections, one at a time, until `n` are idle (or the pool
    /// is full, or the database refuses). One at a time: each new backend
    /// is a process the server forks, and a burst of them would take the
    /// CPU from the first requests. Each is usable as soon as it is open.
    pub async fn fill(&self, n: usize) -> Result<(), StorageError> {
        let max = self.max;
        loop {
            let idle = self.idle.lock().map_or(n, |v| v.len());
            let busy = max - self.permits.available_permits();
            if idle >= n || idle + busy >= max {
                return Ok(());
            }
            // A permit while connecting keeps the count of open
            // connections within `max`.
            let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
                return Ok(());
            };
            let client = self.connect().await?;
            if let Ok(mut idle) = self.idle.lock() {
                // At the bottom: connections that have served (their
                // statements prepared, their catalog loaded) go out first.
                idle.insert(0, (client, HashMap::new()));
            }
        }
    }

    /// A connection outside the pool's count (the audit chain's reader).
    pub async fn connect(&self) -> Result<Client, StorageError> {
        connect(&self.config).await
    }

    /// Gives a connection back (or drops it if it is broken).
    pub fn put(&self, conn: Conn) {
        if conn.broken || conn.client.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push((conn.client, conn.statements));
        }
    }
}

/// A connection to `config` (at most 5 s to connect), its connection task
/// spawned: it ends when the client is dropped or the server goes away.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, StorageError> {
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| unavailable("connecting to the database timed out"))?
        .map_err(|e| unavailable(&format!("cannot connect to the database: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// An unavailable-database error.
pub fn unavailable(message: &str) -> StorageError {
    StorageError::Unavailable {
        message: message.to_owned(),
    }
}
