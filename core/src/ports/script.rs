//! A scripted [`External`]: answers per `"service.operation"` given in
//! advance (scenario files, `sinew run`), a default success otherwise.
//!
//! Scenario form (see `tests/scenarios/README.md`):
//!
//! ```json
//! {"payments.charge": [{"ok": {"id": "ch_1"}}, {"declined": {"reason": "card_declined"}}],
//!  "payments.refund": [{"failed": "timeout"}]}
//! ```
//!
//! Answers are consumed in order. `ok` is one attempt answered with HTTP 200,
//! `declined` one attempt answered with 402, `failed` means every attempt
//! failed: `max_attempts` attempts (at least one) with the message and no
//! status. When an operation's answers are exhausted (or absent) a call
//! succeeds with `{"id": "<service>_<operation>_<n>", "status":
//! "succeeded"}`, where `n` is the number of this call to the operation,
//! counting every call (scripted ones included) from 1.
//!
//! State form (what [`ScriptedExternal::to_json`] writes, so `sinew run
//! --state` can continue where it stopped): `{"script": {scenario form},
//! "counters": {"service.operation": calls so far}}`. [`ScriptedExternal::from_json`]
//! reads both (a scenario key always contains a dot, so `script` and
//! `counters` cannot be one).

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value};

use super::{Attempt, CallOutcome, CallRequest, CallResult, External};

/// One scripted answer.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Ok(Value),
    Declined(Value),
    Failed(String),
}

impl Answer {
    fn to_json(&self) -> Value {
        let (key, value) = match self {
            Answer::Ok(v) => ("ok", v.clone()),
            Answer::Declined(v) => ("declined", v.clone()),
            Answer::Failed(m) => ("failed", Value::from(m.clone())),
        };
        let mut m = Map::new();
        m.insert(key.into(), value);
        Value::Object(m)
    }

    fn from_json(value: &Value, at: &str) -> Result<Answer, String> {
        let Value::Object(m) = value else {
            return Err(format!(
                "`{at}` must be an object `{{\"ok\": …}}`, `{{\"declined\": …}}` or `{{\"failed\": \"message\"}}`"
            ));
        };
        let mut entries = m.iter();
        let (Some((key, v)), None) = (entries.next(), entries.next()) else {
            return Err(format!(
                "`{at}` must have exactly one key: `ok`, `declined` or `failed`"
            ));
        };
        match key.as_str() {
            "ok" => Ok(Answer::Ok(v.clone())),
            "declined" => Ok(Answer::Declined(v.clone())),
            "failed" => match v.as_str() {
                Some(message) => Ok(Answer::Failed(message.to_owned())),
                None => Err(format!("`{at}.failed` must be a message (a string)")),
            },
            other => Err(format!(
                "`{at}`: unknown answer `{other}` (expected `ok`, `declined` or `failed`)"
            )),
        }
    }
}

/// An [`External`] that plays a script and records every request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScriptedExternal {
    /// "service.operation" → answers still to give.
    script: BTreeMap<String, VecDeque<Answer>>,
    /// "service.operation" → calls so far.
    counters: BTreeMap<String, u64>,
    /// Every request, in order.
    calls: Vec<CallRequest>,
}

impl ScriptedExternal {
    /// No script: every call succeeds with the default answer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an answer for `service_operation` (`"service.operation"`).
    pub fn push(&mut self, service_operation: &str, outcome: CallOutcome) {
        let answer = match outcome {
            CallOutcome::Ok { value } => Answer::Ok(value),
            CallOutcome::Declined { value } => Answer::Declined(value),
            CallOutcome::Failed { message } => Answer::Failed(message),
        };
        self.script
            .entry(service_operation.to_owned())
            .or_default()
            .push_back(answer);
    }

    /// Every request received, in order.
    pub fn calls(&self) -> &[CallRequest] {
        &self.calls
    }

