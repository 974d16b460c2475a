//! EventBridge event patterns: parsed and checked once into a matcher tree, then matched
//! against events (JSON values) with no allocation; `Rules` matches many patterns at once.
//!
//! Semantics are EventBridge's (and its open-source engine, Event Ruler's):
//! - a pattern is an object; its fields are ANDed, and a field's array of values is ORed;
//!   a nested object descends into the event (`{"detail": {"state": ["on"]}}`);
//! - an event field that is an array matches when any of its elements does; an array of
//!   objects matches a nested pattern when one element matches all of it;
//! - values: exact strings, numbers (compared as numbers: `5` matches `5.0`), booleans and
//!   `null`; `prefix`, `suffix`, `equals-ignore-case` (also inside `prefix`/`suffix`),
//!   `wildcard` (`*`, with `\*` and `\\` escapes), `anything-but` (values, or a `prefix`,
//!   `suffix`, `equals-ignore-case` or `wildcard` of one string or a list), `numeric`
//!   ranges, `exists` and `cidr` (IPv4 and IPv6); `$or` is an array of two or more
//!   sub-patterns, one of which must match;
//! - only leaves are values: `exists: true` needs a value that is not an object, and
//!   `exists: false` matches a missing field (or an object, which is not a leaf) — every
//!   other matcher needs the field present; string matchers ignore non-strings, `numeric`
//!   needs a JSON number.
//!
//! Where this is stricter than Event Ruler: `$or` is always the operator, never a field
//! name (Ruler's backward compatibility), and empty arrays or objects are refused rather
//! than compiled into a rule that can never match.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use model::limits;
use serde_json::{Map, Value};

#[cfg(test)]
mod tests;

/// A compiled event pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    root: Node,
}

/// Why a pattern was refused: where in it (`detail.price`, `$or[1].source`; empty for the
/// pattern as a whole) and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// Dotted field path, `$or` branches as `$or[i]`; empty for the whole pattern.
    pub path: String,
    /// What is wrong there, or which limit it is over.
    pub message: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "pattern: {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for PatternError {}

/// One object level of a pattern: every field must match, and every `$or` group (at most
/// one per object, JSON keys being unique) must have one branch that matches.
#[derive(Debug, Clone)]
struct Node {
    fields: Vec<(Box<str>, Field)>,
    or: Vec<Node>,
}

#[derive(Debug, Clone)]
enum Field {
    /// An array of matchers, any of which may match any leaf value of the field.
    Leaf(Vec<Matcher>),
    /// A nested object of the pattern.
    Object(Node),
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact(Exact),
    Prefix(Box<str>),
    /// Lower-cased when compiled, compared with the event's lower-cased characters.
    PrefixIgnoreCase(Box<str>),
    Suffix(Box<str>),
    SuffixIgnoreCase(Box<str>),
    EqualsIgnoreCase(Box<str>),
    Wildcard(Wildcard),
    AnythingBut(AnythingBut),
    Numeric(Range),
    Exists(bool),
    Cidr(Cidr),
}

#[derive(Debug, Clone)]
enum Exact {
    Str(Box<str>),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone)]
enum AnythingBut {
    /// All strings or all numbers (EventBridge refuses a mix).
    Values(Vec<Exact>),
    Prefix(Vec<Box<str>>),
    Suffix(Vec<Box<str>>),
    EqualsIgnoreCase(Vec<Box<str>>),
    Wildcard(Vec<Wildcard>),
}

/// A numeric range; `=` is a range with both bounds inclusive and equal.
#[derive(Debug, Clone)]
struct Range {
    /// (bound, inclusive)
    lower: Option<(f64, bool)>,
    upper: Option<(f64, bool)>,
}

/// A wildcard as its literal pieces between `*`s: the first is a prefix, the last a
/// suffix, and the ones between are found left to right (leftmost is always right for a
/// pattern whose only operator is `*`, so no backtracking is needed).
#[derive(Debug, Clone)]
struct Wildcard {
    pieces: Vec<Box<str>>,
}

#[derive(Debug, Clone)]
struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

