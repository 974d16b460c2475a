//! Paths: JSONPath queries (`$…` on the state's data, `$$…` on the context object) and the
//! reference paths that say where a result goes (`ResultPath`).
//!
//! Step Functions evaluates paths with Jayway JsonPath; this module parses them as RFC 9535
//! (`serde_json_path`) after rewriting the one common Jayway spelling RFC 9535 lacks, dotted
//! names with characters such as `-` (`$.order-id` becomes `$['order-id']`). A *definite*
//! path (no wildcard, descendant, filter, slice or union) selects one value and fails when
//! it selects none; any other path selects the array of its matches, as Jayway does.

use serde_json::{Map, Value};
use serde_json_path::JsonPath;

use crate::failure::{Failure, names};

/// A parsed path, ready to select from the data or the context object.
#[derive(Clone, Debug)]
pub struct Path {
    raw: String,
    context: bool,
    query: JsonPath,
    definite: bool,
}

impl Path {
    /// Parses `$…` or `$$…`; the error says what is wrong with it.
    pub fn parse(raw: &str) -> Result<Path, String> {
        let (context, rest) = match raw.strip_prefix("$$") {
            Some(rest) => (true, rest),
            None => match raw.strip_prefix('$') {
                Some(rest) => (false, rest),
                None => return Err(format!("'{raw}' is not a path: it must begin with '$'")),
            },
        };
        let rewritten = format!("${}", rewrite_dotted_names(rest));
        let query = JsonPath::parse(&rewritten)
            .map_err(|e| format!("'{raw}' is not a valid JSONPath: {}", e.message()))?;
        Ok(Path {
            raw: raw.to_string(),
            context,
            query,
            definite: is_definite(rest),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether this path reads the context object (`$$`).
    pub fn is_context(&self) -> bool {
        self.context
    }

    /// The value at this path: the one match of a definite path (`States.Runtime` when
    /// there is none), the array of matches of any other.
    pub fn select(&self, data: &Value, context: &Value) -> Result<Value, Failure> {
        self.find(data, context)?.ok_or_else(|| {
            Failure::runtime(format!(
                "Invalid path '{}': the path does not match anything in {}",
                self.raw,
                if self.context {
                    "the context object"
                } else {
                    "the input"
                }
            ))
        })
    }

    /// The value at this path, `None` when a definite path matches nothing (what
    /// `IsPresent` asks).
    pub fn find(&self, data: &Value, context: &Value) -> Result<Option<Value>, Failure> {
        let root = if self.context { context } else { data };
        let nodes = self.query.query(root);
        if self.definite {
            Ok(nodes.first().map(|v| (*v).clone()))
        } else {
            Ok(Some(Value::Array(
                nodes.all().into_iter().cloned().collect(),
            )))
        }
    }
}

/// Whether `rest` (a path after its `$`) can only select one node: no `*`, `..`, filter,
/// slice or union outside quoted names.
fn is_definite(rest: &str) -> bool {
    let mut quote = None;
    let mut prev = '\0';
    let mut escaped = false;
    for c in rest.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '*' | '?' | ':' | ',' => return false,
            '.' if prev == '.' => return false,
            _ => {}
        }
        prev = c;
    }
    true
}

/// Rewrites dotted names RFC 9535 does not allow (`.order-id`, `.1st`) to bracketed ones.
fn rewrite_dotted_names(rest: &str) -> String {
    let mut out = String::with_capacity(rest.len() + 8);
    let chars: Vec<char> = rest.chars().collect();
    let mut i = 0;
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' && i + 1 < chars.len() {
                out.push(chars[i + 1]);
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            '\'' | '"' if depth > 0 => quote = Some(c),
            '[' | '(' => depth += 1,
            ']' | ')' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                let start = i + 1;
                let mut end = start;
                while end < chars.len() && !matches!(chars[end], '.' | '[') {
                    end += 1;
                }
                let name: String = chars[start..end].iter().collect();
                let shorthand = name == "*"
                    || name.chars().enumerate().all(|(n, ch)| {
                        ch == '_'
                            || ch.is_ascii_alphabetic()
                            || !ch.is_ascii()
                            || (n > 0 && ch.is_ascii_digit())
                    });
                if name.is_empty() || shorthand {
                    out.push('.');
                    i += 1;
                    continue;
                }
                out.push_str("['");
                for ch in name.chars() {
                    if ch == '\'' || ch == '\\' {
                        out.push('\\');
                    }
                    out.push(ch);
                }
                out.push_str("']");
                i = end;
                continue;
            }
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    out
}

