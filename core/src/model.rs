//! The spec model: what a loaded spec is (entities, tools, flows, nodes,
//! policies), as plain data. The `spec` module builds it from JSON and
//! re-exports it; the other modules read it.

use indexmap::IndexMap;
use serde_json::Value;
use std::hash::BuildHasherDefault;

use crate::expr::Expr;

/// The maps of the model, keyed by names, in document order (hashed with a
/// small fast deterministic hasher).
pub type NameMap<V> = IndexMap<String, V, BuildHasherDefault<crate::hash::IdHasher>>;

/// A whole backend.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// The spec's name.
    pub name: String,
    /// Declared roles; `None` when the spec declares none (then any role
    /// name is accepted).
    pub roles: Option<Vec<String>>,
    /// Entities by name, in document order.
    pub entities: NameMap<Entity>,
    /// External services by name.
    pub externals: NameMap<External>,
    /// Tools by name.
    pub tools: NameMap<Tool>,
    /// Tools too broken to decode (their errors were reported).
    pub broken_tools: Vec<String>,
    /// Policies by name.
    pub policies: NameMap<Policy>,
    /// Acknowledged Yellow signals.
    pub acknowledgments: Vec<Acknowledgment>,
    /// Bundle-wide limits.
    pub limits: BundleLimits,
    /// Cross-origin access for browsers (format 0.2); `None`: none.
    pub cors: Option<Cors>,
    /// Who may list and resolve the review items `escalate` policies
    /// raise (`reviews: {"roles"}`, format 0.2); `None`: no one (the
    /// items are still recorded).
    pub reviews: Option<Reviews>,
}

impl Spec {
    /// Whether a call of `service.operation` may change something at the
    /// service: unless the operation is declared `sideEffects: false` (an
    /// undeclared one is assumed to).
    pub fn has_side_effects(&self, service: &str, operation: &str) -> bool {
        self.externals
            .get(service)
            .and_then(|x| x.operations.get(operation))
            .is_none_or(|o| o.side_effects)
    }
}

/// `reviews`: the roles that see and resolve review items
/// (`GET /reviews`, `POST /reviews/{id}/resolve`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reviews {
    /// At least one role.
    pub roles: Vec<String>,
}

/// The path under which `sinew serve` answers reviews when the spec
/// declares `reviews`.
pub const REVIEWS_PATH: &str = "/reviews";

/// The paths `sinew serve` answers itself, whatever the method: a tool's
/// route may not be one of them (`reserved-route`). A route with a
/// parameter where these have a literal (`/{page}`, `/{a}/{b}`) is the
/// tool's for every other value.
pub const RESERVED_PATHS: [&str; 5] = [
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/tools/{name}",
    "/queues/{queue}",
];

/// The reserved path (of [`RESERVED_PATHS`], or `/reviews` when the spec
/// declares `reviews`) that `path`, a route's path or a request's, is or
/// lies under; `None` when it is free. A segment written as a parameter
/// (`{x}`) is taken literally: `/tools/{x}` is reserved, `/{a}/{b}` is not.
pub fn reserved_path(path: &str, reviews: bool) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["healthz"] => Some(RESERVED_PATHS[0]),
        ["readyz"] => Some(RESERVED_PATHS[1]),
        ["openapi.json"] => Some(RESERVED_PATHS[2]),
        ["tools", _] => Some(RESERVED_PATHS[3]),
        ["queues", _] => Some(RESERVED_PATHS[4]),
        ["reviews", ..] if reviews => Some(REVIEWS_PATH),
        _ => None,
    }
}

/// Which browser origins may call which tools (`cors`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins (`https://app.example.com`), or `*` for any.
    pub origins: Vec<String>,
    /// The tools they may call; `None`: every tool with a route.
    pub tools: Option<Vec<String>>,
    /// JSON Pointer of `cors`.
    pub path: String,
}

impl Cors {
    /// What `Access-Control-Allow-Origin` answers a request from `origin`
    /// to `tool`: the origin itself, or `*` when any origin is allowed;
    /// `None` when it may not call it.
    pub fn allow(&self, origin: &str, tool: &str) -> Option<String> {
        if let Some(tools) = &self.tools
            && !tools.iter().any(|t| t == tool)
        {
            return None;
        }
        if self.origins.iter().any(|o| o == "*") {
            return Some("*".to_owned());
        }
        self.origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
            .then(|| origin.to_owned())
    }
}

/// Bundle-wide limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleLimits {
    /// A write that can touch more rows than this is Yellow.
    pub max_rows_per_write: u64,
}

impl Default for BundleLimits {
    fn default() -> Self {
        BundleLimits {
            max_rows_per_write: 100,
        }
    }
}

/// An expression string, parsed, with where it came from.
#[derive(Debug, Clone)]
pub struct Expression {
    /// The source text.
    pub src: String,
    /// The parsed form; `None` when it did not parse (an error was reported).
    pub ast: Option<Expr>,
    /// JSON Pointer of the string.
    pub path: String,
}

/// A template: strings are expressions, other JSON is literal.
#[derive(Debug, Clone)]
pub enum Template {
    /// An expression.
    Expr(Expression),
    /// A literal number, boolean or null.
    Literal(Value),
    /// An object of templates.
    Object(NameMap<Template>),
    /// An array of templates.
    Array(Vec<Template>),
}

impl Template {
    /// Every expression inside, in document order.
    pub fn expressions(&self) -> Vec<&Expression> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(t) = stack.pop() {
            match t {
                Template::Expr(e) => out.push(e),
                Template::Literal(_) => {}
                Template::Object(m) => stack.extend(m.values().rev()),
                Template::Array(a) => stack.extend(a.iter().rev()),
            }
        }
        out
    }
}