    /// How many scripted answers remain for `service_operation`.
    pub fn remaining(&self, service_operation: &str) -> usize {
        self.script.get(service_operation).map_or(0, VecDeque::len)
    }

    /// Reads a script in scenario form or in state form (see the module
    /// documentation).
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let Value::Object(top) = value else {
            return Err(
                "externals must be an object of \"service.operation\" → array of answers"
                    .to_owned(),
            );
        };
        if top.contains_key("script") || top.contains_key("counters") {
            let mut out = ScriptedExternal::new();
            for (key, v) in top {
                match key.as_str() {
                    "script" => {
                        let Value::Object(script) = v else {
                            return Err("`script` must be an object".to_owned());
                        };
                        out.load_script(script, "script.")?;
                    }
                    "counters" => {
                        let Value::Object(counters) = v else {
                            return Err("`counters` must be an object".to_owned());
                        };
                        for (op, n) in counters {
                            check_operation(op, "counters.")?;
                            let Some(n) = n.as_u64() else {
                                return Err(format!(
                                    "`counters.{op}` must be a non-negative integer"
                                ));
                            };
                            out.counters.insert(op.clone(), n);
                        }
                    }
                    other => {
                        return Err(format!(
                            "unknown key `{other}` in the externals state (expected `script`, `counters`)"
                        ));
                    }
                }
            }
            Ok(out)
        } else {
            let mut out = ScriptedExternal::new();
            out.load_script(top, "")?;
            Ok(out)
        }
    }

    fn load_script(&mut self, script: &Map<String, Value>, prefix: &str) -> Result<(), String> {
        for (op, answers) in script {
            check_operation(op, prefix)?;
            let Value::Array(answers) = answers else {
                return Err(format!("`{prefix}{op}` must be an array of answers"));
            };
            let mut queue = VecDeque::new();
            for (i, a) in answers.iter().enumerate() {
                queue.push_back(Answer::from_json(a, &format!("{prefix}{op}[{i}]"))?);
            }
            if !queue.is_empty() {
                self.script.insert(op.clone(), queue);
            }
        }
        Ok(())
    }

    /// The remaining script and the call counters (state form). The recorded
    /// calls are not part of it.
    pub fn to_json(&self) -> Value {
        let mut script = Map::new();
        for (op, answers) in &self.script {
            script.insert(
                op.clone(),
                Value::Array(answers.iter().map(Answer::to_json).collect()),
            );
        }
        let mut counters = Map::new();
        for (op, n) in &self.counters {
            counters.insert(op.clone(), Value::from(*n));
        }
        let mut out = Map::new();
        out.insert("script".into(), Value::Object(script));
        out.insert("counters".into(), Value::Object(counters));
        Value::Object(out)
    }
}

fn check_operation(op: &str, prefix: &str) -> Result<(), String> {
    match op.split_once('.') {
        Some((service, operation)) if !service.is_empty() && !operation.is_empty() => Ok(()),
        _ => Err(format!(
            "`{prefix}{op}`: expected a \"service.operation\" key"
        )),
    }
}

