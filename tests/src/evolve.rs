//! A sequence of evolutions of the `clinic` example, each a change a real
//! backend makes, together using every change `sinew migrate` migrates:
//! states and enum values added, fields added with a default or nullable,
//! a field made nullable, `maxLength` and bounds widened, indexes added and
//! dropped, a unique field, an entity renamed (`renamedFrom`), a contract
//! step once the previous revision is gone. Served two revisions at a time
//! by `tests/evolve_pg.rs`; `sinew diff` and `sinew migrate --plan` of each
//! step are golden files under `specs/evolve/`.

use serde_json::{Value, json};

/// Each spec of the sequence, named, the example first.
pub fn clinic() -> Vec<(&'static str, Value)> {
    let v1: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::root().join("specs/examples/clinic.json")).unwrap(),
    )
    .unwrap();

    // 2: a state (`no_show`, with the tool that sets it), a wider name, a
    // field added with a default.
    let mut v2 = v1.clone();
    let e = &mut v2["entities"];
    e["Appointment"]["status"]["transitions"]["no_show"] =
        json!({"from": ["confirmed"], "to": "no_show"});
    e["Therapist"]["fields"]["name"]["maxLength"] = json!(200);
    e["Therapist"]["fields"]["room"] = json!({"type": "string", "maxLength": 20, "default": "A1"});
    let t = &mut v2["tools"];
    t["add_therapist"]["input"]["properties"]["name"]["maxLength"] = json!(200);
    let statuses = &mut t["list_appointments"]["input"]["properties"]["status"]["enum"];
    statuses.as_array_mut().unwrap().push(json!("no_show"));
    let mut no_show = t["confirm"].clone();
    no_show["description"] = json!("Staff mark a confirmed appointment a no-show.");
    no_show["trigger"]["http"]["path"] = json!("/appointments/{id}/no-show");
    no_show["output"] = json!({"type": "object", "required": ["id", "status"],
        "properties": {"id": {"type": "string"}, "status": {"type": "string"}}});
    no_show["flow"] = json!({"entry": "write", "nodes": {
        "write": {"type": "transaction", "body": {"entry": "t", "nodes": {
            "t": {"type": "transition", "entity": "Appointment", "id": "input.id", "action": "no_show"}}},
            "next": "done"},
        "done": {"type": "return", "value": {"id": "t.id", "status": "t.status"}}}});
    no_show.as_object_mut().unwrap().remove("limits");
    t["mark_no_show"] = no_show;

    // 3: a nullable field, a field made nullable, an enum field with a
    // default, an index.
    let mut v3 = v2.clone();
    let e = &mut v3["entities"];
    e["Patient"]["fields"]["phone"] = json!({"type": "string", "maxLength": 30, "nullable": true});
    e["Appointment"]["fields"]["note"]["nullable"] = json!(true);
    e["Therapist"]["fields"]["tier"] =
        json!({"type": "string", "enum": ["basic", "pro"], "default": "basic"});
    e["Therapist"]["indexes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"fields": ["specialty"]}));

    // 4: a unique field, an enum value, a wider bound.
    let mut v4 = v3.clone();
    let e = &mut v4["entities"];
    e["Therapist"]["fields"]["license"] =
        json!({"type": "string", "maxLength": 40, "nullable": true, "unique": true});
    e["Therapist"]["fields"]["tier"]["enum"] = json!(["basic", "pro", "premium"]);
    e["Appointment"]["fields"]["minutes"]["maximum"] = json!(300);

    // 5: `Invoice` becomes `Bill` (its rows kept; servers of spec 4 go on
    // through the view left under the old name) and a therapist's
    // `specialty` becomes `discipline` (both columns kept in step while
    // servers of spec 4 run).
    let mut v5 = v4.clone();
    let text = v5["tools"]
        .to_string()
        .replace("\"Invoice\"", "\"Bill\"")
        .replace(
            "\"specialty\":\"input.specialty\"",
            "\"discipline\":\"input.specialty\"",
        );
    v5["tools"] = serde_json::from_str(&text).unwrap();
    let fields = v5["entities"]["Therapist"]["fields"]
        .as_object_mut()
        .unwrap();
    let mut discipline = fields.remove("specialty").unwrap();
    discipline["renamedFrom"] = json!("specialty");
    fields.insert("discipline".into(), discipline);
    for i in v5["entities"]["Therapist"]["indexes"]
        .as_array_mut()
        .unwrap()
    {
        if i["fields"] == json!(["specialty"]) {
            i["fields"] = json!(["discipline"]);
        }
    }
    let e = v5["entities"].as_object_mut().unwrap();
    let mut bill = e.remove("Invoice").unwrap();
    bill["renamedFrom"] = json!("Invoice");
    e.insert("Bill".into(), bill);

    // 6: contract: the index on `discipline` and the phone field go, the
    // renames are done (`renamedFrom` removed), a wider patient name, the
    // note required again (its nulls filled with its default).
    let mut v6 = v5.clone();
    let e = &mut v6["entities"];
    e["Therapist"]["indexes"]
        .as_array_mut()
        .unwrap()
        .retain(|i| i["fields"] != json!(["discipline"]));
    e["Therapist"]["fields"]["discipline"]
        .as_object_mut()
        .unwrap()
        .remove("renamedFrom");
    e["Patient"]["fields"]
        .as_object_mut()
        .unwrap()
        .remove("phone");
    e["Patient"]["fields"]["name"]["maxLength"] = json!(150);
    e["Bill"].as_object_mut().unwrap().remove("renamedFrom");
    e["Appointment"]["fields"]["note"]
        .as_object_mut()
        .unwrap()
        .remove("nullable");

    vec![
        ("1-example", v1),
        ("2-states", v2),
        ("3-fields", v3),
        ("4-unique", v4),
        ("5-rename", v5),
        ("6-contract", v6),
    ]
}