/// An entity: a table.
#[derive(Debug, Clone, Default)]
pub struct Entity {
    /// Declared fields (the implicit `id`, `version`, timestamps and
    /// `status` are not listed).
    pub fields: NameMap<Field>,
    /// Row ownership.
    pub owner: Option<Owner>,
    /// The status machine.
    pub status: Option<StatusMachine>,
    /// Named invariants over `row`.
    pub invariants: NameMap<Expression>,
    /// Declared indexes (format 0.2).
    pub indexes: Vec<Index>,
    /// The entity's former name (`renamedFrom`): the migration renames
    /// its table instead of creating a new one.
    pub renamed_from: Option<String>,
    /// JSON Pointer of the entity.
    pub path: String,
}

/// An index an entity declares: its columns in order, and whether no two
/// live rows may share their values (rows with a null among them take no
/// value, as in SQL).
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// The columns, leading one first.
    pub fields: Vec<String>,
    /// Unique among live rows.
    pub unique: bool,
    /// JSON Pointer of the index.
    pub path: String,
}

/// The implicit columns of every entity.
pub const IMPLICIT_FIELDS: &[&str] = &["id", "version", "created_at", "updated_at", "deleted_at"];

impl Entity {
    /// Whether `name` is a column of this entity (declared or implicit).
    pub fn has_column(&self, name: &str) -> bool {
        self.fields.contains_key(name)
            || IMPLICIT_FIELDS.contains(&name)
            || (name == "status" && self.status.is_some())
    }

    /// Every column name, declared first.
    pub fn columns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.fields.keys().map(String::as_str).collect();
        out.extend(IMPLICIT_FIELDS);
        if self.status.is_some() {
            out.push("status");
        }
        out
    }

    /// Whether an equality on `name` pins at most one row.
    pub fn is_unique(&self, name: &str) -> bool {
        name == "id" || self.fields.get(name).is_some_and(|f| f.unique)
    }

    /// The only values column `name` takes, where they are listed: the
    /// states of `status`, a field's `enum`.
    pub fn values_of(&self, name: &str) -> Option<Vec<Value>> {
        if name == "status" && self.fields.get("status").is_none() {
            return self
                .status
                .as_ref()
                .map(|sm| sm.states().iter().map(|s| Value::from(*s)).collect());
        }
        self.fields.get(name)?.enum_values.clone()
    }

    /// The type of a column, declared or implicit (`status` is a string).
    pub fn column_type(&self, name: &str) -> Option<FieldType> {
        match name {
            "id" => Some(FieldType::Uuid),
            "version" => Some(FieldType::Integer),
            "created_at" | "updated_at" | "deleted_at" => Some(FieldType::Timestamp),
            "status" if self.status.is_some() => Some(FieldType::String),
            _ => self.fields.get(name).map(|f| f.ty),
        }
    }
}

/// Field types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Text.
    String,
    /// A 64-bit integer (money is integer minor units).
    Integer,
    /// true / false.
    Boolean,
    /// A double; never for money.
    Number,
    /// An RFC 3339 instant.
    Timestamp,
    /// A UUID.
    Uuid,
    /// Any JSON.
    Json,
    /// Another entity's id.
    Ref,
}

impl FieldType {
    /// Every type, with its name in the format.
    pub const ALL: &[(&'static str, FieldType)] = &[
        ("string", FieldType::String),
        ("integer", FieldType::Integer),
        ("boolean", FieldType::Boolean),
        ("number", FieldType::Number),
        ("timestamp", FieldType::Timestamp),
        ("uuid", FieldType::Uuid),
        ("json", FieldType::Json),
        ("ref", FieldType::Ref),
    ];

    /// The name in the format.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("json", |(n, _)| n)
    }
}

/// A declared field.
#[derive(Debug, Clone)]
pub struct Field {
    /// Its type.
    pub ty: FieldType,
    /// For `ref`: the entity referred to.
    pub entity: Option<String>,
    /// For `ref`: what a soft delete of the row referred to does to the
    /// live rows that refer to it.
    pub on_delete: OnDelete,
    /// Smallest allowed value.
    pub minimum: Option<serde_json::Number>,
    /// Largest allowed value.
    pub maximum: Option<serde_json::Number>,
    /// Longest allowed string, in characters.
    pub max_length: Option<u64>,
    /// The allowed values.
    pub enum_values: Option<Vec<Value>>,
    /// Whether null is allowed.
    pub nullable: bool,
    /// Whether values are unique across rows.
    pub unique: bool,
    /// Whether audit entries hash the value instead of copying it.
    pub sensitive: bool,
    /// Value used when a create does not set the field.
    pub default: Option<Value>,
    /// The field's former name (`renamedFrom`): the migration renames its
    /// column instead of adding a new one.
    pub renamed_from: Option<String>,
}

impl Field {
    /// Why a value that is not null cannot be written into this field
    /// (its type, range, length or `enum`), each as "must be …" (none: it
    /// can): the rule the stores apply to every write, and the checker to
    /// literals.
    pub fn violations(&self, v: &Value) -> Vec<String> {
        let ok_type = match self.ty {
            FieldType::String => v.is_string(),
            FieldType::Integer => v.is_i64(),
            FieldType::Number => v.is_number(),
            FieldType::Boolean => v.is_boolean(),
            FieldType::Timestamp => v
                .as_str()
                .is_some_and(|s| crate::expr::value::parse_timestamp(s).is_some()),
            FieldType::Uuid | FieldType::Ref => v.as_str().is_some_and(crate::hash::is_uuid),
            FieldType::Json => true,
        };
        if self.ty == FieldType::Json && crate::input::too_deep(v) {
            return vec![format!(
                "must nest at most {} levels of arrays and objects",
                crate::input::MAX_DEPTH
            )];
        }
        if !ok_type {
            return vec![match self.ty {
                FieldType::Timestamp if v.is_string() => {
                    "must be an RFC 3339 timestamp in years 1 to 9999 (UTC)".to_owned()
                }
                ty => format!("must be {}", crate::diag::a(ty.name())),
            }];
        }
        let bound =
            |b: &Option<serde_json::Number>| b.as_ref().and_then(serde_json::Number::as_f64);
        let mut why = Vec::new();
        if let Some(n) = v.as_f64() {
            if let (Some(m), Some(min)) = (bound(&self.minimum), &self.minimum)
                && n < m
            {
                why.push(format!("must be at least {min}"));
            }
            if let (Some(m), Some(max)) = (bound(&self.maximum), &self.maximum)
                && n > m
            {
                why.push(format!("must be at most {max}"));
            }
        }
        if let (Some(max), Some(s)) = (self.max_length, v.as_str())
            && s.chars().count() as u64 > max
        {
            why.push(format!("must be at most {max} characters"));
        }
        if let Some(allowed) = &self.enum_values
            && !allowed.contains(v)
        {
            why.push("is not one of the allowed values".into());
        }
        if crate::input::has_nul(v) {
            // Postgres cannot store it, so no engine does.
            why.push("must not contain a NUL character".into());
        }
        why
    }
}

