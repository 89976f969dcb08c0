//! The component runtime: wasmtime running the core's component, with the
//! three imported interfaces implemented on host backends.
//!
//! One [`Engine`] per process (the component compiled ahead of time and
//! cached as `.cwasm`); one [`Executor`] per loaded spec, keeping a pool of
//! instances that loaded the spec once (the core keeps no per-request state
//! besides the bundle), discarded after any trap.

pub mod bindings;
pub mod cache;
pub mod clock;
pub mod external;
pub mod snapshot;
pub mod storage;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;
use sinew_core::contract::{Request, Response};
use sinew_core::ports::StorageError;
use sinew_core::problem::{Code, Problem};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{
    Config, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};

use bindings::{Core, CorePre};

/// Epoch ticks per second: the granularity of guest deadlines.
const TICKS_PER_SECOND: u64 = 100;
/// The most linear memory one instance may use.
pub const MAX_MEMORY: usize = 512 << 20;
/// How many instances may exist at once (the pooling allocator reserves
/// address space for each up front).
pub const MAX_INSTANCES: u32 = 128;
/// How long past its deadline a request waiting on the host is given.
const HOST_GRACE: Duration = Duration::from_millis(250);
/// Core instances in one instance of the component (at most).
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;
/// The deadline of a request whose tool sets no `timeoutMs`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-store host state: the resource table, limits and the backends.
pub struct HostState {
    pub(crate) table: ResourceTable,
    limits: StoreLimits,
    pub(crate) backends: Backends,
    /// What the running call left in the world, for the host to clean up
    /// if the guest traps.
    pub(crate) call: Call,
}

/// What one call of the guest has started and not finished: what a trap
/// leaves behind.
#[derive(Default)]
pub(crate) struct Call {
    /// The first clock reading of the call: the time the contract stamps
    /// the request with (its audit `time`, its rate window). A final entry
    /// the host writes after a trap carries the same time.
    pub(crate) started: Option<i64>,
    /// Transactions opened and not finished yet (rolled back after a trap).
    pub(crate) open: Vec<u64>,
    /// Idempotency keys claimed and not yet completed or released
    /// (released after a trap, so that a retry runs instead of waiting
    /// out the in-flight claim).
    pub(crate) claimed: Vec<(String, String)>,
    /// The final audit entry the guest wrote in a transaction not yet
    /// committed, by transaction.
    pub(crate) pending_final: Vec<(u64, Value)>,
    /// The final audit entry the guest made durable (written on its own,
    /// or committed with its transaction): the request's outcome is
    /// recorded, and a trap after it must not record another.
    pub(crate) final_entry: Option<Value>,
    /// Transactions whose intermediate `commit` entry records writes or
    /// outbox messages, until they end.
    pub(crate) pending_writes: Vec<u64>,
    /// Some of the call's writes committed (a `commit` entry recording
    /// writes became durable).
    pub(crate) committed: bool,
    /// The operations the call asked services for (`service`,
    /// `operation`), whatever came of them.
    pub(crate) called: Vec<(String, String)>,
    /// A commit, or an audit entry written on its own, that the guest was
    /// waiting for. It runs in a task of its own, so stopping the guest
    /// (a deadline) does not stop it halfway: a COMMIT already sent may
    /// still take effect, and until it ends nobody knows whether the
    /// request's outcome was recorded. A trap waits for it (`settle`).
    pub(crate) ending: Option<Ending>,
}

/// A durable step in flight (see [`Call::ending`]).
pub(crate) struct Ending {
    what: Ends,
    task: tokio::task::JoinHandle<Result<(), StorageError>>,
}

/// What an [`Ending`] makes durable.
pub(crate) enum Ends {
    /// The commit of this transaction.
    Commit(u64),
    /// This audit entry, written in a transaction of its own.
    Entry(Value),
}

impl Call {
    /// Runs a durable step to its end even if the guest is stopped while
    /// waiting for it, and notes its outcome.
    pub(crate) async fn end_with(
        &mut self,
        what: Ends,
        step: impl std::future::Future<Output = Result<(), StorageError>> + Send + 'static,
    ) -> Result<(), StorageError> {
        let ending = self.ending.insert(Ending {
            what,
            task: crate::telemetry::spawn_in_context(step),
        });
        // Cancel-safe: dropped here, the task goes on and `ending` stays.
        let r = joined((&mut ending.task).await);
        if let Some(e) = self.ending.take() {
            self.note(e.what, r.is_ok());
        }
        r
    }

    /// Waits for the durable step the guest was stopped in, if any, and
    /// notes its outcome.
    pub(crate) async fn settle(&mut self) {
        if let Some(e) = self.ending.take() {
            let ok = joined(e.task.await).is_ok();
            self.note(e.what, ok);
        }
    }

    fn note(&mut self, what: Ends, ok: bool) {
        match what {
            Ends::Commit(tx) => self.ended(tx, ok),
            Ends::Entry(entry) if ok => self.appended(None, entry),
            Ends::Entry(_) => {}
        }
    }

    /// Notes an audit entry the guest appended (`tx` `None`: durable now).
    pub(crate) fn appended(&mut self, tx: Option<u64>, entry: Value) {
        match entry.get("kind").and_then(Value::as_str) {
            Some("final") => {}
            Some("commit") if records_writes(&entry) => {
                match tx {
                    None => self.committed = true,
                    Some(t) => self.pending_writes.push(t),
                }
                return;
            }
            _ => return,
        }
        match tx {
            None => self.final_entry = Some(entry),
            Some(t) => self.pending_final.push((t, entry)),
        }
    }

