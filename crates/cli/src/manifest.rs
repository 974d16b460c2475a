//! `nimbus.yaml`: read, check and resolve a project manifest into a deployment plan.
//!
//! Every problem is reported with the file, the key and what is wrong, and all of them at
//! once, so a user fixes a manifest in one pass. After this step nothing reads the YAML
//! again: the plan holds complete specs (defaults filled in) and absolute code paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use model::http::{HttpTrigger, RouteOptions, Trigger};
use model::{FunctionSpec, FunctionType, Runtime};
use serde::Deserialize;

pub const FILE_NAME: &str = "nimbus.yaml";

/// The manifest's names, in the order a directory is searched for them.
pub const FILE_NAMES: [&str; 2] = [FILE_NAME, "nimbus.yml"];

mod flows;
mod keys;

pub use flows::PlannedFlow;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    // Optional so a project may hold only flows over functions deployed elsewhere.
    #[serde(default)]
    functions: BTreeMap<String, FunctionEntry>,
    /// Shared trees, declared once, that functions name in their `layers`.
    #[serde(default)]
    layers: BTreeMap<String, LayerEntry>,
    /// Workflows (Amazon States Language), deployed after the functions they call.
    #[serde(default)]
    flows: Vec<flows::FlowEntry>,
}

/// `layers: {common: {path: layers/common}}`: a directory shipped as a layer, laid out as
/// on Lambda (`python/`, `nodejs/node_modules/`, `bin/`, `lib/`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerEntry {
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionEntry {
    runtime: String,
    #[serde(default)]
    handler: String,
    #[serde(default, rename = "type")]
    kind: Option<FunctionType>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    url: Option<RouteOptions>,
    #[serde(default)]
    triggers: Vec<TriggerEntry>,
    concurrency: Option<u32>,
    min_instances: Option<u32>,
    max_instances: Option<u32>,
    idle_timeout_ms: Option<u32>,
    keep_alive_max_ms: Option<u32>,
    queue_timeout_ms: Option<u32>,
    #[serde(default)]
    initializer: String,
    initializer_timeout_ms: Option<u32>,
    #[serde(default)]
    pre_stop: String,
    pre_stop_timeout_ms: Option<u32>,
    network: Option<model::Network>,
    ephemeral_storage_mb: Option<u32>,
    cpu_millicores: Option<u32>,
    max_retries: Option<u32>,
    max_event_age_ms: Option<u32>,
    on_success: Option<model::Destination>,
    on_failure: Option<model::Destination>,
    #[serde(default = "default_code")]
    code: String,
    /// `false`: the server installs nothing, even when the code declares dependencies.
    build: Option<bool>,
    /// Patterns (gitignore syntax, relative to `code`) of files not to ship.
    #[serde(default)]
    exclude: Vec<String>,
    /// The layers (declared under `layers:`) shown at `/opt`, in order.
    #[serde(default)]
    layers: Vec<String>,
    /// `fc`: Function Compute's handler conventions (the event as bytes, FC's context).
    conventions: Option<model::Conventions>,
    memory_mb: Option<u32>,
    timeout_ms: Option<u32>,
    #[serde(default)]
    env: BTreeMap<String, Scalar>,
    #[serde(default)]
    description: String,
    /// Aliases that `nimbus deploy --publish` moves to the version it publishes.
    #[serde(default)]
    aliases: BTreeMap<String, AliasEntry>,
}

/// How `deploy --publish` moves an alias: all the way to the new version, or, with
/// `canary_percent`, by giving the new version that share next to the alias's current one.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AliasEntry {
    pub canary_percent: Option<f64>,
    pub guard: Option<model::Guard>,
}

/// `- http: {...}`: YAML has no other way to name a trigger's kind than a one-key map.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerEntry {
    #[serde(default)]
    http: Option<HttpTrigger>,
    #[serde(default)]
    timer: Option<model::timer::TimerTrigger>,
    #[serde(default)]
    event: Option<model::timer::EventTrigger>,
    #[serde(default)]
    object: Option<model::object::ObjectTrigger>,
    #[serde(default)]
    queue: Option<model::queue::QueueTrigger>,
}