/// How many `ref` hops ownership through a reference may take.
pub const MAX_OWNER_HOPS: usize = 3;

/// Row ownership.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The field holding the owner's subject (`{"field": …}`), or, with
    /// `by_ref`, the `ref` field whose row's owner owns this row
    /// (`{"ref": …}`).
    pub field: String,
    /// Owned through the row `field` refers to.
    pub by_ref: bool,
    /// The claim of the caller's token that `field` holds (a tenant, such
    /// as `org_id`) instead of `sub` (format 0.2, `{"field", "claim"}`).
    pub claim: Option<String>,
    /// Roles that see and change every row.
    pub exempt: Vec<String>,
}

/// A status machine.
#[derive(Debug, Clone, Default)]
pub struct StatusMachine {
    /// The state of a new row.
    pub initial: String,
    /// Transitions by action name.
    pub transitions: NameMap<Transition>,
}

impl StatusMachine {
    /// Every state, in order of first mention.
    pub fn states(&self) -> Vec<&str> {
        let mut out: Vec<&str> = vec![self.initial.as_str()];
        for t in self.transitions.values() {
            for s in t.from.iter().chain(std::iter::once(&t.to)) {
                if !out.contains(&s.as_str()) {
                    out.push(s);
                }
            }
        }
        out
    }
}

/// One transition of a status machine.
#[derive(Debug, Clone)]
pub struct Transition {
    /// States it may start from.
    pub from: Vec<String>,
    /// The state it leads to.
    pub to: String,
}

/// An external service.
#[derive(Debug, Clone, Default)]
pub struct External {
    /// Its kind (`payment`, `email`, `http`, …).
    pub kind: String,
    /// Where it is (`https://api.stripe.com`), unless deployment says
    /// otherwise.
    pub base_url: Option<String>,
    /// How calls authenticate.
    pub auth: Option<ExternalAuth>,
    /// Operations by name.
    pub operations: NameMap<Operation>,
}

/// How calls to an external authenticate; each `secret` names an
/// environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalAuth {
    /// `Authorization: Bearer <secret>`.
    Bearer {
        /// The variable holding the token.
        secret: String,
    },
    /// `Authorization: Basic base64(<user>:<secret>)`.
    Basic {
        /// The user name (literal).
        user: String,
        /// The variable holding the password.
        secret: String,
    },
    /// `<name>: <secret>`.
    Header {
        /// The header.
        name: String,
        /// The variable holding its value.
        secret: String,
    },
}

impl ExternalAuth {
    /// The environment variable holding the secret.
    pub fn secret(&self) -> &str {
        match self {
            ExternalAuth::Bearer { secret }
            | ExternalAuth::Basic { secret, .. }
            | ExternalAuth::Header { secret, .. } => secret,
        }
    }
}

/// How an operation's arguments travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// A JSON body (`application/json`).
    #[default]
    Json,
    /// A form body (`application/x-www-form-urlencoded`), nested keys as
    /// Stripe reads them: `a[b]=1`, `a[0]=x`.
    Form,
}

/// The external kinds the engine knows.
pub const EXTERNAL_KINDS: &[&str] = &["payment", "email", "http", "sms", "queue"];

/// An operation of an external service.
#[derive(Debug, Clone)]
pub struct Operation {
    /// Whether calling it changes the world (default true).
    pub side_effects: bool,
    /// The operation this one undoes (`refund` compensates `charge`).
    pub compensates: Option<String>,
    /// The HTTP method (default `POST`).
    pub method: String,
    /// The path under the base URL, with `{arg}` segments taken out of the
    /// arguments (default `/<operation>`).
    pub path: Option<String>,
    /// How the arguments travel (default JSON).
    pub encoding: Encoding,
    /// Headers sent as they are written.
    pub headers: Vec<(String, String)>,
    /// The header carrying the call's idempotency key (default
    /// `Idempotency-Key`).
    pub idempotency_header: Option<String>,
}

impl Operation {
    /// The names of the `{arg}` segments of its path.
    pub fn path_args(&self) -> Vec<&str> {
        self.path
            .as_deref()
            .unwrap_or_default()
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect()
    }
}

/// A tool: one API endpoint.
#[derive(Debug, Clone)]
pub struct Tool {
    /// What it does, for people (the OpenAPI operation's description).
    pub description: Option<String>,
    /// How it is invoked.
    pub trigger: Trigger,
    /// Who may call it.
    pub auth: Auth,
    /// The idempotency key expression.
    pub idempotency_key: Option<Expression>,
    /// The concurrency strategy, when declared.
    pub concurrency: Option<Concurrency>,
    /// JSON Schema of the input.
    pub input: Value,
    /// The input schema as the checker reads it: its local `$ref`s
    /// followed and its `allOf`s merged ([`crate::json_schema::resolved`]).
    pub input_shape: Value,
    /// JSON Schema of the output.
    pub output: Value,
    /// Input properties hashed in the audit.
    pub sensitive: Vec<String>,
    /// Per-execution budgets.
    pub limits: ToolLimits,
    /// The flow graph.
    pub flow: Flow,
    /// JSON Pointer of the tool.
    pub path: String,
}