impl External for ScriptedExternal {
    fn call(&mut self, request: &CallRequest) -> CallResult {
        self.calls.push(request.clone());
        let key = format!("{}.{}", request.service, request.operation);
        let counter = self.counters.entry(key.clone()).or_insert(0);
        *counter = counter.saturating_add(1);
        let n = *counter;
        let answer = match self.script.get_mut(&key) {
            Some(queue) => {
                let answer = queue.pop_front();
                if queue.is_empty() {
                    self.script.remove(&key);
                }
                answer
            }
            None => None,
        };
        let answered = |status: u16| Attempt {
            status: Some(status),
            error: None,
            duration_ms: 0,
        };
        match answer {
            Some(Answer::Ok(value)) => CallResult {
                outcome: CallOutcome::Ok { value },
                attempts: vec![answered(200)],
            },
            Some(Answer::Declined(value)) => CallResult {
                outcome: CallOutcome::Declined { value },
                attempts: vec![answered(402)],
            },
            Some(Answer::Failed(message)) => {
                let attempt = Attempt {
                    status: None,
                    error: Some(message.clone()),
                    duration_ms: 0,
                };
                let count = usize::try_from(request.max_attempts.max(1)).unwrap_or(1);
                CallResult {
                    outcome: CallOutcome::Failed { message },
                    attempts: vec![attempt; count],
                }
            }
            None => {
                let mut value = Map::new();
                value.insert(
                    "id".into(),
                    Value::from(format!("{}_{}_{n}", request.service, request.operation)),
                );
                value.insert("status".into(), Value::from("succeeded"));
                CallResult {
                    outcome: CallOutcome::Ok {
                        value: Value::Object(value),
                    },
                    attempts: vec![answered(200)],
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Backoff;
    use serde_json::json;

    fn request(service: &str, operation: &str, max_attempts: u32) -> CallRequest {
        CallRequest {
            service: service.into(),
            operation: operation.into(),
            args: json!({"amount": 100}),
            timeout_ms: Some(1000),
            max_attempts,
            backoff: Backoff::None,
            initial_backoff_ms: 0,
            idempotency_key: Some("k".into()),
        }
    }

    fn scenario() -> ScriptedExternal {
        ScriptedExternal::from_json(&json!({
            "payments.charge": [{"ok": {"id": "ch_1", "status": "succeeded"}}, {"declined": {"reason": "card_declined"}}],
            "payments.refund": [{"failed": "timeout"}]
        }))
        .unwrap()
    }

    #[test]
    fn scripted_answers_in_order_then_default() {
        let mut ext = scenario();
        let r = ext.call(&request("payments", "charge", 3));
        assert_eq!(
            r.outcome,
            CallOutcome::Ok {
                value: json!({"id": "ch_1", "status": "succeeded"})
            }
        );
        assert_eq!(
            r.attempts,
            vec![Attempt {
                status: Some(200),
                error: None,
                duration_ms: 0
            }]
        );
        let r = ext.call(&request("payments", "charge", 3));
        assert_eq!(
            r.outcome,
            CallOutcome::Declined {
                value: json!({"reason": "card_declined"})
            }
        );
        assert_eq!(r.attempts.len(), 1);
        assert_eq!(r.attempts[0].status, Some(402));
        // Exhausted: the default answer, numbered by call.
        let r = ext.call(&request("payments", "charge", 3));
        assert_eq!(
            r.outcome,
            CallOutcome::Ok {
                value: json!({"id": "payments_charge_3", "status": "succeeded"})
            }
        );
        assert_eq!(r.attempts[0].status, Some(200));
    }

    #[test]
    fn failed_records_every_attempt() {
        let mut ext = scenario();
        let r = ext.call(&request("payments", "refund", 4));
        assert_eq!(
            r.outcome,
            CallOutcome::Failed {
                message: "timeout".into()
            }
        );
        assert_eq!(r.attempts.len(), 4);
        for a in &r.attempts {
            assert_eq!(
                a,
                &Attempt {
                    status: None,
                    error: Some("timeout".into()),
                    duration_ms: 0
                }
            );
        }
        // max_attempts 0 still records one attempt.
        let mut ext = ScriptedExternal::new();
        ext.push(
            "mail.send",
            CallOutcome::Failed {
                message: "down".into(),
            },
        );
        let r = ext.call(&request("mail", "send", 0));
        assert_eq!(r.attempts.len(), 1);
    }

    #[test]
    fn default_counts_per_operation() {
        let mut ext = ScriptedExternal::new();
        let id = |r: CallResult| match r.outcome {
            CallOutcome::Ok { value } => value["id"].as_str().unwrap().to_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(id(ext.call(&request("a", "x", 1))), "a_x_1");
        assert_eq!(id(ext.call(&request("a", "x", 1))), "a_x_2");
        assert_eq!(id(ext.call(&request("a", "y", 1))), "a_y_1");
        assert_eq!(id(ext.call(&request("b", "x", 1))), "b_x_1");
        assert_eq!(id(ext.call(&request("a", "x", 1))), "a_x_3");
    }

    #[test]
    fn records_calls() {
        let mut ext = scenario();
        ext.call(&request("payments", "charge", 1));
        ext.call(&request("mail", "send", 2));
        let calls = ext.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].service, "payments");
        assert_eq!(calls[1].operation, "send");
        assert_eq!(calls[1].max_attempts, 2);
        assert_eq!(calls[1].args, json!({"amount": 100}));
    }

    #[test]
    fn state_round_trip() {
        let mut ext = scenario();
        ext.call(&request("payments", "charge", 1));
        ext.call(&request("other", "op", 1));
        let state = ext.to_json();
        assert_eq!(
            state,
            json!({
                "script": {
                    "payments.charge": [{"declined": {"reason": "card_declined"}}],
                    "payments.refund": [{"failed": "timeout"}]
                },
                "counters": {"other.op": 1, "payments.charge": 1}
            })
        );
        let mut back = ScriptedExternal::from_json(&state).unwrap();
        assert_eq!(back.to_json(), state);
        assert_eq!(back.remaining("payments.charge"), 1);
        // It continues where it stopped.
        let r = back.call(&request("payments", "charge", 1));
        assert!(matches!(r.outcome, CallOutcome::Declined { .. }));
        let r = back.call(&request("payments", "charge", 1));
        assert_eq!(
            r.outcome,
            CallOutcome::Ok {
                value: json!({"id": "payments_charge_3", "status": "succeeded"})
            }
        );
        assert_eq!(back.remaining("payments.charge"), 0);
        // Empty state.
        let empty = ScriptedExternal::from_json(&json!({})).unwrap();
        assert_eq!(empty.to_json(), json!({"script": {}, "counters": {}}));
        assert_eq!(
            ScriptedExternal::from_json(&empty.to_json()).unwrap(),
            empty
        );
    }

    #[test]
    fn push_matches_from_json() {
        let mut pushed = ScriptedExternal::new();
        pushed.push(
            "payments.charge",
            CallOutcome::Ok {
                value: json!({"id": "ch_1", "status": "succeeded"}),
            },
        );
        pushed.push(
            "payments.charge",
            CallOutcome::Declined {
                value: json!({"reason": "card_declined"}),
            },
        );
        pushed.push(
            "payments.refund",
            CallOutcome::Failed {
                message: "timeout".into(),
            },
        );
        assert_eq!(pushed.to_json(), scenario().to_json());
    }

    #[test]
    fn malformed_scripts() {
        let err = |v: Value| ScriptedExternal::from_json(&v).unwrap_err();
        assert!(err(json!([])).contains("must be an object"));
        assert!(err(json!({"charge": []})).contains("service.operation"));
        assert!(err(json!({".charge": []})).contains("service.operation"));
        assert!(err(json!({"p.c": {}})).contains("`p.c` must be an array"));
        assert!(err(json!({"p.c": [1]})).contains("`p.c[0]` must be an object"));
        assert!(err(json!({"p.c": [{}]})).contains("exactly one key"));
        assert!(err(json!({"p.c": [{"ok": 1, "failed": "x"}]})).contains("exactly one key"));
        assert!(err(json!({"p.c": [{"maybe": 1}]})).contains("unknown answer `maybe`"));
        assert!(err(json!({"p.c": [{"ok": 1}, {"failed": 3}]})).contains("`p.c[1].failed`"));
        assert!(err(json!({"script": [], "counters": {}})).contains("`script` must be an object"));
        assert!(err(json!({"counters": {"p.c": -1}})).contains("`counters.p.c`"));
        assert!(err(json!({"counters": {}, "extra": 1})).contains("unknown key `extra`"));
        assert!(err(json!({"script": {"p.c": [{"nope": 1}]}})).contains("`script.p.c[0]`"));
    }
}