impl TriggerEntry {
    /// The one trigger this entry names.
    fn into_trigger(self, at: &str) -> Result<Trigger, String> {
        match (self.http, self.timer, self.event, self.object, self.queue) {
            (Some(h), None, None, None, None) => Ok(Trigger::Http(h)),
            (None, Some(t), None, None, None) => Ok(Trigger::Timer(t)),
            (None, None, Some(e), None, None) => Ok(Trigger::Event(e)),
            (None, None, None, Some(o), None) => Ok(Trigger::Object(o)),
            (None, None, None, None, Some(q)) => Ok(Trigger::Queue(q)),
            _ => Err(format!(
                "{at}: a trigger is one of `http:`, `timer:`, `event:`, `object:` or `queue:`"
            )),
        }
    }
}

fn default_code() -> String {
    ".".into()
}

/// An environment value as YAML writes it (`PORT: 8080` is a number there); the process
/// environment only has strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::String(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// One function to deploy: its spec (without a code hash yet) and the directory to zip.
pub struct Planned {
    pub spec: FunctionSpec,
    pub code_dir: PathBuf,
    pub aliases: BTreeMap<String, AliasEntry>,
    /// Gitignore-syntax patterns of files not to ship.
    pub exclude: Vec<String>,
    /// The function's layers: their names and directories, in order.
    pub layers: Vec<(String, PathBuf)>,
}

/// Everything a manifest deploys: functions first, then the flows that call them.
pub struct Project {
    pub functions: Vec<Planned>,
    pub flows: Vec<PlannedFlow>,
}

/// Reads the manifest at `path` (a file, or a directory holding `nimbus.yaml` or
/// `nimbus.yml`) and returns the functions to deploy, or every problem found.
pub fn load(path: &Path) -> Result<Vec<Planned>, String> {
    load_project(path).map(|p| p.functions)
}

/// As `load`, with the project's flows and their definitions too.
pub fn load_project(path: &Path) -> Result<Project, String> {
    let (dir, file) = locate(path)?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    parse(&text, &dir, &file.display().to_string())
}

/// The project directory and manifest file that `path` names.
fn locate(path: &Path) -> Result<(PathBuf, PathBuf), String> {
    if path.is_file() {
        // Code paths are relative to the manifest, so its directory is the project's.
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        return Ok((dir, path.to_path_buf()));
    }
    if !path.is_dir() {
        return Err(format!("{}: no such file or directory", path.display()));
    }
    let found: Vec<PathBuf> = FILE_NAMES
        .iter()
        .map(|n| path.join(n))
        .filter(|f| f.is_file())
        .collect();
    match found.as_slice() {
        [file] => Ok((path.to_path_buf(), file.clone())),
        [] => Err(format!(
            "{}: no {FILE_NAME} (or nimbus.yml); `nimbus init {}` starts a project there",
            path.display(),
            path.display()
        )),
        _ => Err(format!(
            "{}: both nimbus.yaml and nimbus.yml; keep one, or name the one to deploy",
            path.display()
        )),
    }
}