impl Tool {
    /// Whether its idempotency key comes from the `Idempotency-Key` header
    /// (the expression reads `request.idempotencyKey`): then the header is
    /// required, and a call without it is refused (400
    /// `idempotency_key_required`) instead of running unprotected.
    pub fn key_from_header(&self) -> bool {
        let Some(ast) = self.idempotency_key.as_ref().and_then(|k| k.ast.as_ref()) else {
            return false;
        };
        let mut found = false;
        ast.walk(|e| {
            if let crate::expr::ExprKind::Member(inner, field) = &e.kind
                && field == "idempotencyKey"
                && matches!(&inner.kind, crate::expr::ExprKind::Ident(r) if r == "request")
            {
                found = true;
            }
        });
        found
    }
}

/// How a tool is invoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// An HTTP route.
    Http {
        /// `GET`, `POST`, …
        method: String,
        /// `/orders/{id}`
        path: String,
    },
    /// An HTTP route with a verified signature.
    Webhook {
        /// Default `POST`.
        method: String,
        /// The route.
        path: String,
        /// Environment variable holding the secret.
        secret: Option<String>,
        /// Header carrying the signature (the scheme's by default).
        header: String,
        /// How the signature is made.
        scheme: WebhookScheme,
        /// `stripe`: how old a signature's timestamp may be (default 300).
        tolerance_seconds: u64,
    },
    /// A schedule.
    Cron {
        /// Five-field cron expression, as written.
        schedule: String,
        /// The same, read.
        times: crate::cron::Schedule,
        /// The IANA time zone it is read in (default `UTC`).
        timezone: String,
        /// The same, looked up when the spec loads.
        zone: jiff::tz::TimeZone,
    },
    /// A queue consumer.
    Queue {
        /// The queue's name.
        name: String,
    },
}

/// How a webhook's body is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookScheme {
    /// Hex HMAC-SHA256 of the body (optionally `sha256=`-prefixed), in
    /// `X-Signature` by default.
    HmacSha256,
    /// Stripe's `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">` in
    /// `Stripe-Signature`, refused once `t` is older than the tolerance.
    Stripe,
    /// GitHub's `sha256=<hex HMAC-SHA256 of the body>` in
    /// `X-Hub-Signature-256`.
    Github,
}

impl WebhookScheme {
    /// The name in a spec.
    pub fn name(self) -> &'static str {
        match self {
            WebhookScheme::HmacSha256 => "hmac-sha256",
            WebhookScheme::Stripe => "stripe",
            WebhookScheme::Github => "github",
        }
    }

    /// The header the signature comes in unless the trigger names one.
    pub fn default_header(self) -> &'static str {
        match self {
            WebhookScheme::HmacSha256 => "X-Signature",
            WebhookScheme::Stripe => "Stripe-Signature",
            WebhookScheme::Github => "X-Hub-Signature-256",
        }
    }
}

impl Trigger {
    /// The HTTP method and path, for triggers that have one.
    pub fn route(&self) -> Option<(&str, &str)> {
        match self {
            Trigger::Http { method, path } | Trigger::Webhook { method, path, .. } => {
                Some((method, path))
            }
            _ => None,
        }
    }
}

/// Who may call a tool.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Allowed roles; empty means any authenticated caller.
    pub roles: Vec<String>,
    /// No token required.
    pub public: bool,
    /// A condition that denies the call (403).
    pub deny_when: Option<Expression>,
}

/// Concurrency strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Reads only.
    None,
    /// Version checks on update.
    Optimistic,
    /// Row locks.
    Pessimistic,
}

/// Per-execution budgets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToolLimits {
    /// Rows read plus written.
    pub max_rows: Option<u64>,
    /// Rows read.
    pub max_rows_read: Option<u64>,
    /// Rows written.
    pub max_rows_written: Option<u64>,
    /// External calls.
    pub max_calls: Option<u64>,
    /// Wall time.
    pub timeout_ms: Option<u64>,
}

/// A flow: an entry and nodes, at the top of a tool or inside a
/// transaction.
#[derive(Debug, Clone, Default)]
pub struct Flow {
    /// The first node.
    pub entry: String,
    /// Nodes by id, in document order.
    pub nodes: NameMap<Node>,
    /// JSON Pointer of the flow object.
    pub path: String,
}

impl Flow {
    /// Finds a node anywhere in this flow, transaction bodies included.
    pub fn find(&self, id: &str) -> Option<&Node> {
        let mut stack = vec![self];
        while let Some(f) = stack.pop() {
            if let Some(n) = f.nodes.get(id) {
                return Some(n);
            }
            for n in f.nodes.values() {
                if let Some(body) = n.kind.body() {
                    stack.push(body);
                }
            }
        }
        None
    }

    /// Every node id, transaction bodies included, in document order
    /// (outer flows first).
    pub fn ids(&self) -> Vec<&str> {
        self.all().into_iter().map(|(id, _)| id).collect()
    }

    /// Every node with its id, transaction and `foreach` bodies included,
    /// in document order (outer flows first).
    pub fn all(&self) -> Vec<(&str, &Node)> {
        let mut out = Vec::new();
        let mut queue = vec![self];
        let mut i = 0;
        while let Some(f) = queue.get(i).copied() {
            i += 1;
            for (id, n) in &f.nodes {
                out.push((id.as_str(), n));
                if let Some(body) = n.kind.body() {
                    queue.push(body);
                }
            }
        }
        out
    }
}