/// Compact JSON length without building the string.
pub(crate) fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn err(path: &str, message: impl Into<String>) -> PatternError {
    PatternError {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Pattern {
    /// Parses and checks a pattern, refusing it with the path of its first bad part or the
    /// limit it is over (`model::limits::EVENT_PATTERN_*`).
    pub fn parse(value: &Value) -> Result<Pattern, PatternError> {
        let bytes = json_len(value);
        if bytes > limits::EVENT_PATTERN_BYTES_MAX {
            return Err(err(
                "",
                format!(
                    "{bytes} bytes as JSON, over the limit of {} bytes",
                    limits::EVENT_PATTERN_BYTES_MAX
                ),
            ));
        }
        let Value::Object(map) = value else {
            return Err(err("", "must be a JSON object of fields"));
        };
        Ok(Pattern {
            root: parse_node(map, "", 1)?,
        })
    }

    /// Whether the event matches. Allocates nothing.
    pub fn matches(&self, event: &Value) -> bool {
        self.root.matches(event.as_object())
    }

    /// The values a top-level field must equal, when the pattern says it must be one of
    /// some exact strings (and nothing else): what `Rules` indexes a rule by.
    fn exact_strings(&self, field: &str) -> Option<Vec<&str>> {
        let (_, Field::Leaf(matchers)) = self.root.fields.iter().find(|(k, _)| &**k == field)?
        else {
            return None;
        };
        matchers
            .iter()
            .map(|m| match m {
                Matcher::Exact(Exact::Str(s)) => Some(&**s),
                _ => None,
            })
            .collect()
    }
}

fn parse_node(map: &Map<String, Value>, path: &str, depth: usize) -> Result<Node, PatternError> {
    if depth > limits::EVENT_PATTERN_DEPTH_MAX {
        return Err(err(
            path,
            format!(
                "nested deeper than the limit of {} levels",
                limits::EVENT_PATTERN_DEPTH_MAX
            ),
        ));
    }
    if map.is_empty() {
        return Err(err(path, "an empty object matches nothing; name a field"));
    }
    let mut node = Node {
        fields: Vec::with_capacity(map.len()),
        or: Vec::new(),
    };
    for (key, value) in map {
        let here = join(path, key);
        if key == "$or" {
            node.or = parse_or(value, &here, depth)?;
            continue;
        }
        let field = match value {
            Value::Array(items) => Field::Leaf(parse_leaf(items, &here)?),
            Value::Object(inner) => Field::Object(parse_node(inner, &here, depth + 1)?),
            _ => {
                return Err(err(
                    &here,
                    "must be an array of values or an object of fields",
                ));
            }
        };
        node.fields.push((key.as_str().into(), field));
    }
    Ok(node)
}

fn parse_or(value: &Value, path: &str, depth: usize) -> Result<Vec<Node>, PatternError> {
    let Value::Array(branches) = value else {
        return Err(err(path, "$or needs an array of two or more patterns"));
    };
    if branches.len() < 2 {
        return Err(err(path, "$or needs an array of two or more patterns"));
    }
    if branches.len() > limits::EVENT_PATTERN_OR_BRANCHES_MAX {
        return Err(err(
            path,
            format!(
                "{} branches, over the limit of {}",
                branches.len(),
                limits::EVENT_PATTERN_OR_BRANCHES_MAX
            ),
        ));
    }
    branches
        .iter()
        .enumerate()
        .map(|(i, branch)| {
            let here = format!("{path}[{i}]");
            match branch {
                Value::Object(map) => parse_node(map, &here, depth + 1),
                _ => Err(err(&here, "a $or branch must be a pattern object")),
            }
        })
        .collect()
}

fn parse_leaf(items: &[Value], path: &str) -> Result<Vec<Matcher>, PatternError> {
    if items.is_empty() {
        return Err(err(path, "an empty array matches nothing; give values"));
    }
    if items.len() > limits::EVENT_PATTERN_VALUES_MAX {
        return Err(err(
            path,
            format!(
                "{} values, over the limit of {}",
                items.len(),
                limits::EVENT_PATTERN_VALUES_MAX
            ),
        ));
    }
    items
        .iter()
        .map(|item| match item {
            Value::Object(map) => parse_matcher(map, path),
            Value::Array(_) => Err(err(path, "values cannot be arrays")),
            scalar => Ok(Matcher::Exact(exact(scalar))),
        })
        .collect()
}

/// A scalar JSON value as an exact match (the caller has ruled out arrays and objects).
fn exact(value: &Value) -> Exact {
    match value {
        Value::String(s) => Exact::Str(s.as_str().into()),
        Value::Number(n) => Exact::Num(n.as_f64().unwrap_or(f64::NAN)),
        Value::Bool(b) => Exact::Bool(*b),
        _ => Exact::Null,
    }
}

const MATCHERS: &str =
    "prefix, suffix, equals-ignore-case, wildcard, anything-but, numeric, exists, cidr";

fn parse_matcher(map: &Map<String, Value>, path: &str) -> Result<Matcher, PatternError> {
    let mut entries = map.iter();
    let (Some((key, value)), None) = (entries.next(), entries.next()) else {
        return Err(err(
            path,
            format!("a matcher is an object of exactly one of {MATCHERS}"),
        ));
    };
    match key.as_str() {
        "prefix" => match string_or_ignore_case(value) {
            Some((s, false)) => Ok(Matcher::Prefix(s.into())),
            Some((s, true)) => Ok(Matcher::PrefixIgnoreCase(lower(s))),
            None => Err(err(
                path,
                "prefix needs a string or {\"equals-ignore-case\": string}",
            )),
        },
        "suffix" => match string_or_ignore_case(value) {
            Some((s, false)) => Ok(Matcher::Suffix(s.into())),
            Some((s, true)) => Ok(Matcher::SuffixIgnoreCase(lower(s))),
            None => Err(err(
                path,
                "suffix needs a string or {\"equals-ignore-case\": string}",
            )),
        },
        "equals-ignore-case" => match value {
            Value::String(s) => Ok(Matcher::EqualsIgnoreCase(lower(s))),
            _ => Err(err(path, "equals-ignore-case needs a string")),
        },
        "wildcard" => match value {
            Value::String(s) => Ok(Matcher::Wildcard(parse_wildcard(s, path)?)),
            _ => Err(err(path, "wildcard needs a string")),
        },
        "anything-but" => Ok(Matcher::AnythingBut(parse_anything_but(value, path)?)),
        "numeric" => Ok(Matcher::Numeric(parse_numeric(value, path)?)),
        "exists" => match value {
            Value::Bool(b) => Ok(Matcher::Exists(*b)),
            _ => Err(err(path, "exists needs true or false")),
        },
        "cidr" => match value {
            Value::String(s) => Ok(Matcher::Cidr(parse_cidr(s, path)?)),
            _ => Err(err(path, "cidr needs a string such as \"10.0.0.0/24\"")),
        },
        other => Err(err(
            path,
            format!("unknown matcher \"{other}\" (expected one of {MATCHERS})"),
        )),
    }
}

/// `"s"` → (s, false); `{"equals-ignore-case": "s"}` → (s, true).
fn string_or_ignore_case(value: &Value) -> Option<(&str, bool)> {
    match value {
        Value::String(s) => Some((s, false)),
        Value::Object(map) if map.len() == 1 => match map.get("equals-ignore-case") {
            Some(Value::String(s)) => Some((s, true)),
            _ => None,
        },
        _ => None,
    }
}

/// Lower-cased char by char, as matching folds the event's characters (`str::to_lowercase`
/// treats a final sigma by context, which a per-character comparison could not follow).
fn lower(s: &str) -> Box<str> {
    s.chars()
        .flat_map(char::to_lowercase)
        .collect::<String>()
        .into()
}

fn parse_wildcard(s: &str, path: &str) -> Result<Wildcard, PatternError> {
    let mut pieces = Vec::new();
    let mut piece = String::new();
    let mut chars = s.chars();
    let mut after_star = false;
    while let Some(c) = chars.next() {
        match c {
            '*' if after_star => {
                return Err(err(path, "wildcard: consecutive * are not allowed"));
            }
            '*' => {
                pieces.push(std::mem::take(&mut piece).into());
                after_star = true;
                continue;
            }
            '\\' => match chars.next() {
                Some(escaped @ ('*' | '\\')) => piece.push(escaped),
                _ => {
                    return Err(err(path, "wildcard: a backslash escapes only * or \\"));
                }
            },
            c => piece.push(c),
        }
        after_star = false;
    }
    pieces.push(piece.into());
    Ok(Wildcard { pieces })
}

fn parse_anything_but(value: &Value, path: &str) -> Result<AnythingBut, PatternError> {
    const NEEDS: &str = "anything-but needs a string, a number, a list of strings or of \
                         numbers, or {prefix|suffix|equals-ignore-case|wildcard: string or list}";
    match value {
        Value::String(_) | Value::Number(_) => Ok(AnythingBut::Values(vec![exact(value)])),
        Value::Array(items) => {
            check_list(items, path)?;
            let strings = items.iter().all(Value::is_string);
            let numbers = items.iter().all(Value::is_number);
            if !strings && !numbers {
                return Err(err(
                    path,
                    "anything-but lists must be all strings or all numbers",
                ));
            }
            Ok(AnythingBut::Values(items.iter().map(exact).collect()))
        }
        Value::Object(map) if map.len() == 1 => {
            let (key, inner) = map.iter().next().expect("one entry");
            let strings = strings_of(inner).ok_or_else(|| err(path, NEEDS))?;
            check_list(&strings, path)?;
            match key.as_str() {
                "prefix" => Ok(AnythingBut::Prefix(
                    strings.iter().map(|s| (*s).into()).collect(),
                )),
                "suffix" => Ok(AnythingBut::Suffix(
                    strings.iter().map(|s| (*s).into()).collect(),
                )),
                "equals-ignore-case" => Ok(AnythingBut::EqualsIgnoreCase(
                    strings.iter().map(|s| lower(s)).collect(),
                )),
                "wildcard" => Ok(AnythingBut::Wildcard(
                    strings
                        .iter()
                        .map(|s| parse_wildcard(s, path))
                        .collect::<Result<_, _>>()?,
                )),
                _ => Err(err(path, NEEDS)),
            }
        }
        _ => Err(err(path, NEEDS)),
    }
}

/// A string, or a list of strings, as a list.
fn strings_of(value: &Value) -> Option<Vec<&str>> {
    match value {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(items) => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

fn check_list<T>(items: &[T], path: &str) -> Result<(), PatternError> {
    if items.is_empty() {
        return Err(err(path, "anything-but needs at least one value"));
    }
    if items.len() > limits::EVENT_PATTERN_VALUES_MAX {
        return Err(err(
            path,
            format!(
                "anything-but has {} values, over the limit of {}",
                items.len(),
                limits::EVENT_PATTERN_VALUES_MAX
            ),
        ));
    }
    Ok(())
}

fn parse_numeric(value: &Value, path: &str) -> Result<Range, PatternError> {
    let pairs_needed = || err(path, "numeric needs pairs of operator and number");
    let Value::Array(items) = value else {
        return Err(pairs_needed());
    };
    if items.is_empty() || items.len() % 2 != 0 {
        return Err(pairs_needed());
    }
    let mut range = Range {
        lower: None,
        upper: None,
    };
    if items.len() > 2 && items.iter().step_by(2).any(|op| op == "=") {
        return Err(err(
            path,
            "numeric: \"=\" cannot be combined with other operators",
        ));
    }
    for pair in items.chunks(2) {
        let (Some(op), Some(n)) = (pair[0].as_str(), pair[1].as_f64()) else {
            return Err(pairs_needed());
        };
        let (slot, bound) = match op {
            "=" => {
                range.lower = Some((n, true));
                range.upper = Some((n, true));
                continue;
            }
            ">" => (&mut range.lower, (n, false)),
            ">=" => (&mut range.lower, (n, true)),
            "<" => (&mut range.upper, (n, false)),
            "<=" => (&mut range.upper, (n, true)),
            other => {
                return Err(err(
                    path,
                    format!("numeric: unknown operator \"{other}\" (use =, <, <=, > or >=)"),
                ));
            }
        };
        if slot.is_some() {
            return Err(err(
                path,
                format!(
                    "numeric: more than one {} bound",
                    if op.starts_with('>') {
                        "lower"
                    } else {
                        "upper"
                    }
                ),
            ));
        }
        *slot = Some(bound);
    }
    if let (Some((lo, lo_incl)), Some((hi, hi_incl))) = (range.lower, range.upper)
        && (lo > hi || (lo == hi && !(lo_incl && hi_incl)))
    {
        return Err(err(
            path,
            "numeric: the range is empty (lower bound above upper)",
        ));
    }
    Ok(range)
}

fn parse_cidr(s: &str, path: &str) -> Result<Cidr, PatternError> {
    let bad = || {
        err(
            path,
            format!("cidr: \"{s}\" is not an IP address or a CIDR block"),
        )
    };
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    let prefix_len = match len {
        // A bare address is its own /32 or /128.
        None => bits,
        Some(len) => len
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= bits)
            .ok_or_else(bad)?,
    };
    Ok(Cidr {
        network: mask(ip, prefix_len),
        prefix_len,
    })
}

fn mask(ip: IpAddr, prefix_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4((u32::from(v4) & m).into())
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6((u128::from(v6) & m).into())
        }
    }
}

// Matching. Everything below works on borrowed values and compiled matchers: no allocation.

impl Node {
    /// `object` is the event's object at this level; `None` when there is none (a missing
    /// field, or a value that is not an object), where only `exists: false` can match.
    fn matches(&self, object: Option<&Map<String, Value>>) -> bool {
        self.fields.iter().all(|(key, field)| {
            let value = object.and_then(|o| o.get(&**key));
            match field {
                Field::Leaf(matchers) => leaf_matches(matchers, value),
                Field::Object(node) => node.matches_value(value),
            }
        }) && (self.or.is_empty() || self.or.iter().any(|branch| branch.matches(object)))
    }

    /// A nested pattern against the event's value at its field: an object, an array of
    /// which one object must match it whole, or anything else (no object there).
    fn matches_value(&self, value: Option<&Value>) -> bool {
        match value {
            Some(Value::Object(o)) => self.matches(Some(o)),
            Some(Value::Array(items)) => {
                let mut objects = false;
                for item in items {
                    if matches!(item, Value::Object(_) | Value::Array(_)) {
                        objects = true;
                        if self.matches_value(Some(item)) {
                            return true;
                        }
                    }
                }
                !objects && self.matches(None)
            }
            _ => self.matches(None),
        }
    }
}

/// Calls `f` on each leaf value (a scalar, or the scalars of arrays, however nested) until
/// it answers true.
fn any_leaf(value: Option<&Value>, f: &mut impl FnMut(&Value) -> bool) -> bool {
    match value {
        None | Some(Value::Object(_)) => false,
        Some(Value::Array(items)) => items.iter().any(|item| any_leaf(Some(item), f)),
        Some(scalar) => f(scalar),
    }
}

fn leaf_matches(matchers: &[Matcher], value: Option<&Value>) -> bool {
    matchers.iter().any(|m| match m {
        Matcher::Exists(wanted) => any_leaf(value, &mut |_| true) == *wanted,
        m => any_leaf(value, &mut |leaf| m.matches(leaf)),
    })
}

impl Matcher {
    fn matches(&self, v: &Value) -> bool {
        match self {
            Matcher::Exact(e) => e.matches(v),
            Matcher::Prefix(p) => v.as_str().is_some_and(|s| s.starts_with(&**p)),
            Matcher::PrefixIgnoreCase(p) => v.as_str().is_some_and(|s| starts_with_ic(s, p)),
            Matcher::Suffix(p) => v.as_str().is_some_and(|s| s.ends_with(&**p)),
            Matcher::SuffixIgnoreCase(p) => v.as_str().is_some_and(|s| ends_with_ic(s, p)),
            Matcher::EqualsIgnoreCase(p) => v.as_str().is_some_and(|s| equals_ic(s, p)),
            Matcher::Wildcard(w) => v.as_str().is_some_and(|s| w.matches(s)),
            Matcher::AnythingBut(a) => a.matches(v),
            Matcher::Numeric(r) => v.as_f64().is_some_and(|n| r.contains(n)),
            Matcher::Cidr(c) => v.as_str().is_some_and(|s| c.contains(s)),
            // Handled by `leaf_matches`, which sees the whole field.
            Matcher::Exists(_) => false,
        }
    }
}

impl Exact {
    fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Exact::Str(s), Value::String(e)) => **s == **e,
            (Exact::Num(n), Value::Number(e)) => e.as_f64() == Some(*n),
            (Exact::Bool(b), Value::Bool(e)) => b == e,
            (Exact::Null, Value::Null) => true,
            _ => false,
        }
    }
}

