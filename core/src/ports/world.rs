//! The in-memory world: a [`MemoryStorage`] and a [`ScriptedExternal`],
//! read from and written to one JSON object. It is the state file of `sinew
//! run --state` and what the `memory` interface of the in-memory component
//! (`core/world`) resets and reads back.
//!
//! The form is [`MemoryStorage::to_json`]'s with one more member,
//! `externals`, in [`ScriptedExternal`]'s script or state form:
//!
//! ```
//! use serde_json::json;
//! use sinew_core::ports::world::World;
//!
//! let world = World::from_json(&json!({
//!     "rows": {"Note": [{"id": "00000000-0000-4000-8000-000000000001", "text": "hi"}]},
//!     "externals": {"mail.send": [{"failed": "timeout"}]}
//! }))
//! .unwrap();
//! assert_eq!(world.storage.rows("Note").len(), 1);
//! let state = world.to_json();
//! assert_eq!(state["externals"]["script"]["mail.send"][0]["failed"], "timeout");
//! assert_eq!(World::from_json(&state).unwrap().to_json(), state);
//! ```

use serde_json::Value;

use super::memory::MemoryStorage;
use super::script::ScriptedExternal;

/// An in-memory storage and scripted externals.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// The store.
    pub storage: MemoryStorage,
    /// The externals' answers.
    pub external: ScriptedExternal,
}

impl World {
    /// Reads a state: a JSON object whose members are optional. Rows are
    /// taken as they are (complete hand-written ones first). Fails, with a
    /// sentence, on anything [`MemoryStorage::from_json`] or
    /// [`ScriptedExternal::from_json`] refuses.
    pub fn from_json(state: &Value) -> Result<World, String> {
        let Value::Object(members) = state else {
            return Err("the state must be a JSON object".to_owned());
        };
        let mut rest = members.clone();
        let externals = rest.remove("externals");
        let storage = MemoryStorage::from_json(&Value::Object(rest))?;
        let external = match &externals {
            Some(script) => {
                ScriptedExternal::from_json(script).map_err(|e| format!("`externals`: {e}"))?
            }
            None => ScriptedExternal::new(),
        };
        Ok(World { storage, external })
    }

    /// Declares what the store must know of a spec's entities, from the
    /// spec's JSON: [`MemoryStorage::declare`] on its decoded entities
    /// (their `unique` fields and indexes, their `timestamp` fields). For
    /// hosts that hold the spec as text only (the in-memory component,
    /// whose core has the loaded spec). Only the entities are decoded (the
    /// world carries no JSON Schema compiler); a spec with errors declares
    /// what its entities decode to.
    pub fn declare(&mut self, spec: &Value) {
        let mut cx = crate::spec::decode::Cx::default();
        let decoded = crate::model::Spec {
            entities: crate::spec::decode::entities(&mut cx, spec.get("entities")),
            ..crate::model::Spec::default()
        };
        self.storage.declare(&decoded);
    }

    /// The state, in the form [`Self::from_json`] reads: the committed
    /// storage (see [`MemoryStorage::to_json`]) and `externals` in state
    /// form (the answers not given yet and the call counters).
    pub fn to_json(&self) -> Value {
        let mut state = self.storage.to_json();
        if let Value::Object(m) = &mut state {
            m.insert("externals".into(), self.external.to_json());
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`World::declare`] on a spec's JSON declares what
    /// [`MemoryStorage::declare`] declares from the loaded spec.
    #[test]
    fn declares_as_the_loaded_spec_does() {
        let indexed = r#"{"sinew": "0.2", "name": "i", "tools": {}, "entities": {"Slot": {
            "fields": {"a": {"type": "string", "unique": true}, "b": {"type": "timestamp"}},
            "indexes": [{"fields": ["a", "b"], "unique": true}, {"fields": ["b"]}]}}}"#;
        for text in [
            indexed,
            include_str!("../../../specs/examples/shop.json"),
            include_str!("../../../specs/examples/bank.json"),
            include_str!("../../../specs/examples/booking.json"),
        ] {
            let loaded = crate::spec::load(text);
            assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
            let mut native = MemoryStorage::new();
            native.declare(&loaded.spec);
            let mut world = World::default();
            world.declare(&loaded.source);
            assert_eq!(world.storage.to_json(), native.to_json());
        }
    }
}