    /// Notes the end of a transaction: a final entry in it is durable when
    /// it committed, gone when it rolled back.
    pub(crate) fn ended(&mut self, tx: u64, committed: bool) {
        if let Some(i) = self.pending_writes.iter().position(|t| *t == tx) {
            self.pending_writes.swap_remove(i);
            self.committed |= committed;
        }
        if let Some(i) = self.pending_final.iter().position(|(t, _)| *t == tx) {
            let (_, entry) = self.pending_final.swap_remove(i);
            if committed {
                self.final_entry = Some(entry);
            }
        }
    }
}

/// Whether an intermediate `commit` entry records writes or messages (a
/// transaction that only read commits with an empty `rows`).
fn records_writes(entry: &Value) -> bool {
    let some = |k: &str| {
        entry
            .get(k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    some("rows") || some("messages")
}

fn joined(r: Result<Result<(), StorageError>, tokio::task::JoinError>) -> Result<(), StorageError> {
    r.unwrap_or_else(|e| {
        Err(StorageError::Unavailable {
            message: format!("the storage task failed: {e}"),
        })
    })
}

/// What the imports run on.
#[derive(Clone)]
pub struct Backends {
    /// Storage (in memory, or Postgres).
    pub storage: Arc<dyn storage::StorageBackend>,
    /// Time.
    pub clock: Arc<dyn clock::ClockBackend>,
    /// Outbound calls.
    pub external: Arc<dyn external::ExternalBackend>,
}

impl Backends {
    /// The answer to a request that did not run (turned away, or its
    /// executor failed): the problem response, and its final audit entry
    /// written in a transaction of its own. `started` is the time the
    /// executor stamped the request with, if it got that far (the entry's
    /// `time`, so that it falls in the same minute as the request's rate
    /// window); otherwise now.
    pub async fn turn_away(
        &self,
        (bundle_hash, sensitive): (&str, &[String]),
        request: &Request,
        problem: &sinew_core::problem::Problem,
        started: Option<i64>,
    ) -> Response {
        self.answer_unrun((bundle_hash, sensitive), request, problem, started, false)
            .await
    }

    /// A request the host refused before it reached the executor (outcome
    /// `rejected`).
    pub async fn refuse(
        &self,
        (bundle_hash, sensitive): (&str, &[String]),
        request: &Request,
        problem: &sinew_core::problem::Problem,
    ) -> Response {
        self.answer_unrun((bundle_hash, sensitive), request, problem, None, true)
            .await
    }

    /// `bundle` is the spec's hash and the tool's `sensitive` properties
    /// (masked in the entry as the executor masks them).
    async fn answer_unrun(
        &self,
        (bundle_hash, sensitive): (&str, &[String]),
        request: &Request,
        problem: &sinew_core::problem::Problem,
        started: Option<i64>,
        refused: bool,
    ) -> Response {
        let now = self.clock.now_ms();
        let started = started.unwrap_or(now);
        let response = sinew_core::contract::failed(
            bundle_hash,
            request,
            problem,
            (started, now),
            refused,
            sensitive,
        );
        if let Err(e) = self.storage.append_audit(None, &response.audit).await {
            audit_lost(request, &e);
        }
        response
    }
}

/// The compiled component, ready to instantiate.
pub struct Engine {
    engine: wasmtime::Engine,
    max_memory: usize,
    linker: Linker<HostState>,
    component: &'static [u8],
    cache_dir: Option<std::path::PathBuf>,
    /// The component itself, compiled or loaded from the cache on first
    /// use: a server whose instances come from a snapshot never needs it.
    plain: OnceLock<Result<Plain, String>>,
    /// `sha256:` + hex of the component's bytes.
    pub component_hash: String,
}

/// The component, linked.
struct Plain {
    pre: CorePre<HostState>,
    /// Whether the compiled component came from the cache.
    from_cache: bool,
}

impl Engine {
    /// Compiles (or loads from `cache_dir`) the embedded component.
    pub fn new(cache_dir: Option<&std::path::Path>) -> Result<Arc<Engine>> {
        Engine::from_bytes(crate::COMPONENT, cache_dir)
    }

    /// Compiles (or loads from the cache) a component.
    pub fn from_bytes(
        component: &'static [u8],
        cache_dir: Option<&std::path::Path>,
    ) -> Result<Arc<Engine>> {
        Engine::with_memory(component, cache_dir, MAX_MEMORY)
    }

    /// Like [`Engine::from_bytes`], with a per-instance memory limit.
    pub fn with_memory(
        component: &'static [u8],
        cache_dir: Option<&std::path::Path>,
        max_memory: usize,
    ) -> Result<Arc<Engine>> {
        let engine = Engine::deferred_with(component, cache_dir, max_memory)?;
        engine.load()?;
        Ok(engine)
    }

    /// The engine for the embedded component, which is compiled or loaded
    /// from `cache_dir` only when first needed (see [`Engine::load`]): a
    /// start that finds a cached snapshot does not pay for it.
    pub fn deferred(cache_dir: Option<&std::path::Path>) -> Result<Arc<Engine>> {
        Engine::deferred_with(crate::COMPONENT, cache_dir, MAX_MEMORY)
    }

    fn deferred_with(
        component: &'static [u8],
        cache_dir: Option<&std::path::Path>,
        max_memory: usize,
    ) -> Result<Arc<Engine>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // `perf record` can name the guest's functions with
        // SINEW_WASM_PROFILER=perfmap (written to /tmp/perf-PID.map).
        if std::env::var_os("SINEW_WASM_PROFILER").is_some_and(|v| v == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let mut pool = PoolingAllocationConfig::default();
        // A component instance is several core instances (the core module
        // and wit-component's shims), one memory.
        pool.total_component_instances(MAX_INSTANCES)
            .total_core_instances(MAX_INSTANCES * CORE_INSTANCES_PER_COMPONENT)
            .total_memories(MAX_INSTANCES)
            // One async stack per instance running at once (the default,
            // 1000, costs an mprotect each when the engine starts).
            .total_stacks(MAX_INSTANCES)
            .max_memory_size(max_memory);
        // SINEW_WASM_ALLOCATOR=on-demand maps each instance's memory when
        // it is made instead of reserving a pool up front (valgrind cannot
        // map the pool); the compiled code is the same.
        if std::env::var_os("SINEW_WASM_ALLOCATOR").is_some_and(|v| v == "on-demand") {
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
        } else {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = wasmtime::Engine::new(&config).map_err(|e| anyhow!("{e:?}"))?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        Core::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| anyhow!("{e:?}"))?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("sinew-epoch".into())
            .spawn(move || {
                while let Some(e) = ticker.upgrade() {
                    e.increment_epoch();
                    drop(e);
                    std::thread::sleep(Duration::from_millis(1000 / TICKS_PER_SECOND));
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Arc::new(Engine {
            engine,
            max_memory,
            linker,
            component,
            cache_dir: cache_dir.map(std::path::Path::to_path_buf),
            plain: OnceLock::new(),
            component_hash: crate::component_hash(component),
        }))
    }

    /// Compiles the component, or loads it from the cache, if that was not
    /// done yet: seconds of CPU on a cold cache, so not on a request's
    /// thread. An error is kept: every later use reports it.
    pub fn load(&self) -> Result<()> {
        self.plain().map(|_| ())
    }

    fn plain(&self) -> Result<&Plain> {
        let loaded = self.plain.get_or_init(|| {
            let (compiled, from_cache) =
                cache::load_or_compile(&self.engine, self.component, self.cache_dir.as_deref())
                    .map_err(|e| format!("{e:#}"))?;
            let pre = self
                .linker
                .instantiate_pre(&compiled)
                .map_err(|e| format!("{e:?}"))?;
            let pre = CorePre::new(pre).map_err(|e| format!("{e:?}"))?;
            Ok(Plain { pre, from_cache })
        });
        loaded.as_ref().map_err(|e| anyhow!("{e}"))
    }

    /// Whether the compiled component came from the cache (loading it if
    /// that was not done yet).
    pub fn from_cache(&self) -> bool {
        self.plain().is_ok_and(|p| p.from_cache)
    }

    fn store(&self, backends: &Backends) -> Store<HostState> {
        let state = HostState {
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.max_memory)
                .trap_on_grow_failure(true)
                .build(),
            backends: backends.clone(),
            call: Call::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store
    }

    /// The cache key of the snapshot of `spec`: the component's hash and
    /// the spec's text.
    fn snapshot_key(&self, spec: &str) -> String {
        sinew_core::hash::sha256_hex(format!("{}\n{spec}", self.component_hash).as_bytes())
    }

    /// The snapshot of `spec` built earlier into `cache_dir`, if there is
    /// one (a few milliseconds: the file is mapped, not compiled). An error
    /// says why one that is there cannot be used (it is then rebuilt).
    pub fn cached_snapshot(
        &self,
        spec: &str,
        cache_dir: &std::path::Path,
    ) -> Result<Option<Snapshot>> {
        let key = self.snapshot_key(spec);
        let path = cache::keyed_path(cache_dir, cache::Kind::Snapshot, &key);
        let Ok(info) = std::fs::read(path.with_extension("cwasm.json")) else {
            return Ok(None);
        };
        let info: SnapshotInfo =
            serde_json::from_slice(&info).context("reading the snapshot's description")?;
        let (component, from_cache) = cache::load_or_compile_keyed(
            &self.engine,
            cache::Kind::Snapshot,
            &key,
            Some(cache_dir),
            || Err(anyhow!("`{}` is missing or damaged", path.display())),
        )?;
        self.ready_snapshot(&component, info, from_cache).map(Some)
    }

    /// A compiled snapshot, linked and ready to instantiate.
    fn ready_snapshot(
        &self,
        component: &wasmtime::component::Component,
        info: SnapshotInfo,
        from_cache: bool,
    ) -> Result<Snapshot> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| anyhow!("{e:?}"))?;
        Ok(Snapshot {
            pre: CorePre::new(pre).map_err(|e| anyhow!("{e:?}"))?,
            info,
            from_cache,
        })
    }

    /// The component with `spec` already loaded: its memory after `load`,
    /// snapshotted (Wizer) into a component of its own and compiled, or
    /// found in `cache_dir`. Its instances start with the bundle in memory
    /// (a copy-on-write image), so none of them parses the spec again.
    ///
    /// Seconds of CPU when not cached (two compilations of the component):
    /// run it off the request path.
    pub async fn snapshot(
        &self,
        spec: &str,
        backends: &Backends,
        cache_dir: Option<&std::path::Path>,
    ) -> Result<Snapshot> {
        if let Some(s) = cache_dir.and_then(|d| self.cached_snapshot(spec, d).ok().flatten()) {
            return Ok(s);
        }
        let wizer = wasmtime_wizer::Wizer::new();
        let (cx, instrumented) = wizer
            .instrument_component(crate::COMPONENT)
            .map_err(|e| anyhow!("instrumenting the component: {e:?}"))?;
        let (component, _) = cache::load_or_compile_keyed(
            &self.engine,
            cache::Kind::Instrumented,
            &crate::component_sha256(crate::COMPONENT),
            cache_dir,
            || Ok(instrumented.clone()),
        )?;
        let mut store = self.store(backends);
        store.set_epoch_deadline(DEFAULT_TIMEOUT.as_secs() * TICKS_PER_SECOND);
        let instance = self
            .linker
            .instantiate_async(&mut store, &component)
            .await
            .map_err(|e| anyhow!("{e:?}"))?;
        let core = Core::new(&mut store, &instance).map_err(|e| anyhow!("{e:?}"))?;
        let loaded = core
            .sinew_executor_executor()
            .call_load(&mut store, &spec.to_owned())
            .await
            .map_err(|e| anyhow!("{e:?}"))?
            .map_err(|e| anyhow!("{}", e.message))?;
        let info = SnapshotInfo::of(loaded);
        let bytes = wizer
            .snapshot_component(
                &cx,
                &mut snapshot::State {
                    store: &mut store,
                    instance,
                },
            )
            .await
            .map_err(|e| anyhow!("snapshotting the component: {e:?}"))?;
        let key = self.snapshot_key(spec);
        let (component, _) = cache::load_or_compile_keyed(
            &self.engine,
            cache::Kind::Snapshot,
            &key,
            cache_dir,
            || Ok(bytes),
        )?;
        if let Some(dir) = cache_dir {
            // Written after the compiled snapshot: a snapshot is used only
            // when both are there.
            let path = cache::keyed_path(dir, cache::Kind::Snapshot, &key);
            let _ = std::fs::write(
                path.with_extension("cwasm.json"),
                serde_json::to_vec(&info).unwrap_or_default(),
            );
        }
        self.ready_snapshot(&component, info, false)
    }

    /// A fresh instance (for measurements: how long instantiation takes).
    pub async fn instantiate(&self, backends: &Backends) -> Result<(Store<HostState>, Core)> {
        self.instantiate_from(&self.plain()?.pre, backends).await
    }

    /// A fresh instance of a snapshot (for measurements).
    pub async fn instantiate_snapshot(
        &self,
        snapshot: &Snapshot,
        backends: &Backends,
    ) -> Result<(Store<HostState>, Core)> {
        self.instantiate_from(&snapshot.pre, backends).await
    }

    /// A fresh instance of `pre` (the component, or a snapshot of it).
    async fn instantiate_from(
        &self,
        pre: &CorePre<HostState>,
        backends: &Backends,
    ) -> Result<(Store<HostState>, Core)> {
        let mut store = self.store(backends);
        store.set_epoch_deadline(DEFAULT_TIMEOUT.as_secs() * TICKS_PER_SECOND);
        let core = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| anyhow!("{e:?}"))?;
        Ok((store, core))
    }
}

/// What the host needs to know of a loaded spec.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    /// The bundle's hash.
    pub hash: String,
    /// Each tool's `timeoutMs`, if it sets one.
    pub timeouts: Vec<(String, Option<u64>)>,
}

