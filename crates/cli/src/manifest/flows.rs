//! `flows:` of a manifest: workflows in Amazon States Language, each definition read from
//! its own file (JSON, or YAML turned into the same JSON) so the plan carries the object
//! `PUT /v1/flows/{name}` takes.
//!
//! The definition itself is checked by the server (states, transitions, paths): the CLI
//! only makes sure there is a JSON object to send, so the rules live in one place.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// `- {name: order, definition: flows/order.asl.json, description: ..., triggers: [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FlowEntry {
    name: String,
    /// The definition's file, relative to the manifest: `.json`, `.yaml` or `.yml`.
    definition: String,
    #[serde(default)]
    description: String,
    /// What starts executions: `timer:`, `object:`, `event:` or `queue:`, as a function's.
    #[serde(default)]
    triggers: Vec<super::TriggerEntry>,
}

/// One flow to deploy: its name, its definition as JSON, its triggers, where the
/// definition was read from.
#[derive(Debug)]
pub struct PlannedFlow {
    pub name: String,
    pub definition: Value,
    pub description: String,
    pub triggers: Vec<model::http::Trigger>,
    pub path: PathBuf,
}

/// The flows of `entries` with their definitions read; what is wrong goes to `problems`,
/// one line each, naming the flow and the key.
pub(super) fn resolve(
    entries: Vec<FlowEntry>,
    dir: &Path,
    file: &str,
    problems: &mut Vec<String>,
) -> Vec<PlannedFlow> {
    let manifest_name = Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| super::FILE_NAME.into());
    let mut seen = BTreeSet::new();
    let mut flows = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let key = format!("flows.{}", entry.name);
        if let Err(e) = model::validate_name(&entry.name) {
            problems.push(format!("{file}: flows[{i}].name: `{}` {e}", entry.name));
            continue;
        }
        if !seen.insert(entry.name.clone()) {
            problems.push(format!(
                "{file}: {key}: declared twice; flow names are unique"
            ));
            continue;
        }
        // The server checks the specs themselves (as it does a function's); here only
        // that each entry names one kind.
        let mut triggers = Vec::new();
        for (j, t) in entry.triggers.into_iter().enumerate() {
            match t.into_trigger(&format!("{file}: {key}.triggers[{j}]")) {
                Ok(t) => triggers.push(t),
                Err(e) => problems.push(e),
            }
        }
        let path = dir.join(&entry.definition);
        match read_definition(&path) {
            Ok(definition) => flows.push(PlannedFlow {
                name: entry.name,
                definition,
                description: entry.description,
                triggers,
                path,
            }),
            Err(e) => problems.push(format!(
                "{file}: {key}.definition: `{}`: {e} (paths are relative to {manifest_name})",
                entry.definition
            )),
        }
    }
    flows
}

/// The definition in `path` as a JSON object, read by the file's extension.
fn read_definition(path: &Path) -> Result<Value, String> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    // The extension is checked first, so a misnamed file is told apart from a missing one.
    if !matches!(ext.as_str(), "json" | "yaml" | "yml") {
        return Err("a definition is a .json, .yaml or .yml file".into());
    }
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        _ => format!("cannot read it: {e}"),
    })?;
    let value: Value = if ext == "json" {
        serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))?
    } else {
        // Read straight into JSON's value type, so a YAML mapping with keys JSON cannot
        // hold (numbers, lists) is an error here rather than a surprise on the server.
        serde_norway::from_str(&text).map_err(|e| format!("not valid YAML: {e}"))?
    };
    if !value.is_object() {
        return Err(
            "not an object; a definition is `{\"StartAt\": ..., \"States\": {...}}`".into(),
        );
    }
    Ok(value)
}