/// One step of a reference path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Name(String),
    Index(usize),
}

/// A reference path (`$`, `$.a.b`, `$['a'][0]`): one node, named by fields and indexes
/// only, as `ResultPath` needs to say where to write.
#[derive(Clone, Debug)]
pub struct ReferencePath {
    raw: String,
    steps: Vec<Step>,
}

impl ReferencePath {
    pub fn parse(raw: &str) -> Result<ReferencePath, String> {
        let bad = |why: &str| format!("'{raw}' is not a reference path: {why}");
        let Some(rest) = raw.strip_prefix('$') else {
            return Err(bad("it must begin with '$'"));
        };
        if rest.starts_with('$') {
            return Err(bad("it cannot refer to the context object"));
        }
        let chars: Vec<char> = rest.chars().collect();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    let start = i + 1;
                    let mut end = start;
                    while end < chars.len() && !matches!(chars[end], '.' | '[') {
                        end += 1;
                    }
                    let name: String = chars[start..end].iter().collect();
                    if name.is_empty() {
                        return Err(bad("a '.' must be followed by a field name"));
                    }
                    if name.contains(['*', '?', '@', ' ']) {
                        return Err(bad("only field names and indexes are allowed"));
                    }
                    steps.push(Step::Name(name));
                    i = end;
                }
                '[' => {
                    let close = chars[i..].iter().position(|c| *c == ']').map(|p| i + p);
                    let Some(close) = close else {
                        return Err(bad("a '[' is not closed"));
                    };
                    let inner: String = chars[i + 1..close].iter().collect();
                    let inner = inner.trim();
                    if let Some(name) = inner
                        .strip_prefix('\'')
                        .and_then(|s| s.strip_suffix('\''))
                        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                    {
                        steps.push(Step::Name(name.to_string()));
                    } else if let Ok(index) = inner.parse::<usize>() {
                        steps.push(Step::Index(index));
                    } else {
                        return Err(bad("only field names and indexes are allowed"));
                    }
                    i = close + 1;
                }
                _ => return Err(bad("expected '.' or '['")),
            }
        }
        Ok(ReferencePath {
            raw: raw.to_string(),
            steps,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// `target` with `value` written at this path: fields on the way are made as objects;
    /// a step into something that is not an object (or an index past an array's end) is
    /// `States.ResultPathMatchFailure`.
    pub fn set(&self, target: Value, value: Value) -> Result<Value, Failure> {
        if self.steps.is_empty() {
            return Ok(value);
        }
        let mut root = target;
        let mismatch = || {
            Failure::new(
                names::RESULT_PATH_MATCH_FAILURE,
                format!(
                    "Unable to apply ResultPath '{}' to the state's input",
                    self.raw
                ),
            )
        };
        let mut node = &mut root;
        let last = self.steps.len() - 1;
        for (n, step) in self.steps.iter().enumerate() {
            match step {
                Step::Name(name) => {
                    let Value::Object(map) = node else {
                        return Err(mismatch());
                    };
                    if n == last {
                        map.insert(name.clone(), value);
                        return Ok(root);
                    }
                    node = map
                        .entry(name.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                }
                Step::Index(index) => {
                    let Value::Array(items) = node else {
                        return Err(mismatch());
                    };
                    let Some(slot) = items.get_mut(*index) else {
                        return Err(mismatch());
                    };
                    if n == last {
                        *slot = value;
                        return Ok(root);
                    }
                    node = slot;
                }
            }
        }
        Ok(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn select(path: &str, data: Value) -> Result<Value, Failure> {
        Path::parse(path)
            .unwrap()
            .select(&data, &json!({"Execution": {"Name": "e1"}}))
    }

    #[test]
    fn definite_paths_select_one_value_or_fail() {
        let data = json!({"a": {"b": [1, 2, 3]}, "order-id": 7});
        assert_eq!(select("$", data.clone()).unwrap(), data);
        assert_eq!(select("$.a.b[1]", data.clone()).unwrap(), json!(2));
        assert_eq!(select("$['a']['b'][0]", data.clone()).unwrap(), json!(1));
        assert_eq!(select("$.order-id", data.clone()).unwrap(), json!(7));
        assert_eq!(
            select("$$.Execution.Name", data.clone()).unwrap(),
            json!("e1")
        );
        let missing = select("$.a.c", data).unwrap_err();
        assert_eq!(missing.error, "States.Runtime");
        assert!(missing.cause.contains("$.a.c"), "{missing}");
    }

    #[test]
    fn indefinite_paths_select_arrays_of_matches() {
        let data = json!({"items": [{"p": 5, "n": "a"}, {"p": 15, "n": "b"}, {"p": 25, "n": "c"}]});
        assert_eq!(
            select("$.items[*].n", data.clone()).unwrap(),
            json!(["a", "b", "c"])
        );
        assert_eq!(
            select("$..n", data.clone()).unwrap(),
            json!(["a", "b", "c"])
        );
        assert_eq!(
            select("$.items[?(@.p > 10)].n", data.clone()).unwrap(),
            json!(["b", "c"])
        );
        assert_eq!(
            select("$.items[?(@.p > 10 && @.p < 20)].n", data.clone()).unwrap(),
            json!(["b"])
        );
        assert_eq!(
            select("$.items[0:2].p", data.clone()).unwrap(),
            json!([5, 15])
        );
        assert_eq!(
            select("$.items[-1:].n", data.clone()).unwrap(),
            json!(["c"])
        );
        assert_eq!(
            select("$.items[0,2].p", data.clone()).unwrap(),
            json!([5, 25])
        );
        assert_eq!(select("$.nothing[*]", data).unwrap(), json!([]));
    }

    #[test]
    fn bad_paths_say_why() {
        assert!(
            Path::parse("a.b")
                .unwrap_err()
                .contains("must begin with '$'")
        );
        assert!(
            Path::parse("$.a[")
                .unwrap_err()
                .contains("not a valid JSONPath")
        );
        assert!(
            ReferencePath::parse("$.a[*]")
                .unwrap_err()
                .contains("only field names")
        );
        assert!(
            ReferencePath::parse("$$.a")
                .unwrap_err()
                .contains("context")
        );
    }

    #[test]
    fn reference_paths_write_results() {
        let input = json!({"a": 1, "list": [0, 1]});
        let at = |p: &str, v: Value| ReferencePath::parse(p).unwrap().set(input.clone(), v);
        assert_eq!(at("$", json!(9)).unwrap(), json!(9));
        assert_eq!(
            at("$.r", json!(9)).unwrap(),
            json!({"a": 1, "list": [0, 1], "r": 9})
        );
        assert_eq!(at("$.x.y", json!(9)).unwrap()["x"], json!({"y": 9}));
        assert_eq!(at("$['a']", json!(9)).unwrap()["a"], json!(9));
        assert_eq!(at("$.list[1]", json!(9)).unwrap()["list"], json!([0, 9]));
        let err = at("$.a.b", json!(9)).unwrap_err();
        assert_eq!(err.error, "States.ResultPathMatchFailure");
        assert_eq!(
            at("$.list[5]", json!(9)).unwrap_err().error,
            "States.ResultPathMatchFailure"
        );
        let scalar = ReferencePath::parse("$.r")
            .unwrap()
            .set(json!("text"), json!(1));
        assert_eq!(scalar.unwrap_err().error, "States.ResultPathMatchFailure");
    }
}