impl SnapshotInfo {
    fn of(info: bindings::exports::sinew::executor::executor::BundleInfo) -> SnapshotInfo {
        SnapshotInfo {
            hash: info.hash,
            timeouts: info
                .tools
                .into_iter()
                .map(|t| (t.name, t.timeout_ms))
                .collect(),
        }
    }
}

/// A spec loaded into the component and snapshotted (see
/// [`Engine::snapshot`]): ready to instantiate.
pub struct Snapshot {
    pre: CorePre<HostState>,
    /// The loaded spec's hash and deadlines.
    pub info: SnapshotInfo,
    /// Whether it came from the cache.
    pub from_cache: bool,
}

/// Why a spec could not be loaded into the component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LoadError {
    /// Stable code (see `wit/world.wit`).
    pub code: String,
    /// One sentence.
    pub message: String,
    /// JSON Pointer into the spec.
    pub pointer: String,
}

struct Pooled {
    store: Store<HostState>,
    core: Core,
}

/// A spec loaded into the component, serving requests.
pub struct Executor {
    engine: Arc<Engine>,
    spec: String,
    backends: Backends,
    pool: Mutex<Vec<Pooled>>,
    /// The spec loaded and snapshotted, once there is one: new instances
    /// come from it instead of loading the spec themselves.
    snapshot: std::sync::RwLock<Option<Arc<Snapshot>>>,
    /// One permit per instance that may exist: requests beyond that wait
    /// for one rather than fail.
    permits: tokio::sync::Semaphore,
    /// Each tool's deadline.
    timeouts: std::collections::HashMap<String, Duration>,
    /// The bundle's hash, for audit entries the host writes itself.
    pub bundle_hash: String,
    /// The spec, parsed when the host first answers for the guest (a
    /// refusal, a trap): never on the way of a request that runs.
    parsed: OnceLock<sinew_core::model::Spec>,
}