impl AnythingBut {
    fn matches(&self, v: &Value) -> bool {
        match self {
            AnythingBut::Values(values) => !values.iter().any(|e| e.matches(v)),
            AnythingBut::Prefix(ps) => v
                .as_str()
                .is_some_and(|s| !ps.iter().any(|p| s.starts_with(&**p))),
            AnythingBut::Suffix(ps) => v
                .as_str()
                .is_some_and(|s| !ps.iter().any(|p| s.ends_with(&**p))),
            AnythingBut::EqualsIgnoreCase(ps) => v
                .as_str()
                .is_some_and(|s| !ps.iter().any(|p| equals_ic(s, p))),
            AnythingBut::Wildcard(ws) => {
                v.as_str().is_some_and(|s| !ws.iter().any(|w| w.matches(s)))
            }
        }
    }
}

impl Range {
    fn contains(&self, n: f64) -> bool {
        let above = match self.lower {
            None => true,
            Some((lo, true)) => n >= lo,
            Some((lo, false)) => n > lo,
        };
        let below = match self.upper {
            None => true,
            Some((hi, true)) => n <= hi,
            Some((hi, false)) => n < hi,
        };
        above && below
    }
}

impl Wildcard {
    fn matches(&self, s: &str) -> bool {
        let (first, rest) = self.pieces.split_first().expect("at least one piece");
        let Some((last, middle)) = rest.split_last() else {
            // No `*`: the whole string.
            return s == &**first;
        };
        if s.len() < first.len() + last.len() || !s.starts_with(&**first) || !s.ends_with(&**last) {
            return false;
        }
        let mut window = &s[first.len()..s.len() - last.len()];
        for piece in middle {
            match window.find(&**piece) {
                Some(at) => window = &window[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

impl Cidr {
    fn contains(&self, s: &str) -> bool {
        s.parse::<IpAddr>().is_ok_and(|ip| {
            ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix_len) == self.network
        })
    }
}

fn folded(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars().flat_map(char::to_lowercase)
}

fn equals_ic(s: &str, lower: &str) -> bool {
    folded(s).eq(lower.chars())
}

fn starts_with_ic(s: &str, lower: &str) -> bool {
    let mut event = folded(s);
    lower.chars().all(|c| event.next() == Some(c))
}

fn ends_with_ic(s: &str, lower: &str) -> bool {
    let mut event = s.chars().rev().flat_map(|c| c.to_lowercase().rev());
    lower.chars().rev().all(|c| event.next() == Some(c))
}

/// A rule's id in a `Rules` set, chosen by whoever builds it (a trigger's index, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(pub u32);

/// The top-level fields rules are indexed by, in order of preference: the ones producers
/// set to a few exact values (`source` for CloudEvents and EventBridge, then EventBridge's
/// `detail-type` and CloudEvents' `type`).
const INDEX_FIELDS: [&str; 3] = ["source", "detail-type", "type"];

/// A set of patterns matched together.
///
/// Strategy: most rules name the producer exactly (`"source": ["orders"]`), and an event
/// has one `source`, so each rule is filed under the first of `source`, `detail-type`,
/// `type` that it constrains to exact strings only, once per string. An event then looks
/// up its own value of each of those three fields (a hash lookup each) and checks only the
/// rules filed there, plus the rules that could not be filed (prefixes, numeric ranges,
/// `$or` alone, ...), which are checked one by one. A filed rule is still matched whole,
/// so the index only skips rules that cannot match: their filed field wants a string the
/// event does not have. With 1,000 rules of which 800 are filed by `source`, an event
/// checks its few candidates and the 200 others.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<(RuleId, Pattern)>,
    index: Vec<FieldIndex>,
    /// Positions in `rules` of rules not filed under any field, ascending.
    unindexed: Vec<u32>,
}

#[derive(Debug, Clone)]
struct FieldIndex {
    field: &'static str,
    /// Value → positions in `rules` (ascending) of the rules filed under it.
    by_value: HashMap<Box<str>, Vec<u32>>,
    /// Every rule filed under this field, for an event whose value is a nested array
    /// (a shape the lookup does not follow).
    all: Vec<u32>,
}

impl Rules {
    /// Indexes the rules; their order is kept in `matching`'s answer.
    pub fn new(rules: Vec<(RuleId, Pattern)>) -> Rules {
        let mut index: Vec<FieldIndex> = INDEX_FIELDS
            .iter()
            .map(|field| FieldIndex {
                field,
                by_value: HashMap::new(),
                all: Vec::new(),
            })
            .collect();
        let mut unindexed = Vec::new();
        for (position, (_, pattern)) in rules.iter().enumerate() {
            let position = u32::try_from(position).expect("fewer than 2^32 rules");
            let filed = index.iter_mut().find_map(|fi| {
                let values = pattern.exact_strings(fi.field)?;
                for value in values {
                    let at = fi.by_value.entry(value.into()).or_default();
                    // The same value twice in one array files the rule once.
                    if at.last() != Some(&position) {
                        at.push(position);
                    }
                }
                fi.all.push(position);
                Some(())
            });
            if filed.is_none() {
                unindexed.push(position);
            }
        }
        Rules {
            rules,
            index,
            unindexed,
        }
    }

    /// How many rules the set holds.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the set holds no rule (then nothing matches).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Calls `f` with the id of every rule the event matches, each once, in no particular
    /// order. Allocates nothing.
    pub fn for_each_match(&self, event: &Value, mut f: impl FnMut(RuleId)) {
        self.for_each_position(event, |position| f(self.rules[position as usize].0));
    }

    /// The ids of the rules the event matches, in the order the rules were given.
    pub fn matching(&self, event: &Value) -> Vec<RuleId> {
        // Positions rather than ids, so the answer keeps the rules' order.
        let mut positions = Vec::new();
        self.for_each_position(event, |position| positions.push(position));
        positions.sort_unstable();
        positions
            .into_iter()
            .map(|position| self.rules[position as usize].0)
            .collect()
    }

    fn for_each_position(&self, event: &Value, mut f: impl FnMut(u32)) {
        let object = event.as_object();
        let mut check = |position: u32| {
            if self.rules[position as usize].1.matches(event) {
                f(position);
            }
        };
        for fi in &self.index {
            match object.and_then(|o| o.get(fi.field)) {
                Some(Value::String(s)) => {
                    for &position in fi.by_value.get(s.as_str()).into_iter().flatten() {
                        check(position);
                    }
                }
                Some(Value::Array(items)) if items.iter().any(Value::is_array) => {
                    fi.all.iter().for_each(|&p| check(p));
                }
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let Some(candidates) = item.as_str().and_then(|s| fi.by_value.get(s))
                        else {
                            continue;
                        };
                        for &position in candidates {
                            // Checked already if an earlier element files it too.
                            let seen = items[..i].iter().any(|earlier| {
                                earlier
                                    .as_str()
                                    .and_then(|s| fi.by_value.get(s))
                                    .is_some_and(|c| c.binary_search(&position).is_ok())
                            });
                            if !seen {
                                check(position);
                            }
                        }
                    }
                }
                // Not a string: no exact string can match it, so none of these rules can.
                _ => {}
            }
        }
        for &position in &self.unindexed {
            check(position);
        }
    }
}