/// A node of a flow.
#[derive(Debug, Clone)]
pub struct Node {
    /// What it does.
    pub kind: NodeKind,
    /// Where execution goes on success.
    pub next: Option<String>,
    /// Where execution goes when it fails.
    pub on_error: Option<String>,
    /// JSON Pointer of the node.
    pub path: String,
}

/// A `where` condition on one field.
#[derive(Debug, Clone)]
pub struct Filter {
    /// The column.
    pub field: String,
    /// The comparison.
    pub op: FilterOp,
    /// The value (or list, for `in` and `notIn`; a boolean for `isNull`).
    pub value: Template,
    /// JSON Pointer of the field's key in the `where`.
    pub path: String,
    /// The condition applies only when this is true (`"when"` in the
    /// field's object form); its operands are not evaluated otherwise.
    pub when: Option<Expression>,
}

/// A `where`: conditions on fields and their combinations. A node's
/// `where` object is the list of its members, all of which must hold.
#[derive(Debug, Clone)]
pub enum Where {
    /// One comparison on a field.
    Field(Box<Filter>),
    /// `and`: every member holds.
    All(Vec<Where>),
    /// `or`: at least one member holds.
    Any(Vec<Where>),
    /// `not`: the member does not hold.
    Not(Box<Where>),
}

impl Where {
    fn collect<'a>(&'a self, out: &mut Vec<&'a Filter>) {
        match self {
            Where::Field(f) => out.push(f),
            Where::All(list) | Where::Any(list) => {
                for w in list {
                    w.collect(out);
                }
            }
            Where::Not(w) => w.collect(out),
        }
    }

    /// Every field comparison of a list of members, at any depth.
    pub fn all_fields(list: &[Where]) -> Vec<&Filter> {
        let mut out = Vec::new();
        for w in list {
            w.collect(&mut out);
        }
        out
    }

    /// Whether this member restricts rows on every call, whatever its
    /// `when`s: a comparison without `when`, or a combinator with such a
    /// member.
    pub fn always_applies(&self) -> bool {
        match self {
            Where::Field(f) => f.when.is_none(),
            Where::All(list) | Where::Any(list) => list.iter().any(Where::always_applies),
            Where::Not(w) => w.always_applies(),
        }
    }

    /// The comparison, when this member is a plain one that always applies
    /// (no `when`): what a list of members certainly requires.
    pub fn required(&self) -> Option<&Filter> {
        match self {
            Where::Field(f) if f.when.is_none() => Some(f),
            _ => None,
        }
    }
}

/// What soft-deleting a row does to the live rows whose `ref` field names
/// it (`onDelete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDelete {
    /// The soft delete fails with 409 `still_referenced` (the default).
    #[default]
    Restrict,
    /// They are soft-deleted too (and theirs, in turn), at most
    /// `limits.maxRowsPerWrite` of them.
    Cascade,
    /// Their field is set to null (it must be `nullable`).
    SetNull,
}

impl OnDelete {
    /// Every choice with its name in the format.
    pub const ALL: &[(&'static str, OnDelete)] = &[
        ("restrict", OnDelete::Restrict),
        ("cascade", OnDelete::Cascade),
        ("setNull", OnDelete::SetNull),
    ];
}

/// One measure of an `aggregate` node.
#[derive(Debug, Clone)]
pub struct Measure {
    /// What it computes.
    pub kind: MeasureKind,
    /// The field it reads (`None`: `count` of `"*"`, every row).
    pub field: Option<String>,
    /// JSON Pointer of the measure.
    pub path: String,
}

/// What a measure computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureKind {
    /// Rows (`"*"`), or the non-null values of a field.
    Count,
    /// The sum of an integer field (0 over no row).
    Sum,
    /// The least value (null over no value).
    Min,
    /// The greatest value (null over no value).
    Max,
    /// The mean of an integer field, a number (null over no value).
    Avg,
}

impl MeasureKind {
    /// Every measure with its name in the format.
    pub const ALL: &[(&'static str, MeasureKind)] = &[
        ("count", MeasureKind::Count),
        ("sum", MeasureKind::Sum),
        ("min", MeasureKind::Min),
        ("max", MeasureKind::Max),
        ("avg", MeasureKind::Avg),
    ];

    /// Its name in the format.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("count", |(n, _)| n)
    }
}

/// Comparison operators of `where`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FilterOp {
    /// `eq`
    #[serde(rename = "eq")]
    Eq,
    /// `ne`
    #[serde(rename = "ne")]
    Ne,
    /// `lt`
    #[serde(rename = "lt")]
    Lt,
    /// `lte`
    #[serde(rename = "lte")]
    Lte,
    /// `gt`
    #[serde(rename = "gt")]
    Gt,
    /// `gte`
    #[serde(rename = "gte")]
    Gte,
    /// `in`: equal to one of a list's values.
    #[serde(rename = "in")]
    In,
    /// `notIn`: equal to none of a list's values.
    #[serde(rename = "notIn")]
    NotIn,
    /// `isNull`: the value is null (`true`) or not (`false`).
    #[serde(rename = "isNull")]
    IsNull,
    /// `startsWith`: a string beginning with the value.
    #[serde(rename = "startsWith")]
    StartsWith,
    /// `contains`: a string containing the value.
    #[serde(rename = "contains")]
    Contains,
    /// `icontains`: `contains`, ignoring the case of ASCII letters.
    #[serde(rename = "icontains")]
    IContains,
}

impl FilterOp {
    /// Every operator with its name.
    pub const ALL: &[(&'static str, FilterOp)] = &[
        ("eq", FilterOp::Eq),
        ("ne", FilterOp::Ne),
        ("lt", FilterOp::Lt),
        ("lte", FilterOp::Lte),
        ("gt", FilterOp::Gt),
        ("gte", FilterOp::Gte),
        ("in", FilterOp::In),
        ("notIn", FilterOp::NotIn),
        ("isNull", FilterOp::IsNull),
        ("startsWith", FilterOp::StartsWith),
        ("contains", FilterOp::Contains),
        ("icontains", FilterOp::IContains),
    ];

    /// Its name in the format.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, op)| *op == self)
            .map_or("eq", |(n, _)| n)
    }