impl Executor {
    /// Loads `spec` into a first instance (checking that it can run).
    pub async fn new(
        engine: Arc<Engine>,
        spec: String,
        backends: Backends,
    ) -> Result<Executor, LoadError> {
        let mut ex = Executor::empty(engine, spec, backends);
        // The first instance's `load` checks the spec and says what the
        // host needs (hash, deadlines): the spec is parsed only there.
        let (first, info) = ex.fresh().await?;
        ex.know(info);
        ex.put(first);
        Ok(ex)
    }

    /// An executor whose instances come from `snapshot` (a spec loaded
    /// earlier, see [`Engine::snapshot`]), with no spec parsed now.
    pub fn from_snapshot(
        engine: Arc<Engine>,
        spec: String,
        backends: Backends,
        snapshot: Snapshot,
    ) -> Executor {
        let mut ex = Executor::empty(engine, spec, backends);
        ex.know(snapshot.info.clone());
        ex.install(snapshot);
        ex
    }

    /// No instance, no snapshot, nothing known of the spec yet.
    fn empty(engine: Arc<Engine>, spec: String, backends: Backends) -> Executor {
        Executor {
            engine,
            spec,
            backends,
            pool: Mutex::new(Vec::new()),
            snapshot: Default::default(),
            // Leave room for other executors of the same engine (a reload).
            permits: tokio::sync::Semaphore::new(MAX_INSTANCES as usize / 2),
            timeouts: Default::default(),
            bundle_hash: String::new(),
            parsed: OnceLock::new(),
        }
    }