fn parse(text: &str, dir: &Path, file: &str) -> Result<Project, String> {
    // Unknown keys are found before the typed parse, because serde's deny_unknown_fields
    // stops at the first one and a user should fix them all in one pass.
    if let Ok(value) = serde_norway::from_str::<serde_norway::Value>(text) {
        let unknown = keys::unknown(&value);
        if !unknown.is_empty() {
            return Err(unknown
                .iter()
                .map(|u| format!("{file}: {u}"))
                .collect::<Vec<_>>()
                .join("\n"));
        }
    }
    let manifest: Manifest = serde_norway::from_str(text).map_err(|e| {
        let e = e.to_string();
        // `{path: /items/{id}}` is the most common slip: braces end a YAML flow mapping.
        let hint = if e.contains("flow mapping") {
            "; quote route paths that contain {parameters}: path: \"/items/{id}\""
        } else {
            ""
        };
        format!("{file}: {e}{hint}")
    })?;
    if manifest.functions.is_empty() && manifest.flows.is_empty() {
        return Err(format!("{file}: functions: no functions declared"));
    }
    let mut plan = Vec::new();
    let mut problems = Vec::new();
    let flows = flows::resolve(manifest.flows, dir, file, &mut problems);
    for (name, entry) in manifest.functions {
        let key = format!("functions.{name}");
        let (runtime, runtime_version) = match Runtime::parse_id(&entry.runtime) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{file}: {key}.runtime: {e}"));
                continue;
            }
        };
        // The code hash is filled in once the code is zipped; a placeholder until then.
        let d = FunctionSpec::new(&name, runtime, &entry.handler, &"0".repeat(64));
        let spec = FunctionSpec {
            memory_mb: entry.memory_mb.unwrap_or(d.memory_mb),
            timeout_ms: entry.timeout_ms.unwrap_or(d.timeout_ms),
            env: entry
                .env
                .into_iter()
                .map(|(k, v)| (k, v.into_string()))
                .collect(),
            description: entry.description,
            kind: entry.kind.unwrap_or(d.kind),
            command: entry.command,
            url: entry.url,
            triggers: entry
                .triggers
                .into_iter()
                .enumerate()
                .map(|(i, t)| t.into_trigger(&format!("functions.{name}.triggers[{i}]")))
                .collect::<Result<_, String>>()?,
            concurrency: entry.concurrency.unwrap_or(d.concurrency),
            min_instances: entry.min_instances.unwrap_or(d.min_instances),
            max_instances: entry.max_instances.unwrap_or(d.max_instances),
            idle_timeout_ms: entry.idle_timeout_ms.unwrap_or(d.idle_timeout_ms),
            keep_alive_max_ms: entry.keep_alive_max_ms.unwrap_or(d.keep_alive_max_ms),
            queue_timeout_ms: entry.queue_timeout_ms.unwrap_or(d.queue_timeout_ms),
            initializer: entry.initializer,
            initializer_timeout_ms: entry
                .initializer_timeout_ms
                .unwrap_or(d.initializer_timeout_ms),
            pre_stop: entry.pre_stop,
            pre_stop_timeout_ms: entry.pre_stop_timeout_ms.unwrap_or(d.pre_stop_timeout_ms),
            network: entry.network.unwrap_or(d.network),
            ephemeral_storage_mb: entry.ephemeral_storage_mb.unwrap_or(d.ephemeral_storage_mb),
            cpu_millicores: entry.cpu_millicores.unwrap_or(d.cpu_millicores),
            max_retries: entry.max_retries.unwrap_or(d.max_retries),
            max_event_age_ms: entry.max_event_age_ms.unwrap_or(d.max_event_age_ms),
            on_success: entry.on_success,
            on_failure: entry.on_failure,
            build: entry.build.unwrap_or(d.build),
            conventions: entry.conventions.unwrap_or_default(),
            runtime_version,
            ..d
        };
        for e in spec.validate() {
            let field = if e.field == "name" {
                key.clone()
            } else {
                format!("{key}.{}", e.field)
            };
            problems.push(format!("{file}: {field}: {}", e.message));
        }
        let code_dir = dir.join(&entry.code);
        if !code_dir.is_dir() {
            problems.push(format!(
                "{file}: {key}.code: `{}` is not a directory (paths are relative to {})",
                entry.code,
                Path::new(file)
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or(FILE_NAME.into())
            ));
        }
        let mut layers = Vec::new();
        for layer in &entry.layers {
            match manifest.layers.get(layer) {
                Some(l) => {
                    let path = dir.join(&l.path);
                    if !path.is_dir() {
                        problems.push(format!(
                            "{file}: layers.{layer}.path: `{}` is not a directory (paths are relative to {FILE_NAME})",
                            l.path
                        ));
                    }
                    layers.push((layer.clone(), path));
                }
                None => problems.push(format!(
                    "{file}: {key}.layers: `{layer}` is not declared under `layers:` (declared: {})",
                    if manifest.layers.is_empty() {
                        "none".to_string()
                    } else {
                        manifest.layers.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                )),
            }
        }
        if entry.layers.len() > model::limits::LAYERS_MAX {
            problems.push(format!(
                "{file}: {key}.layers: {} layers; a function may use at most {}",
                entry.layers.len(),
                model::limits::LAYERS_MAX
            ));
        }
        for (alias, a) in &entry.aliases {
            if let Err(e) = model::version::validate_alias_name(alias) {
                problems.push(format!("{file}: {key}.aliases: {e}"));
            }
            if let Some(p) = a.canary_percent
                && !(0.0..=100.0).contains(&p)
            {
                problems.push(format!(
                    "{file}: {key}.aliases.{alias}.canary_percent: {p} must be 0 to 100"
                ));
            }
        }
        plan.push(Planned {
            spec,
            code_dir,
            aliases: entry.aliases,
            exclude: entry.exclude,
            layers,
        });
    }
    if problems.is_empty() {
        Ok(Project {
            functions: plan,
            flows,
        })
    } else {
        Err(problems.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Vec<Planned>, String> {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("src")).unwrap();
        parse(yaml, tmp.path(), "nimbus.yaml").map(|p| p.functions)
    }

    #[test]
    fn resolves_defaults_and_env_scalars() {
        let plan = check(
            "functions:\n  hello:\n    runtime: python3\n    handler: main.handler\n    code: src\n    env: {PORT: 8080, DEBUG: true, NAME: x}\n",
        )
        .unwrap();
        let s = &plan[0].spec;
        assert_eq!(
            (s.memory_mb, s.timeout_ms),
            (
                model::limits::MEMORY_MB_DEFAULT,
                model::limits::TIMEOUT_MS_DEFAULT
            )
        );
        assert_eq!(s.env["PORT"], "8080");
        assert_eq!(s.env["DEBUG"], "true");
        assert!(plan[0].code_dir.ends_with("src"));
    }

    #[test]
    fn a_manifest_is_found_as_yaml_yml_or_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let yaml = "functions:\n  hello:\n    runtime: python3\n    handler: main.handler\n";
        let dir = tmp.path();
        let err = load(dir).err().unwrap();
        assert!(err.contains("no nimbus.yaml (or nimbus.yml)"), "{err}");
        std::fs::write(dir.join("nimbus.yml"), yaml).unwrap();
        assert_eq!(load(dir).unwrap()[0].spec.name, "hello");
        std::fs::write(dir.join("nimbus.yaml"), yaml).unwrap();
        let err = load(dir).err().unwrap();
        assert!(err.contains("both nimbus.yaml and nimbus.yml"), "{err}");
        // A file named outright is the one: its directory is the project's.
        let plan = load(&dir.join("nimbus.yml")).unwrap();
        assert_eq!(plan[0].code_dir, dir.join("."));
        let err = load(&dir.join("missing.yaml")).err().unwrap();
        assert!(err.contains("no such file or directory"), "{err}");
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let cases = [
            (
                "functions:\n  hello:\n    runtime: python3\n    handler: main.handler\n    memory_mb: 1\n",
                "nimbus.yaml: functions.hello.memory_mb: 1 is out of range",
            ),
            (
                "functions:\n  hello:\n    runtime: ruby\n    handler: main.handler\n",
                "nimbus.yaml: functions.hello.runtime: unknown runtime `ruby`",
            ),
            (
                "functions:\n  hello:\n    runtime: python3\n    handler: main.handler\n    code: nope\n",
                "nimbus.yaml: functions.hello.code: `nope` is not a directory",
            ),
            (
                "functions:\n  hello:\n    runtime: python3\n    handler: main.handler\n    runtme: x\n",
                "nimbus.yaml: functions.hello: unknown key `runtme` (did you mean `runtime`?)",
            ),
            (
                "functions:\n  9x:\n    runtime: python3\n    handler: main.handler\n",
                "nimbus.yaml: functions.9x: must start with a letter",
            ),
            ("functions: {}\n", "no functions declared"),
            ("functions: [\n", "nimbus.yaml:"),
            (
                "functions:\n  h:\n    runtime: python3\n    handler: a.b\n    triggers:\n      - http: {path: /x/{id}}\n",
                "quote route paths that contain {parameters}",
            ),
        ];
        for (yaml, expect) in cases {
            let err = check(yaml).err().unwrap_or_default();
            assert!(err.contains(expect), "expected `{expect}` in `{err}`");
        }
    }

    /// A project directory with `files` written in it, and its manifest parsed.
    fn project(yaml: &str, files: &[(&str, &str)]) -> Result<Project, String> {
        let tmp = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = tmp.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        parse(yaml, tmp.path(), "nimbus.yaml")
    }

    const ORDER_JSON: &str = r#"{"Comment": "order", "StartAt": "Reserve",
        "States": {"Reserve": {"Type": "Task", "Resource": "nimbus:function:reserve",
        "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 1, "BackoffRate": 2.5}],
        "ResultPath": "$.r", "End": true}}}"#;

    const ORDER_YAML: &str = "\
Comment: order
StartAt: Reserve
States:
  Reserve:
    Type: Task
    Resource: nimbus:function:reserve
    Retry:
      - ErrorEquals: [States.ALL]
        IntervalSeconds: 1
        BackoffRate: 2.5
    ResultPath: $.r
    End: true