    /// Compares text (`startsWith`, `contains`, `icontains`).
    pub fn on_text(self) -> bool {
        matches!(
            self,
            FilterOp::StartsWith | FilterOp::Contains | FilterOp::IContains
        )
    }
}

/// One `orderBy` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The column.
    pub field: String,
    /// Descending?
    pub desc: bool,
}

/// Related rows a read embeds in every row, under `name`.
#[derive(Debug, Clone)]
pub struct Include {
    /// The key of the embedded row or rows (not a field name).
    pub name: String,
    /// Which rows.
    pub link: IncludeLink,
    /// `from` only: conditions the included rows meet.
    pub filters: Vec<Where>,
    /// `from` only: their order (then `id`).
    pub order_by: Vec<Order>,
    /// `from` only: at most this many rows per embedding row.
    pub limit: Option<Limit>,
    /// Rows embedded in each included row in turn.
    pub include: Vec<Include>,
    /// Its JSON pointer.
    pub path: String,
}

impl Include {
    /// The included entity, for an include of a read of `e` (`None` when
    /// a `ref` names no `ref` field of it: a spec error).
    pub fn target<'a>(&'a self, e: &'a Entity) -> Option<&'a str> {
        match &self.link {
            IncludeLink::Ref(field) => e.fields.get(field).and_then(|f| f.entity.as_deref()),
            IncludeLink::From { entity, .. } => Some(entity),
        }
    }
}

/// How an include's rows relate to the row they are embedded in.
#[derive(Debug, Clone)]
pub enum IncludeLink {
    /// `{"ref": field}`: the row a `ref` field of this entity names.
    Ref(String),
    /// `{"from": entity, "by": field}`: the rows of `entity` whose `ref`
    /// field `by` names this row.
    From {
        /// The included entity.
        entity: String,
        /// Its `ref` field naming this row.
        by: String,
    },
}

/// A row limit: a number, or an expression evaluated at run time.
#[derive(Debug, Clone)]
pub enum Limit {
    /// A fixed number.
    Fixed(u64),
    /// An expression.
    Expr(Expression),
}

impl Limit {
    /// The fixed number, if it is one.
    pub fn fixed(&self) -> Option<u64> {
        match self {
            Limit::Fixed(n) => Some(*n),
            Limit::Expr(_) => None,
        }
    }
}

/// Retry policy of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all.
    pub max: u32,
    /// How waits grow.
    pub backoff: Backoff,
    /// First wait.
    pub initial_ms: Option<u64>,
}

/// Backoff shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// Doubling waits, with jitter.
    Exponential,
    /// Equal waits.
    Fixed,
    /// No wait.
    None,
}

/// Transaction isolation levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Read committed (the default).
    #[default]
    ReadCommitted,
    /// Repeatable read.
    RepeatableRead,
    /// Serializable.
    Serializable,
}

/// The rows a `transition` or `soft_delete` acts on.
#[derive(Debug, Clone)]
pub enum Target {
    /// One row, by id (`id`).
    Id(Expression),
    /// Every matching row, up to `limit` (`where`, `orderBy`, `limit`).
    Where {
        /// Conditions, all of which must hold.
        filters: Vec<Where>,
        /// Which rows a `limit` keeps (default: `id` ascending).
        order_by: Vec<Order>,
        /// At most this many (eligible) rows.
        limit: Option<Limit>,
    },
}

/// A `switch` case.
#[derive(Debug, Clone)]
pub struct Case {
    /// The condition.
    pub when: Expression,
    /// Where to go.
    pub next: String,
}