    /// The loaded spec's hash and deadlines.
    fn know(&mut self, info: SnapshotInfo) {
        self.bundle_hash = info.hash;
        self.timeouts = info
            .timeouts
            .into_iter()
            .map(|(name, ms)| (name, ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis)))
            .collect();
    }

    /// From now on, new instances come from `snapshot` (of this executor's
    /// spec).
    pub fn install(&self, snapshot: Snapshot) {
        if let Ok(mut s) = self.snapshot.write() {
            *s = Some(Arc::new(snapshot));
        }
    }

    /// Whether new instances come from a snapshot.
    pub fn snapshotted(&self) -> bool {
        self.snapshot.read().is_ok_and(|s| s.is_some())
    }

    /// Builds the snapshot of this executor's spec (or finds it in
    /// `cache_dir`) and installs it. Seconds of CPU the first time: call it
    /// off the request path.
    pub async fn snapshot(&self, cache_dir: Option<&std::path::Path>) -> Result<bool> {
        let s = self
            .engine
            .snapshot(&self.spec, &self.backends, cache_dir)
            .await?;
        anyhow::ensure!(
            s.info.hash == self.bundle_hash,
            "the snapshot holds another bundle ({} instead of {})",
            s.info.hash,
            self.bundle_hash
        );
        let cached = s.from_cache;
        self.install(s);
        Ok(cached)
    }

    /// Fills the pool with `n` ready instances (each has loaded the spec),
    /// so a burst of first requests does not pay for instantiation.
    pub async fn warm(&self, n: usize) {
        let have = self.pool.lock().map_or(0, |p| p.len());
        for _ in have..n {
            match self.fresh().await {
                Ok((p, _)) => self.put(p),
                Err(_) => return,
            }
        }
    }

    async fn fresh(&self) -> Result<(Pooled, SnapshotInfo), LoadError> {
        let internal = |e: anyhow::Error| LoadError {
            code: "internal".into(),
            message: format!("{e:#}"),
            pointer: String::new(),
        };
        let snapshot = self.snapshot.read().ok().and_then(|s| s.clone());
        if let Some(snapshot) = snapshot {
            let (store, core) = self
                .engine
                .instantiate_from(&snapshot.pre, &self.backends)
                .await
                .map_err(internal)?;
            return Ok((Pooled { store, core }, snapshot.info.clone()));
        }
        let (mut store, core) = self
            .engine
            .instantiate(&self.backends)
            .await
            .map_err(internal)?;
        store.set_epoch_deadline(DEFAULT_TIMEOUT.as_secs() * TICKS_PER_SECOND);
        let loaded = core
            .sinew_executor_executor()
            .call_load(&mut store, &self.spec)
            .await
            .map_err(|e| internal(anyhow!("{e:?}")))?;
        match loaded {
            Ok(info) => Ok((Pooled { store, core }, SnapshotInfo::of(info))),
            Err(e) => Err(LoadError {
                code: e.code,
                message: e.message,
                pointer: e.pointer,
            }),
        }
    }

    /// Instances running a request, and instances ready in the pool.
    pub fn instance_stats(&self) -> (usize, usize) {
        let idle = self.pool.lock().map_or(0, |p| p.len());
        let in_use = (MAX_INSTANCES as usize / 2).saturating_sub(self.permits.available_permits());
        (in_use, idle)
    }

    fn take(&self) -> Option<Pooled> {
        self.pool.lock().ok()?.pop()
    }

    fn put(&self, p: Pooled) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(p);
        }
    }

    /// Runs one request. A trap (a bug, the deadline, memory) rolls back
    /// what the guest had open, answers 500 or 504, writes the final audit
    /// entry itself, and discards the instance.
    pub async fn execute(&self, request: &Request) -> Response {
        match self.run(request).await {
            Ran::Guest(r) => Response {
                status: r.status,
                body: serde_json::from_str(&r.body).unwrap_or(Value::Null),
                audit: serde_json::from_str(&r.audit).unwrap_or(Value::Null),
            },
            Ran::Host(r) => r,
        }
    }

    /// Like [`Executor::execute`], with the body as the guest wrote it:
    /// what a server sends, without parsing and writing the JSON again.
    pub async fn reply(&self, request: &Request) -> Reply {
        match self.run(request).await {
            Ran::Guest(r) => {
                let (internal, escalated, caller) = for_the_log(r.status, &r.audit);
                Reply {
                    internal,
                    escalated,
                    caller,
                    replayed: replayed_error(r.status, &r.audit),
                    status: r.status,
                    body: r.body,
                }
            }
            Ran::Host(r) => r.into(),
        }
    }

    async fn run(&self, request: &Request) -> Ran {
        let Ok(_permit) = self.permits.acquire().await else {
            return Ran::Host(
                self.host_failure(
                    request,
                    None,
                    Code::Internal,
                    "the executor is shutting down",
                    false,
                )
                .await,
            );
        };
        let mut p = match self.take() {
            Some(p) => p,
            None => match self.fresh().await {
                Ok((p, _)) => p,
                Err(e) => {
                    return Ran::Host(
                        self.host_failure(
                            request,
                            None,
                            Code::Internal,
                            &format!("could not start an executor: {}", e.message),
                            false,
                        )
                        .await,
                    );
                }
            },
        };
        let timeout = self
            .timeouts
            .get(&request.tool)
            .copied()
            .unwrap_or(DEFAULT_TIMEOUT);
        let ticks = (timeout.as_millis() as u64 * TICKS_PER_SECOND)
            .div_ceil(1000)
            .max(1)
            + 1;
        p.store.set_epoch_deadline(ticks);
        let wit = bindings::request(request);
        p.store.data_mut().call = Call::default();
        let started = Instant::now();
        // The epoch deadline stops guest code; this one also stops a host
        // call that waits (a lock, a slow database).
        let result = tokio::time::timeout(
            timeout + HOST_GRACE,
            crate::telemetry::in_span(
                format!("execute {}", request.tool),
                crate::telemetry::Kind::Internal,
                vec![opentelemetry::KeyValue::new(
                    "sinew.execution",
                    request.id.clone(),
                )],
                p.core
                    .sinew_executor_executor()
                    .call_execute(&mut p.store, &wit),
            ),
        )
        .await
        .unwrap_or_else(|_| Err(wasmtime::Trap::Interrupt.into()));
        let mut call = std::mem::take(&mut p.store.data_mut().call);
        let (code, internal) = match result {
            Ok(Ok(r)) => {
                self.put(p);
                return Ran::Guest(r);
            }
            // The guest refused the request (before the contract ran).
            Ok(Err(e)) => {
                self.put(p);
                let code = match e.code.as_str() {
                    "too-large" => Code::TooLarge,
                    "invalid-json" => Code::InvalidJson,
                    _ => Code::Internal,
                };
                (code, e.message)
            }
            Err(trap) => {
                drop(p);
                let deadline = matches!(
                    trap.downcast_ref::<wasmtime::Trap>(),
                    Some(wasmtime::Trap::Interrupt)
                ) || started.elapsed() >= timeout;
                if deadline {
                    let ms = timeout.as_millis();
                    let message = format!("`{}` ran longer than {ms} ms", request.tool);
                    (Code::DeadlineExceeded, message)
                } else {
                    (Code::Internal, format!("the executor stopped: {trap:?}"))
                }
            }
        };
        // A commit the guest was waiting for goes on: its outcome decides
        // whether the request's outcome is recorded already.
        call.settle().await;
        let at = call.started;
        let recorded = call.final_entry.clone();
        // After lasting effects, the failure is stored for the call's keys
        // (as the guest stores its own): a retry with the same key must not
        // write or charge again.
        let lasting = recorded.is_none() && self.lasting(&call);
        let committed = call.committed;
        let keep = if lasting {
            std::mem::take(&mut call.claimed)
        } else {
            Vec::new()
        };
        self.clean_up(request, call).await;
        // The guest had recorded its outcome (the trap came while it was
        // finishing): answer with that outcome, and record no second one.
        if let Some(entry) = recorded {
            return Ran::Host(recorded_outcome(request, entry));
        }
        let r = self
            .host_failure(request, at, code, &internal, committed)
            .await;
        for (scope, key) in keep {
            let store = self
                .backends
                .storage
                .complete_key(None, &scope, &key, r.status, &r.body);
            let stored = tokio::time::timeout(Duration::from_secs(5), store).await;
            if !matches!(stored, Ok(Ok(()))) {
                log_error(
                    request,
                    &format!(
                        "could not store the answer for the idempotency key `{key}` after the call failed"
                    ),
                );
            }
        }
        Ran::Host(r)
    }

    /// Undoes what a call that did not answer left (nothing, unless it
    /// trapped): rolls back its open transactions (innermost first) and
    /// releases the idempotency keys it claimed and did not complete (a
    /// completed key is kept: releasing deletes only in-flight claims).
    async fn clean_up(&self, request: &Request, call: Call) {
        let storage = &self.backends.storage;
        for tx in call.open.into_iter().rev() {
            let _ = tokio::time::timeout(Duration::from_secs(5), storage.rollback(tx)).await;
        }
        for (scope, key) in call.claimed {
            let release = storage.release_key(&scope, &key);
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), release).await {
                log_error(
                    request,
                    &format!(
                        "could not release the idempotency key `{key}` after the call failed: {e}"
                    ),
                );
            }
        }
    }

    /// The response and final audit entry for a request the guest could not
    /// answer (it trapped), stamped with the time the guest gave the request
    /// if it got that far.
    async fn host_failure(
        &self,
        request: &Request,
        started: Option<i64>,
        code: Code,
        internal: &str,
        committed: bool,
    ) -> Response {
        let detail = match code {
            Code::DeadlineExceeded => {
                "the request ran out of time; what it had not committed was rolled back (the audit entry says what committed)"
            }
            Code::Internal => "internal error",
            _ => internal,
        };
        let mut problem = Problem::new(code, detail).internal(internal);
        if committed {
            problem.extra.insert("committed".into(), Value::Bool(true));
        }
        let sensitive = self.sensitive(&request.tool);
        self.backends
            .turn_away((&self.bundle_hash, &sensitive), request, &problem, started)
            .await
    }

    /// Turns a request away before it reaches the component (a bad token,
    /// body or content type): the problem response, and its final audit
    /// entry written in a transaction of its own.
    pub async fn reject(&self, request: &Request, problem: Problem) -> Response {
        let sensitive = self.sensitive(&request.tool);
        self.backends
            .refuse((&self.bundle_hash, &sensitive), request, &problem)
            .await
    }

    /// Tool `tool`'s `sensitive` input properties, for the entries the
    /// host writes itself. The spec is parsed for that the first time one
    /// is needed (a refusal, a trap), never on the way of a request that
    /// runs.
    fn sensitive(&self, tool: &str) -> Vec<String> {
        self.parsed()
            .tools
            .get(tool)
            .map(|t| t.sensitive.clone())
            .unwrap_or_default()
    }

    fn parsed(&self) -> &sinew_core::model::Spec {
        self.parsed
            .get_or_init(|| sinew_core::spec::load(&self.spec).spec)
    }

    /// Whether a call that trapped left lasting effects: writes that
    /// committed, or a call to an operation with side effects.
    fn lasting(&self, call: &Call) -> bool {
        call.committed
            || call
                .called
                .iter()
                .any(|(service, op)| self.parsed().has_side_effects(service, op))
    }

    /// Risk report through the component (same engine as `execute`).
    pub async fn analyze(&self, spec: &str) -> Result<String> {
        let mut p = match self.take() {
            Some(p) => p,
            None => self.fresh().await.map_err(|e| anyhow!("{}", e.message))?.0,
        };
        let out = p
            .core
            .sinew_executor_risk()
            .call_analyze(&mut p.store, spec)
            .await
            .map_err(|e| anyhow!("{e:?}"))?;
        self.put(p);
        Ok(out)
    }
}