";

    #[test]
    fn flows_are_read_with_their_definitions() {
        let yaml = "\
functions:
  reserve: {runtime: python3, handler: main.handler}
flows:
  - name: order
    definition: flows/order.asl.json
    description: Places an order
  - name: order-yaml
    definition: flows/order.asl.yaml
    triggers:
      - timer: {name: nightly, cron: \"0 3 * * *\"}
      - object: {bucket: uploads, events: [\"s3:ObjectCreated:*\"]}
";
        let p = project(
            yaml,
            &[
                ("flows/order.asl.json", ORDER_JSON),
                ("flows/order.asl.yaml", ORDER_YAML),
            ],
        )
        .unwrap();
        assert_eq!(p.functions.len(), 1);
        let names: Vec<&str> = p.flows.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["order", "order-yaml"]);
        assert_eq!(p.flows[0].description, "Places an order");
        assert_eq!(p.flows[1].description, "");
        assert!(p.flows[0].triggers.is_empty());
        let kinds: Vec<&str> = p.flows[1]
            .triggers
            .iter()
            .map(|t| t.kind().as_str())
            .collect();
        assert_eq!(kinds, ["timer", "object"]);
        assert!(p.flows[0].path.ends_with("flows/order.asl.json"));
        // YAML becomes the very JSON the .json file holds (numbers, strings and `$` paths).
        assert_eq!(p.flows[0].definition, p.flows[1].definition);
        assert_eq!(
            p.flows[0].definition["States"]["Reserve"]["ResultPath"],
            "$.r"
        );
        assert_eq!(
            p.flows[1].definition["States"]["Reserve"]["Retry"][0]["BackoffRate"],
            2.5
        );
        // A project of flows alone is one too: their functions may be deployed elsewhere.
        let p = project(
            "flows:\n  - {name: order, definition: order.json}\n",
            &[("order.json", ORDER_JSON)],
        )
        .unwrap();
        assert!(p.functions.is_empty());
        assert_eq!(p.flows.len(), 1);
    }

    #[test]
    fn flow_errors_name_the_flow_and_the_file() {
        let fns = "functions:\n  f: {runtime: python3, handler: main.handler}\n";
        let files = [
            ("order.json", ORDER_JSON),
            ("list.json", "[1, 2]"),
            ("broken.json", "{\"StartAt\": "),
            ("order.txt", ORDER_JSON),
        ];
        let cases = [
            (
                "flows:\n  - {name: order, definition: flows/missing.json}\n",
                "nimbus.yaml: flows.order.definition: `flows/missing.json`: no such file \
                 (paths are relative to nimbus.yaml)",
            ),
            (
                "flows:\n  - {name: order, defintion: order.json}\n",
                "nimbus.yaml: flows.order: unknown key `defintion` (did you mean `definition`?)",
            ),
            (
                "flows:\n  - {name: order, definition: order.json, retries: 3}\n",
                "nimbus.yaml: flows.order: unknown key `retries`; known keys: name, definition, description, triggers",
            ),
            (
                "flows:\n  - {name: order, definition: order.json, triggers: [{timer: {name: t, every: 1m}, queue: {}}]}\n",
                "nimbus.yaml: flows.order.triggers[0]: a trigger is one of `http:`, `timer:`, `event:`, `object:` or `queue:`",
            ),
            (
                "flows:\n  - {name: 9order, definition: order.json}\n",
                "nimbus.yaml: flows[0].name: `9order` must start with a letter",
            ),
            (
                "flows:\n  - {name: a, definition: order.json}\n  - {name: a, definition: order.json}\n",
                "nimbus.yaml: flows.a: declared twice",
            ),
            (
                "flows:\n  - {name: order, definition: list.json}\n",
                "flows.order.definition: `list.json`: not an object",
            ),
            (
                "flows:\n  - {name: order, definition: broken.json}\n",
                "flows.order.definition: `broken.json`: not valid JSON: EOF",
            ),
            (
                "flows:\n  - {name: order, definition: order.txt}\n",
                "flows.order.definition: `order.txt`: a definition is a .json, .yaml or .yml file",
            ),
            ("flows:\n  - {name: order}\n", "missing field `definition`"),
        ];
        for (yaml, expect) in cases {
            let err = project(&format!("{fns}{yaml}"), &files)
                .err()
                .unwrap_or_default();
            assert!(err.contains(expect), "expected `{expect}` in `{err}`");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
        }
    }

    #[test]
    fn the_flow_examples_load() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let saga = load_project(&examples.join("order-saga")).unwrap();
        assert_eq!(saga.functions.len(), 5);
        assert_eq!(saga.flows[0].name, "order");
        assert_eq!(saga.flows[0].definition["StartAt"], "Reserve");
        let map = load_project(&examples.join("map-objects")).unwrap();
        assert_eq!(map.flows[0].name, "resize-all");
        let each = &map.flows[0].definition["States"]["ResizeEach"];
        assert_eq!(each["MaxConcurrency"], 10);
        assert_eq!(each["ItemSelector"]["key.$"], "$$.Map.Item.Value.key");
    }
}