/// What a node does.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// Select rows.
    Read {
        /// The entity.
        entity: String,
        /// Conditions, all of which must hold.
        filters: Vec<Where>,
        /// Sort keys.
        order_by: Vec<Order>,
        /// At most this many rows.
        limit: Option<Limit>,
        /// Cursor: with `page`, the `next` of the previous page; without,
        /// the id of the last row seen.
        after: Option<Expression>,
        /// Exactly one row, else not found.
        one: bool,
        /// FOR UPDATE.
        lock: bool,
        /// Binds `{"rows", "next"}` (and `"total"` with `count`) instead
        /// of the list of rows.
        page: bool,
        /// With `page`: `"total"`, the number of rows the `where` matches.
        count: bool,
        /// Related rows embedded in every row read, in key order.
        include: Vec<Include>,
    },
    /// Counts, sums, minimums, maximums and averages over rows, by group.
    Aggregate {
        /// The entity.
        entity: String,
        /// Conditions, all of which must hold.
        filters: Vec<Where>,
        /// The fields that make a group (none: one object).
        group_by: Vec<String>,
        /// The measures, by name.
        measures: NameMap<Measure>,
        /// The order of the groups (group fields or measure names).
        order_by: Vec<Order>,
        /// At most this many groups.
        limit: Option<Limit>,
        /// `scope: "all"`: across owners.
        all: bool,
    },
    /// Insert one row, or one per element of a list (`each`).
    Create {
        /// The entity.
        entity: String,
        /// Field values.
        values: NameMap<Template>,
        /// `each` (the list) and `as` (the element's name in `values`).
        each: Option<(Expression, String)>,
    },
    /// Change matching rows.
    Update {
        /// The entity.
        entity: String,
        /// Conditions; `None` when absent.
        filters: Option<Vec<Where>>,
        /// At most this many rows.
        limit: Option<Limit>,
        /// Exactly one row, else not found.
        one: bool,
        /// New values (may use `row`).
        set: NameMap<Template>,
        /// Which rows a `limit` keeps (default: `id` ascending).
        order_by: Vec<Order>,
        /// Whether `set` reads `row` (each row then gets values of its
        /// own; else every row the same changes).
        reads_row: bool,
    },
    /// Move a row (or every matching row) along its status machine.
    Transition {
        /// The entity.
        entity: String,
        /// The row, or the rows.
        target: Target,
        /// The transition's action.
        action: String,
    },
    /// Set `deleted_at` on a row (or every matching row).
    SoftDelete {
        /// The entity.
        entity: String,
        /// The row, or the rows.
        target: Target,
    },
    /// Hard delete (always Red).
    Delete {
        /// The entity.
        entity: String,
        /// The row's id.
        id: Expression,
    },
    /// Raw SQL (always Red, never executed).
    Sql {
        /// The statement.
        statement: String,
    },
    /// Compute named values.
    Let {
        /// The values.
        values: NameMap<Template>,
    },
    /// Fail unless a condition holds.
    Assert {
        /// The condition.
        that: Expression,
        /// HTTP status of the failure.
        status: u16,
        /// Error code.
        code: String,
        /// Error message.
        message: Option<Expression>,
    },
    /// Two-way branch.
    If {
        /// The condition.
        cond: Expression,
        /// Where to go when true.
        then: String,
        /// Where to go when false.
        otherwise: String,
    },
    /// Many-way branch.
    Switch {
        /// Cases, first match wins.
        cases: Vec<Case>,
        /// Where to go when no case matches.
        default: Option<String>,
    },
    /// Call an external operation.
    Call {
        /// The external.
        external: String,
        /// Its operation.
        operation: String,
        /// Arguments.
        args: NameMap<Template>,
        /// Per-attempt timeout.
        timeout_ms: Option<u64>,
        /// Retry policy.
        retry: Option<Retry>,
        /// The node that undoes this call.
        compensate: Option<String>,
        /// The key sent to the service.
        idempotency_key: Option<Expression>,
    },
    /// Record a message to an external operation with the transaction's
    /// writes (the outbox): the host delivers it after the commit.
    Emit {
        /// The external.
        external: String,
        /// Its operation.
        operation: String,
        /// Arguments.
        args: NameMap<Template>,
        /// Per-attempt timeout of each delivery.
        timeout_ms: Option<u64>,
        /// The key sent to the service (default: derived from the request
        /// id, the node and the run of the node).
        idempotency_key: Option<Expression>,
    },
    /// A nested flow in one database transaction.
    Transaction {
        /// The body.
        body: Flow,
        /// Isolation level.
        isolation: Isolation,
    },
    /// Run a body once per element of a list, in order.
    Foreach {
        /// The list.
        items: Expression,
        /// The element's name inside the body and `collect` (the index is
        /// `<as>_index`).
        as_name: String,
        /// The longest list accepted (longer: 422 `too_many_items`).
        max_items: u64,
        /// The body.
        body: Flow,
        /// What each element contributes to the bound list (default: the
        /// element).
        collect: Option<Template>,
    },
    /// End with the output value.
    Return {
        /// The value.
        value: Option<Template>,
        /// HTTP status (default 200).
        status: u16,
    },
    /// End with a typed error.
    Fail {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// Message.
        message: Option<Expression>,
    },
    /// A node that did not decode (errors were reported).
    Invalid,
}

impl NodeKind {
    /// The `type` name in the format.
    pub fn type_name(&self) -> &'static str {
        match self {
            NodeKind::Read { .. } => "read",
            NodeKind::Aggregate { .. } => "aggregate",
            NodeKind::Create { .. } => "create",
            NodeKind::Update { .. } => "update",
            NodeKind::Transition { .. } => "transition",
            NodeKind::SoftDelete { .. } => "soft_delete",
            NodeKind::Delete { .. } => "delete",
            NodeKind::Sql { .. } => "sql",
            NodeKind::Let { .. } => "let",
            NodeKind::Assert { .. } => "assert",
            NodeKind::If { .. } => "if",
            NodeKind::Switch { .. } => "switch",
            NodeKind::Call { .. } => "call",
            NodeKind::Emit { .. } => "emit",
            NodeKind::Transaction { .. } => "transaction",
            NodeKind::Foreach { .. } => "foreach",
            NodeKind::Return { .. } => "return",
            NodeKind::Fail { .. } => "fail",
            NodeKind::Invalid => "invalid",
        }
    }

    /// Whether the node writes to the database.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            NodeKind::Create { .. }
                | NodeKind::Update { .. }
                | NodeKind::Transition { .. }
                | NodeKind::SoftDelete { .. }
                | NodeKind::Delete { .. }
                | NodeKind::Sql { .. }
                | NodeKind::Emit { .. }
        )
    }

    /// The nested flow of a `transaction` or a `foreach`.
    pub fn body(&self) -> Option<&Flow> {
        match self {
            NodeKind::Transaction { body, .. } | NodeKind::Foreach { body, .. } => Some(body),
            _ => None,
        }
    }

    /// Whether the node ends the flow.
    pub fn is_terminal(&self) -> bool {
        matches!(self, NodeKind::Return { .. } | NodeKind::Fail { .. })
    }

    /// The entity the node works on.
    pub fn entity(&self) -> Option<&str> {
        match self {
            NodeKind::Read { entity, .. }
            | NodeKind::Aggregate { entity, .. }
            | NodeKind::Create { entity, .. }
            | NodeKind::Update { entity, .. }
            | NodeKind::Transition { entity, .. }
            | NodeKind::SoftDelete { entity, .. }
            | NodeKind::Delete { entity, .. } => Some(entity),
            _ => None,
        }
    }
}