/// The answer to a request whose guest trapped after its final audit entry
/// was durable: the entry's error, as the guest would have answered it; for
/// a success whose answer was lost, a 503 that says it committed (a retry
/// with the same key replays the stored answer).
fn recorded_outcome(request: &Request, entry: Value) -> Response {
    let status = entry
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(500);
    let text = |k: &str| {
        entry
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let problem = if status >= 400 {
        Problem::custom(status, &text("code"), text("detail"))
    } else {
        let mut p = Problem::new(
            Code::Unavailable,
            "the request completed, but its answer was lost: retry with the same Idempotency-Key to get it",
        );
        p.extra.insert("committed".into(), Value::Bool(true));
        p
    };
    Response {
        status: problem.status(),
        body: problem.body(&request.id),
        audit: entry,
    }
}

/// A response as a server sends it: the status and the body's JSON text.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body, JSON text.
    pub body: String,
    /// For a 5xx, what operators need and the body must not say (the
    /// audit entry's `internal`: the failed expression, the storage
    /// error), for the server's log.
    pub internal: Option<String>,
    /// The `escalate` policies raised for review (from the audit entry,
    /// [`sinew_core::chain::escalations`]), for the server's alert line.
    pub escalated: Vec<String>,
    /// With `escalated`: the caller (the entry's `subject`; `None`:
    /// anonymous).
    pub caller: Option<String>,
    /// The answer is one stored for the request's idempotency key (audit
    /// outcome `replayed`), not a new run.
    pub replayed: bool,
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        let (internal, escalated, caller) = log_fields(r.status, &r.audit);
        Reply {
            internal,
            escalated,
            caller,
            replayed: r.audit.get("outcome").and_then(Value::as_str) == Some("replayed"),
            status: r.status,
            body: sinew_core::hash::json_text(&r.body),
        }
    }
}

/// Whether an error's audit entry (JSON text as the guest wrote it) says
/// the answer was a stored one. Parsed only when the text holds the member
/// (an input could hold it too).
fn replayed_error(status: u16, audit: &str) -> bool {
    status >= 400
        && audit.contains(r#""outcome":"replayed""#)
        && serde_json::from_str::<Value>(audit)
            .is_ok_and(|e| e.get("outcome").and_then(Value::as_str) == Some("replayed"))
}

/// What the server's log needs from an audit entry (JSON text as the guest
/// wrote it): see [`log_fields`]. Only entries that can hold either are
/// parsed (`"escalate"` is looked for in the text first).
fn for_the_log(status: u16, audit: &str) -> ForTheLog {
    if status < 500 && !audit.contains("\"escalate\"") {
        return (None, Vec::new(), None);
    }
    match serde_json::from_str::<Value>(audit) {
        Ok(entry) => log_fields(status, &entry),
        Err(_) => (None, Vec::new(), None),
    }
}

/// A 5xx's `internal`; the `escalate` policies raised, and the caller.
type ForTheLog = (Option<String>, Vec<String>, Option<String>);

/// A 5xx's `internal`, the names of the `escalate` policies raised for
/// review, and with them the caller, of an audit entry.
fn log_fields(status: u16, entry: &Value) -> ForTheLog {
    let internal = (status >= 500)
        .then(|| entry.get("internal").and_then(Value::as_str))
        .flatten()
        .map(str::to_owned);
    let escalated: Vec<String> = sinew_core::chain::escalations(entry)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let caller = (!escalated.is_empty())
        .then(|| entry.get("subject").and_then(Value::as_str))
        .flatten()
        .map(str::to_owned);
    (internal, escalated, caller)
}

/// How a request ended: answered by the guest (its JSON as written), or by
/// the host when the guest could not answer.
enum Ran {
    Guest(bindings::exports::sinew::executor::executor::Response),
    Host(Response),
}

/// A final audit entry could not be written (the database is down): said
/// loudly on the log, the only place left to say it.
fn audit_lost(request: &Request, e: &sinew_core::ports::StorageError) {
    let message = format!(
        "the final audit entry of `{}` could not be written: {e}",
        request.tool
    );
    log_error(request, &message);
}

/// One structured error line about a request, in `serve`'s log format.
fn log_error(request: &Request, message: &str) {
    let line = serde_json::json!({
        "severity": "ERROR",
        "message": message,
        "execution": request.id,
    });
    log_line(&line.to_string());
}

/// Writes one log line to standard output. A closed stdout (its reader went
/// away) loses the line, never the request: `println!` would panic in the
/// middle of answering it.
pub fn log_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A trap that comes after the guest's final entry is durable must not
    /// record a second one (the bank test saw 3 entries too many under
    /// load): the bookkeeping that tells when it is durable.
    #[test]
    fn a_final_entry_is_durable_when_written_alone_or_committed() {
        let fin = json!({"kind": "final", "status": 422, "code": "limit_exceeded", "detail": "d"});
        let mut c = Call::default();
        c.appended(Some(7), json!({"kind": "commit"}));
        c.appended(Some(7), fin.clone());
        assert!(c.final_entry.is_none(), "not durable before its commit");
        c.ended(7, false);
        assert!(c.final_entry.is_none(), "gone with its rollback");
        c.appended(Some(8), fin.clone());
        c.ended(8, true);
        assert_eq!(c.final_entry.as_ref(), Some(&fin));
        let mut alone = Call::default();
        alone.appended(None, fin.clone());
        assert_eq!(alone.final_entry.as_ref(), Some(&fin));
    }

    /// Writes count as committed once a transaction whose `commit` entry
    /// records some commits; a transaction that only read does not count.
    #[test]
    fn committed_writes_are_known_after_a_trap() {
        let mut c = Call::default();
        c.appended(Some(1), json!({"kind": "commit", "rows": []}));
        c.ended(1, true);
        assert!(!c.committed, "a transaction that only read");
        c.appended(
            Some(2),
            json!({"kind": "commit", "rows": [{"op": "create"}]}),
        );
        c.ended(2, false);
        assert!(!c.committed, "rolled back");
        c.appended(
            Some(3),
            json!({"kind": "commit", "rows": [], "messages": [{}]}),
        );
        assert!(!c.committed, "not before its commit");
        c.ended(3, true);
        assert!(c.committed && c.pending_writes.is_empty());
    }

    /// A deadline that stops the guest while its commit waits (on a lock)
    /// does not stop the commit: the host waits for it and learns whether
    /// the final entry it carried was recorded (the deadline test once saw
    /// a 504 recorded beside a committed success).
    #[tokio::test]
    async fn a_commit_the_guest_was_stopped_in_is_awaited() {
        let fin = json!({"kind": "final", "status": 200});
        for committed in [true, false] {
            let mut c = Call::default();
            c.appended(Some(3), fin.clone());
            let (go, wait) = tokio::sync::oneshot::channel::<bool>();
            let step = async move {
                match wait.await {
                    Ok(true) => Ok(()),
                    _ => Err(StorageError::Unavailable {
                        message: "rolled back".into(),
                    }),
                }
            };
            let stopped =
                tokio::time::timeout(Duration::from_millis(20), c.end_with(Ends::Commit(3), step))
                    .await;
            assert!(stopped.is_err(), "the commit was still waiting");
            assert!(c.final_entry.is_none(), "not known before it ends");
            go.send(committed).unwrap();
            c.settle().await;
            assert_eq!(c.final_entry.is_some(), committed);
            assert!(c.pending_final.is_empty() && c.ending.is_none());
        }
    }

    #[test]
    fn a_recorded_outcome_is_answered_as_recorded() {
        let request = Request {
            tool: "t".into(),
            input: json!({}),
            auth: None,
            id: "r1".into(),
            idempotency_key: None,
            scheduled: None,
        };
        let r = recorded_outcome(
            &request,
            json!({"kind": "final", "status": 504, "code": "deadline_exceeded", "detail": "late"}),
        );
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (504, Some("deadline_exceeded"))
        );
        let ok = recorded_outcome(&request, json!({"kind": "final", "status": 200}));
        assert_eq!(ok.status, 503);
        assert_eq!(ok.body["committed"], json!(true));
    }
}