impl Node {
    /// Every successor edge with its kind, in a fixed order.
    pub fn edges(&self) -> Vec<(EdgeKind, &str)> {
        let mut out = Vec::new();
        if let Some(n) = &self.next {
            out.push((EdgeKind::Next, n.as_str()));
        }
        match &self.kind {
            NodeKind::If {
                then, otherwise, ..
            } => {
                out.push((EdgeKind::Then, then.as_str()));
                out.push((EdgeKind::Else, otherwise.as_str()));
            }
            NodeKind::Switch { cases, default } => {
                for (i, c) in cases.iter().enumerate() {
                    out.push((EdgeKind::Case(i), c.next.as_str()));
                }
                if let Some(d) = default {
                    out.push((EdgeKind::Default, d.as_str()));
                }
            }
            _ => {}
        }
        if let Some(e) = &self.on_error {
            out.push((EdgeKind::OnError, e.as_str()));
        }
        out
    }
}

/// The kinds of edges between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// `next`
    Next,
    /// `onError`
    OnError,
    /// `then` of an `if`
    Then,
    /// `else` of an `if`
    Else,
    /// `cases[i].next` of a `switch`
    Case(usize),
    /// `default` of a `switch`
    Default,
}

impl EdgeKind {
    /// The JSON Pointer suffix of the edge within its node.
    pub fn pointer_suffix(self) -> String {
        match self {
            EdgeKind::Next => "/next".to_string(),
            EdgeKind::OnError => "/onError".to_string(),
            EdgeKind::Then => "/then".to_string(),
            EdgeKind::Else => "/else".to_string(),
            EdgeKind::Case(i) => format!("/cases/{i}/next"),
            EdgeKind::Default => "/default".to_string(),
        }
    }

    /// The key as written in the format.
    pub fn key(self) -> &'static str {
        match self {
            EdgeKind::Next => "next",
            EdgeKind::OnError => "onError",
            EdgeKind::Then => "then",
            EdgeKind::Else => "else",
            EdgeKind::Case(_) => "cases",
            EdgeKind::Default => "default",
        }
    }
}

/// A policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// What it checks.
    pub kind: PolicyKind,
    /// What happens when it triggers.
    pub action: PolicyAction,
    /// The tools it applies to; `None` means every tool.
    pub tools: Option<Vec<String>>,
    /// The message shown when it triggers.
    pub message: Option<String>,
    /// JSON Pointer of the policy.
    pub path: String,
}

/// Policy types.
#[derive(Debug, Clone)]
pub enum PolicyKind {
    /// Rows per execution.
    RowLimit {
        /// The limit.
        max_rows: u64,
    },
    /// An amount against a budget.
    BudgetCheck {
        /// The amount.
        amount: Expression,
        /// The budget.
        max_amount: Limit,
    },
    /// Requests per minute per subject.
    RateLimit {
        /// The limit.
        max_requests_per_minute: u64,
    },
    /// A custom condition.
    Custom {
        /// When it triggers.
        when: Expression,
    },
}

/// Policy actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyAction {
    /// Reject the call.
    Block,
    /// Run, and mark the audit entry.
    Warn,
    /// Run, mark the audit entry, emit an alert.
    Escalate,
}

/// An acknowledged Yellow signal.
#[derive(Debug, Clone)]
pub struct Acknowledgment {
    /// The tool.
    pub tool: String,
    /// The signal's code.
    pub signal: String,
    /// The node, when the acknowledgment is for one node only.
    pub node: Option<String>,
    /// Why it is acceptable.
    pub reason: String,
    /// Who decided.
    pub by: String,
    /// JSON Pointer of the acknowledgment.
    pub path: String,
}

/// The table of an entity: its name in snake case (`OrderItem` →
/// `order_item`).
pub fn table_name(entity: &str) -> String {
    let mut out = String::with_capacity(entity.len() + 4);
    let mut prev_lower = false;
    for c in entity.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

/// An index sinew keeps on an entity's table: a unique field's, a `ref`
/// field's, the owner field's, or a declared one. Unique ones hold among
/// live rows only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPlan {
    /// Its name.
    pub name: String,
    /// Its columns, leading one first.
    pub columns: Vec<String>,
    /// Unique among live rows (`WHERE "deleted_at" IS NULL`).
    pub unique: bool,
}

/// Every index sinew keeps on an entity's table, in order.
pub fn wanted_indexes(table: &str, e: &Entity) -> Vec<IndexPlan> {
    let mut out = Vec::new();
    for (fname, f) in &e.fields {
        if f.unique {
            out.push(IndexPlan {
                name: format!("{table}_{fname}_key"),
                columns: vec![fname.clone()],
                unique: true,
            });
        } else if f.ty == FieldType::Ref || e.owner.as_ref().is_some_and(|o| o.field == *fname) {
            out.push(IndexPlan {
                name: format!("{table}_{fname}_idx"),
                columns: vec![fname.clone()],
                unique: false,
            });
        }
    }
    for ix in &e.indexes {
        out.push(IndexPlan {
            name: index_name(table, &ix.fields, ix.unique),
            columns: ix.fields.clone(),
            unique: ix.unique,
        });
    }
    out
}

/// The name of a declared index: `{table}_{fields}_key` (unique) or
/// `_idx`, shortened with a hash of the whole name where Postgres would cut
/// it (63 bytes), so two indexes never share a name.
pub fn index_name(table: &str, fields: &[String], unique: bool) -> String {
    fitted(table, fields, if unique { "key" } else { "idx" })
}

/// `{table}_{fields}_{suffix}`, shortened with a hash of the whole name
/// where Postgres would cut it.
pub(crate) fn fitted(table: &str, fields: &[String], suffix: &str) -> String {
    let name = format!("{table}_{}_{suffix}", fields.join("_"));
    if name.len() <= 63 {
        return name;
    }
    let hash = &crate::hash::sha256_hex(name.as_bytes())[..8];
    let mut cut = 50;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{hash}_{suffix}", &name[..cut])
}
