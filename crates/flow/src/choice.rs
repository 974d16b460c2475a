//! Choice rules in JSONPath mode: the boolean expressions a Choice state tests against its
//! input (`$…`) and the context object (`$$…`), checked once when the definition is read so
//! that evaluating them can only fail on the data.
//!
//! A rule is either a boolean expression (`And`, `Or`, `Not`) or a data test (`Variable`
//! and one comparison operator). Following the language's specification, a comparison whose
//! operands are not both of the operator's type is false rather than an error, and a
//! `Variable` (or an operator's `…Path`) that matches nothing is `States.Runtime`, except
//! for `IsPresent`, which exists to ask exactly that.

use std::borrow::Cow;
use std::cmp::Ordering;

use chrono::{DateTime, FixedOffset};
use serde_json::{Number, Value};

use crate::failure::Failure;
use crate::path::Path;
use crate::time;

/// One Choice rule (a top-level entry of `Choices` without its `Next`, or a nested one
/// inside And/Or/Not).
#[derive(Clone, Debug)]
pub struct Rule {
    expr: Expr,
}

#[derive(Clone, Debug)]
enum Expr {
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    Test { variable: Path, test: Test },
}

/// What a data test asks of the value its `Variable` selects.
#[derive(Clone, Debug)]
enum Test {
    Compare {
        kind: Kind,
        relation: Relation,
        operand: Operand,
    },
    Matches(Vec<Token>),
    Is {
        check: Check,
        expected: bool,
    },
}

/// The type a comparison operator works on; values of any other type never match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    String,
    Numeric,
    Boolean,
    Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relation {
    Equals,
    LessThan,
    GreaterThan,
    LessThanEquals,
    GreaterThanEquals,
}

/// The right-hand side of a comparison: a literal from the definition, or (for the `…Path`
/// operators) a path read at evaluation time.
#[derive(Clone, Debug)]
enum Operand {
    Literal(Value),
    Path(Path),
}

/// The `Is…` operators' questions about the selected value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Null,
    Present,
    Numeric,
    String,
    Boolean,
    Timestamp,
}

/// One piece of a `StringMatches` pattern: `*` matches any run of characters, everything
/// else (escapes already resolved) matches itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Any,
    Char(char),
}

/// A comparison operator's name, decoded.
enum Operator {
    Compare(Kind, Relation, bool),
    Matches,
    Is(Check),
}

impl Rule {
    /// Parses a rule from its JSON. `at` is the field's location for error messages, e.g.
    /// "Choices[0]"; errors name the exact field, e.g. "Choices[0].And[1]: unknown
    /// comparison operator 'StringEq'". Top-level keys `Next` and `Comment` are ignored (the
    /// caller reads Next); nested rules may carry a `Comment` but not a `Next`.
    pub fn parse(value: &Value, at: &str) -> Result<Rule, String> {
        parse_rule(value, at, true)
    }

    /// Whether the rule matches the state's input (`$…`) and context object (`$$…`).
    ///
    /// And and Or stop at the first rule that decides them, as the specification asks, so
    /// an `IsPresent` guard ahead of a comparison keeps a missing field from failing it.
    pub fn matches(&self, data: &Value, context: &Value) -> Result<bool, Failure> {
        match &self.expr {
            Expr::And(rules) => {
                for rule in rules {
                    if !rule.matches(data, context)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Expr::Or(rules) => {
                for rule in rules {
                    if rule.matches(data, context)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Expr::Not(rule) => Ok(!rule.matches(data, context)?),
            Expr::Test { variable, test } => test.run(variable, data, context),
        }
    }
}

impl Test {
    fn run(&self, variable: &Path, data: &Value, context: &Value) -> Result<bool, Failure> {
        // IsPresent is the one test for which a Variable matching nothing is an answer
        // rather than a failure.
        if let Test::Is {
            check: Check::Present,
            expected,
        } = self
        {
            return Ok(variable.find(data, context)?.is_some() == *expected);
        }
        let value = variable.select(data, context)?;
        match self {
            Test::Compare {
                kind,
                relation,
                operand,
            } => {
                let other = match operand {
                    Operand::Literal(literal) => Cow::Borrowed(literal),
                    Operand::Path(path) => Cow::Owned(path.select(data, context)?),
                };
                Ok(compare(*kind, &value, &other).is_some_and(|order| relation.holds(order)))
            }
            Test::Matches(pattern) => Ok(value.as_str().is_some_and(|s| wildcard(pattern, s))),
            Test::Is { check, expected } => Ok(check.holds(&value) == *expected),
        }
    }
}

impl Relation {
    fn holds(self, order: Ordering) -> bool {
        match self {
            Relation::Equals => order == Ordering::Equal,
            Relation::LessThan => order == Ordering::Less,
            Relation::GreaterThan => order == Ordering::Greater,
            Relation::LessThanEquals => order != Ordering::Greater,
            Relation::GreaterThanEquals => order != Ordering::Less,
        }
    }
}

impl Check {
    /// Whether `value` (which is present) has this property.
    fn holds(self, value: &Value) -> bool {
        match self {
            Check::Null => value.is_null(),
            Check::Present => true,
            Check::Numeric => value.is_number(),
            Check::String => value.is_string(),
            Check::Boolean => value.is_boolean(),
            Check::Timestamp => value.as_str().and_then(instant).is_some(),
        }
    }
}

/// How `a` orders against `b` under `kind`, `None` when either is not of that type (which
/// makes every relation false, as the specification asks of mismatched types).
fn compare(kind: Kind, a: &Value, b: &Value) -> Option<Ordering> {
    match (kind, a, b) {
        // Rust orders strings byte by byte, which for UTF-8 is code point order: the
        // "character-by-character" comparison with no folding or normalization.
        (Kind::String, Value::String(a), Value::String(b)) => Some(a.as_str().cmp(b.as_str())),
        (Kind::Numeric, Value::Number(a), Value::Number(b)) => compare_numbers(a, b),
        (Kind::Boolean, Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (Kind::Timestamp, Value::String(a), Value::String(b)) => {
            Some(instant(a)?.cmp(&instant(b)?))
        }
        _ => None,
    }
}

/// Numbers compare by value, whatever JSON spelling they came in (`1` equals `1.0`).
/// Integers compare exactly, so ids beyond 2^53 still tell apart; anything with a fraction
/// compares as a binary64, as the specification says interoperable numbers are.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    fn integer(n: &Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    if let (Some(a), Some(b)) = (integer(a), integer(b)) {
        return Some(a.cmp(&b));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// The instant a timestamp names, `None` when the text is not one. `time::parse_ms` decides
/// what counts as a timestamp; the instant keeps the full fraction so that two times less
/// than a millisecond apart still compare as different.
fn instant(text: &str) -> Option<DateTime<FixedOffset>> {
    time::parse_ms(text)?;
    DateTime::parse_from_rfc3339(text).ok()
}

/// Whether all of `text` matches `pattern`, `*` standing for any run of characters.
///
/// This is the usual two-pointer glob match: on a mismatch after a `*`, that star takes one
/// more character and the match resumes after it. Only the latest star needs revisiting, so
/// the work stays proportional to the pattern's length times the text's.
fn wildcard(pattern: &[Token], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // After the latest star: where the pattern resumes and where in the text it last tried.
    let mut resume: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(Token::Any) => {
                resume = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(Token::Char(c)) if *c == text[t] => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        let Some((after, tried)) = resume else {
            return false;
        };
        p = after;
        t = tried + 1;
        resume = Some((after, tried + 1));
    }
    pattern[p..].iter().all(|token| *token == Token::Any)
}

/// Reads a `StringMatches` pattern: `\*` is a literal star and `\\` a literal backslash.
/// The specification calls any other backslash an open escape and an error; it is static,
/// so it is reported with the definition rather than when the state runs.
fn parse_pattern(raw: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => tokens.push(Token::Any),
            '\\' => match chars.next() {
                Some(escaped @ ('*' | '\\')) => tokens.push(Token::Char(escaped)),
                Some(other) => {
                    return Err(format!(
                        "'{raw}' has an open escape '\\{other}': only '\\*' and '\\\\' are escapes"
                    ));
                }
                None => {
                    return Err(format!(
                        "'{raw}' ends with an open escape '\\': write '\\\\' for a backslash"
                    ));
                }
            },
            _ => tokens.push(Token::Char(c)),
        }
    }
    Ok(tokens)
}

/// Decodes a comparison operator's name, `None` when it is not one.
fn operator(name: &str) -> Option<Operator> {
    let check = match name {
        "StringMatches" => return Some(Operator::Matches),
        "IsNull" => Check::Null,
        "IsPresent" => Check::Present,
        "IsNumeric" => Check::Numeric,
        "IsString" => Check::String,
        "IsBoolean" => Check::Boolean,
        "IsTimestamp" => Check::Timestamp,
        _ => {
            let (name, path) = match name.strip_suffix("Path") {
                Some(name) => (name, true),
                None => (name, false),
            };
            let (kind, relation) = [
                ("String", Kind::String),
                ("Numeric", Kind::Numeric),
                ("Boolean", Kind::Boolean),
                ("Timestamp", Kind::Timestamp),
            ]
            .into_iter()
            .find_map(|(prefix, kind)| name.strip_prefix(prefix).map(|rest| (kind, rest)))?;
            let relation = match relation {
                "Equals" => Relation::Equals,
                "LessThan" => Relation::LessThan,
                "GreaterThan" => Relation::GreaterThan,
                "LessThanEquals" => Relation::LessThanEquals,
                "GreaterThanEquals" => Relation::GreaterThanEquals,
                _ => return None,
            };
            // Booleans have no order, so the language only offers BooleanEquals.
            if kind == Kind::Boolean && relation != Relation::Equals {
                return None;
            }
            return Some(Operator::Compare(kind, relation, path));
        }
    };
    Some(Operator::Is(check))
}

fn parse_rule(value: &Value, at: &str, top: bool) -> Result<Rule, String> {
    let Value::Object(fields) = value else {
        return Err(format!(
            "{at}: a Choice rule must be an object, not {}",
            crate::failure::kind_of(value)
        ));
    };
    let mut variable = None;
    // The fields that say what kind of rule this is; exactly one is allowed.
    let mut heads: Vec<(&str, &Value)> = Vec::new();
    for (key, field) in fields {
        match key.as_str() {
            "Comment" => {}
            "Next" if top => {}
            "Next" => {
                return Err(format!(
                    "{at}.Next: a rule nested in And, Or or Not cannot have Next; only a \
                     top-level Choice rule says where to go"
                ));
            }
            "Variable" => variable = Some(field),
            "And" | "Or" | "Not" => heads.push((key, field)),
            name if operator(name).is_some() => heads.push((key, field)),
            name => return Err(format!("{at}: unknown comparison operator '{name}'")),
        }
    }
    let (head, field) = match heads.as_slice() {
        [one] => *one,
        [] if variable.is_some() => {
            return Err(format!(
                "{at}: a rule with a Variable needs a comparison operator"
            ));
        }
        [] => {
            return Err(format!(
                "{at}: a rule needs And, Or, Not, or a Variable and a comparison operator"
            ));
        }
        [first, second, ..] => {
            return Err(format!(
                "{at}: a rule has exactly one of And, Or, Not or a comparison operator, not \
                 both '{}' and '{}'",
                first.0, second.0
            ));
        }
    };
    let field_at = format!("{at}.{head}");
    let expr = match head {
        "And" | "Or" | "Not" if variable.is_some() => {
            return Err(format!(
                "{at}.Variable: a rule with {head} has no Variable; put data tests inside it"
            ));
        }
        "And" | "Or" => {
            let rules = match field {
                Value::Array(items) if !items.is_empty() => items
                    .iter()
                    .enumerate()
                    .map(|(n, item)| parse_rule(item, &format!("{field_at}[{n}]"), false))
                    .collect::<Result<Vec<_>, _>>()?,
                _ => {
                    return Err(format!(
                        "{field_at}: must be a non-empty array of rules, not {}",
                        crate::failure::kind_of(field)
                    ));
                }
            };
            if head == "And" {
                Expr::And(rules)
            } else {
                Expr::Or(rules)
            }
        }
        "Not" => {
            if !field.is_object() {
                return Err(format!(
                    "{field_at}: must be one rule (an object), not {}",
                    crate::failure::kind_of(field)
                ));
            }
            Expr::Not(Box::new(parse_rule(field, &field_at, false)?))
        }
        name => {
            let Some(variable) = variable else {
                return Err(format!("{at}: {name} needs a Variable to test"));
            };
            let variable = match variable {
                Value::String(raw) => {
                    Path::parse(raw).map_err(|e| format!("{at}.Variable: {e}"))?
                }
                other => {
                    return Err(format!(
                        "{at}.Variable: must be a path (a string), not {}",
                        crate::failure::kind_of(other)
                    ));
                }
            };
            let test = parse_test(name, field, &field_at)?;
            Expr::Test { variable, test }
        }
    };
    Ok(Rule { expr })
}

/// Checks an operator's value against what the operator needs, so that a definition with a
/// wrongly typed operand is refused up front instead of quietly never matching.
fn parse_test(name: &str, field: &Value, at: &str) -> Result<Test, String> {
    let Some(operator) = operator(name) else {
        return Err(format!("{at}: unknown comparison operator '{name}'"));
    };
    let wrong = |needs: &str| {
        format!(
            "{at}: must be {needs}, not {}",
            crate::failure::kind_of(field)
        )
    };
    Ok(match operator {
        Operator::Is(check) => {
            let Value::Bool(expected) = field else {
                return Err(wrong("true or false"));
            };
            Test::Is {
                check,
                expected: *expected,
            }
        }
        Operator::Matches => {
            let Value::String(raw) = field else {
                return Err(wrong("a string pattern"));
            };
            Test::Matches(parse_pattern(raw).map_err(|e| format!("{at}: {e}"))?)
        }
        Operator::Compare(kind, relation, true) => {
            let Value::String(raw) = field else {
                return Err(wrong("a path (a string)"));
            };
            let path = Path::parse(raw).map_err(|e| format!("{at}: {e}"))?;
            Test::Compare {
                kind,
                relation,
                operand: Operand::Path(path),
            }
        }
        Operator::Compare(kind, relation, false) => {
            match (kind, field) {
                (Kind::String, Value::String(_))
                | (Kind::Numeric, Value::Number(_))
                | (Kind::Boolean, Value::Bool(_)) => {}
                (Kind::Timestamp, Value::String(raw)) => {
                    if instant(raw).is_none() {
                        return Err(format!(
                            "{at}: '{raw}' is not an RFC 3339 timestamp (such as \
                             2016-03-14T01:59:00Z)"
                        ));
                    }
                }
                (Kind::String, _) => return Err(wrong("a string")),
                (Kind::Numeric, _) => return Err(wrong("a number")),
                (Kind::Boolean, _) => return Err(wrong("true or false")),
                (Kind::Timestamp, _) => return Err(wrong("a timestamp string")),
            }
            Test::Compare {
                kind,
                relation,
                operand: Operand::Literal(field.clone()),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context() -> Value {
        json!({
            "Execution": {"Name": "nightly-1", "StartTime": "2024-05-01T10:00:00Z"},
            "State": {"Name": "Route", "EnteredTime": "2024-05-01T10:00:05.250Z"}
        })
    }

    fn parse(rule: Value) -> Rule {
        Rule::parse(&rule, "Choices[0]").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether `rule` matches `data`; panics on a parse error or a run-time failure.
    fn check(rule: Value, data: Value) -> bool {
        parse(rule)
            .matches(&data, &context())
            .unwrap_or_else(|f| panic!("{f}"))
    }

    /// The run-time failure of `rule` on `data`.
    fn failure(rule: Value, data: Value) -> Failure {
        match parse(rule).matches(&data, &context()) {
            Ok(matched) => panic!("expected a failure, got {matched}"),
            Err(failure) => failure,
        }
    }

    /// The parse error of `rule` at `Choices[0]`.
    fn error(rule: Value) -> String {
        match Rule::parse(&rule, "Choices[0]") {
            Ok(parsed) => panic!("expected an error, got {parsed:?}"),
            Err(e) => e,
        }
    }

    fn test(op: &str, operand: Value, value: Value) -> bool {
        let mut rule = json!({"Variable": "$.v"});
        rule[op] = operand;
        check(rule, json!({ "v": value }))
    }

    #[test]
    fn string_comparisons_order_by_code_point() {
        assert!(test("StringEquals", json!("abc"), json!("abc")));
        assert!(!test("StringEquals", json!("abc"), json!("Abc")));
        assert!(!test("StringEquals", json!(""), json!(" ")));
        assert!(test("StringLessThan", json!("b"), json!("a")));
        assert!(!test("StringLessThan", json!("a"), json!("a")));
        assert!(test("StringGreaterThan", json!("a"), json!("b")));
        assert!(!test("StringGreaterThan", json!("b"), json!("a")));
        assert!(test("StringLessThanEquals", json!("a"), json!("a")));
        assert!(!test("StringLessThanEquals", json!("a"), json!("b")));
        assert!(test("StringGreaterThanEquals", json!("a"), json!("a")));
        assert!(!test("StringGreaterThanEquals", json!("b"), json!("a")));
        // Upper case sorts before lower case, and non-ASCII after both: no folding.
        assert!(test("StringLessThan", json!("a"), json!("Z")));
        assert!(test("StringGreaterThan", json!("z"), json!("é")));
        assert!(test("StringLessThan", json!("abc"), json!("ab")));
    }

    #[test]
    fn mismatched_types_never_match() {
        assert!(!test("StringEquals", json!("1"), json!(1)));
        assert!(!test("StringLessThan", json!("z"), json!(null)));
        assert!(!test("NumericEquals", json!(1), json!("1")));
        assert!(!test("NumericLessThan", json!(10), json!([1])));
        assert!(!test("BooleanEquals", json!(true), json!("true")));
        assert!(!test("BooleanEquals", json!(false), json!(0)));
        assert!(!test(
            "TimestampEquals",
            json!("2024-01-01T00:00:00Z"),
            json!(0)
        ));
        assert!(!test(
            "TimestampLessThan",
            json!("2024-01-01T00:00:00Z"),
            json!("soon")
        ));
        assert!(!test("StringMatches", json!("*"), json!(5)));
        // A mismatch is false, so Not of it is true.
        assert!(check(
            json!({"Not": {"Variable": "$.v", "StringEquals": "1"}}),
            json!({"v": 1})
        ));
    }

    #[test]
    fn string_matches_uses_only_star_as_a_wildcard() {
        let matches =
            |pattern: &str, text: &str| test("StringMatches", json!(pattern), json!(text));
        assert!(matches("log-*.txt", "log-2024-05-01.txt"));
        assert!(matches("log-*.txt", "log-.txt"));
        assert!(!matches("log-*.txt", "log.txt"));
        assert!(!matches("log-*.txt", "log-1.txt.bak"));
        assert!(!matches("log-*.txt", "xlog-1.txt"));
        assert!(matches("foo*.*", "foobar.zebra"));
        assert!(matches("*.log", "zebra.log"));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
        assert!(matches("**", "anything"));
        // A star alone matches every string, the empty one included.
        assert!(matches("*", ""));
        assert!(matches("*", "any thing at all"));
        // An empty pattern matches only the empty string.
        assert!(matches("", ""));
        assert!(!matches("", "a"));
        // No character but the star is special: no `?`, no regex, no case folding.
        assert!(!matches("a?c", "abc"));
        assert!(matches("a?c", "a?c"));
        assert!(matches("a.c", "a.c"));
        assert!(!matches("a.c", "abc"));
        assert!(!matches("ABC", "abc"));
        assert!(matches("日本*", "日本語"));
        // `\*` is a literal star and `\\` a literal backslash (doubled again in JSON).
        assert!(matches(r"file\*.txt", "file*.txt"));
        assert!(!matches(r"file\*.txt", "file1.txt"));
        assert!(matches(r"a\\b", r"a\b"));
        assert!(matches(r"a\\*", r"a\anything"));
        assert!(!matches(r"a\\*", "a"));
        assert!(matches(r"\**", "*star"));
        assert!(!matches(r"\**", "star"));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(test("NumericEquals", json!(1), json!(1)));
        assert!(test("NumericEquals", json!(1), json!(1.0)));
        assert!(test("NumericEquals", json!(1.5), json!(1.5)));
        assert!(!test("NumericEquals", json!(1), json!(2)));
        assert!(test("NumericLessThan", json!(0), json!(-1)));
        assert!(!test("NumericLessThan", json!(1), json!(1.0)));
        assert!(test("NumericGreaterThan", json!(2), json!(2.5)));
        assert!(!test("NumericGreaterThan", json!(2.5), json!(2)));
        assert!(test("NumericLessThanEquals", json!(2), json!(2.0)));
        assert!(!test("NumericLessThanEquals", json!(2), json!(2.01)));
        assert!(test("NumericGreaterThanEquals", json!(-3), json!(-3)));
        assert!(!test("NumericGreaterThanEquals", json!(-3), json!(-3.5)));
        // Large integers compare exactly rather than through binary64.
        assert!(!test(
            "NumericEquals",
            json!(9_007_199_254_740_992_u64),
            json!(9_007_199_254_740_993_u64)
        ));
        assert!(test("NumericGreaterThan", json!(-1), json!(u64::MAX)));
    }

    #[test]
    fn booleans_only_equal() {
        assert!(test("BooleanEquals", json!(true), json!(true)));
        assert!(test("BooleanEquals", json!(false), json!(false)));
        assert!(!test("BooleanEquals", json!(true), json!(false)));
        assert!(
            error(json!({"Variable": "$.v", "BooleanLessThan": true}))
                .contains("unknown comparison operator 'BooleanLessThan'")
        );
    }

    #[test]
    fn timestamps_compare_as_instants() {
        let noon = json!("2024-05-01T12:00:00Z");
        assert!(test(
            "TimestampEquals",
            noon.clone(),
            json!("2024-05-01T12:00:00Z")
        ));
        assert!(test(
            "TimestampEquals",
            noon.clone(),
            json!("2024-05-01T14:00:00+02:00")
        ));
        assert!(test(
            "TimestampEquals",
            noon.clone(),
            json!("2024-05-01T12:00:00.000Z")
        ));
        assert!(!test(
            "TimestampEquals",
            noon.clone(),
            json!("2024-05-01T12:00:01Z")
        ));
        assert!(test(
            "TimestampLessThan",
            noon.clone(),
            json!("2024-05-01T11:59:59.999Z")
        ));
        assert!(!test(
            "TimestampLessThan",
            noon.clone(),
            json!("2024-05-01T12:00:00Z")
        ));
        assert!(test(
            "TimestampGreaterThan",
            noon.clone(),
            json!("2024-05-01T12:00:00.000001Z")
        ));
        assert!(!test(
            "TimestampGreaterThan",
            noon.clone(),
            json!("2024-05-01T13:00:00+02:00")
        ));
        assert!(test(
            "TimestampLessThanEquals",
            noon.clone(),
            json!("2024-05-01T12:00:00Z")
        ));
        assert!(!test(
            "TimestampLessThanEquals",
            noon.clone(),
            json!("2024-05-02T00:00:00Z")
        ));
        assert!(test(
            "TimestampGreaterThanEquals",
            noon.clone(),
            json!("2024-05-01T12:00:00Z")
        ));
        assert!(!test(
            "TimestampGreaterThanEquals",
            noon.clone(),
            json!("2024-04-30T23:00:00Z")
        ));
        // Text that only looks like a timestamp is not one, so nothing matches it.
        assert!(!test(
            "TimestampEquals",
            noon.clone(),
            json!("2024-05-01 12:00:00Z")
        ));
        assert!(!test("TimestampLessThan", noon, json!("2024-05-01")));
    }

    #[test]
    fn type_tests_compare_with_their_flag() {
        assert!(test("IsNull", json!(true), json!(null)));
        assert!(!test("IsNull", json!(true), json!(0)));
        assert!(test("IsNull", json!(false), json!("")));
        assert!(!test("IsNull", json!(false), json!(null)));
        assert!(test("IsNumeric", json!(true), json!(1.5)));
        assert!(!test("IsNumeric", json!(true), json!("1.5")));
        assert!(test("IsNumeric", json!(false), json!("1.5")));
        assert!(test("IsString", json!(true), json!("")));
        assert!(!test("IsString", json!(true), json!(null)));
        assert!(test("IsString", json!(false), json!({})));
        assert!(test("IsBoolean", json!(true), json!(false)));
        assert!(!test("IsBoolean", json!(true), json!("false")));
        assert!(test("IsBoolean", json!(false), json!(1)));
        assert!(test(
            "IsTimestamp",
            json!(true),
            json!("2016-03-14T01:59:00Z")
        ));
        assert!(test(
            "IsTimestamp",
            json!(true),
            json!("2016-03-14T01:59:00.5-07:00")
        ));
        assert!(!test("IsTimestamp", json!(true), json!("2016-03-14")));
        assert!(!test("IsTimestamp", json!(true), json!(1_457_920_740)));
        assert!(test("IsTimestamp", json!(false), json!("tomorrow")));
        // A timestamp is still a string, for the string tests and comparisons alike.
        assert!(test("IsString", json!(true), json!("2016-03-14T01:59:00Z")));
    }

    #[test]
    fn is_present_asks_whether_the_path_matches() {
        let data = json!({"a": {"b": null}, "list": [1]});
        let present = |path: &str, flag: bool| {
            check(json!({"Variable": path, "IsPresent": flag}), data.clone())
        };
        assert!(present("$.a", true));
        assert!(present("$.a.b", true), "a null field is present");
        assert!(present("$.list[0]", true));
        assert!(!present("$.missing", true));
        assert!(!present("$.a.b.c", true));
        assert!(!present("$.list[3]", true));
        assert!(present("$.missing", false));
        assert!(!present("$.a", false));
        assert!(present("$$.Execution.Name", true));
        assert!(!present("$$.Execution.Missing", true));
    }

    #[test]
    fn a_missing_variable_is_a_runtime_failure() {
        for (op, operand) in [
            ("StringEquals", json!("x")),
            ("NumericEquals", json!(1)),
            ("BooleanEquals", json!(true)),
            ("TimestampEquals", json!("2024-01-01T00:00:00Z")),
            ("StringMatches", json!("*")),
            ("IsNull", json!(true)),
            ("IsNull", json!(false)),
            ("IsString", json!(false)),
            ("IsTimestamp", json!(false)),
        ] {
            let mut rule = json!({"Variable": "$.missing"});
            rule[op] = operand;
            let failure = failure(rule, json!({"present": 1}));
            assert_eq!(failure.error, "States.Runtime", "{op}");
            assert!(failure.cause.contains("$.missing"), "{failure}");
        }
        // An IsPresent guard ahead in an And keeps the comparison from running.
        let guarded = json!({"And": [
            {"Variable": "$.maybe", "IsPresent": true},
            {"Variable": "$.maybe", "StringEquals": "foo"}
        ]});
        assert!(!check(guarded.clone(), json!({})));
        assert!(check(guarded, json!({"maybe": "foo"})));
        // Or stops at its first true rule too.
        let or = json!({"Or": [
            {"Variable": "$.maybe", "IsPresent": false},
            {"Variable": "$.maybe", "NumericEquals": 1}
        ]});
        assert!(check(or.clone(), json!({})));
        assert!(check(or.clone(), json!({"maybe": 1})));
        assert!(!check(or, json!({"maybe": 2})));
        // Rules that do run still fail on a missing Variable.
        let unguarded = json!({"And": [
            {"Variable": "$.here", "IsNull": false},
            {"Variable": "$.gone", "NumericEquals": 1}
        ]});
        assert_eq!(
            failure(unguarded, json!({"here": 1})).error,
            "States.Runtime"
        );
    }

    #[test]
    fn path_operators_compare_with_another_value() {
        let data = json!({
            "name": "ada", "same": "ada", "other": "bob",
            "rating": 90, "threshold": 80.0,
            "flag": true, "yes": true,
            "due": "2024-05-01T12:00:00Z", "now": "2024-05-01T13:00:00+02:00",
        });
        let cmp = |variable: &str, op: &str, path: &str| {
            let mut rule = json!({ "Variable": variable });
            rule[op] = json!(path);
            check(rule, data.clone())
        };
        assert!(cmp("$.name", "StringEqualsPath", "$.same"));
        assert!(!cmp("$.name", "StringEqualsPath", "$.other"));
        assert!(cmp("$.name", "StringLessThanPath", "$.other"));
        assert!(cmp("$.other", "StringGreaterThanPath", "$.name"));
        assert!(cmp("$.name", "StringLessThanEqualsPath", "$.same"));
        assert!(!cmp("$.other", "StringLessThanEqualsPath", "$.name"));
        assert!(cmp("$.name", "StringGreaterThanEqualsPath", "$.same"));
        assert!(cmp("$.rating", "NumericGreaterThanPath", "$.threshold"));
        assert!(!cmp("$.rating", "NumericEqualsPath", "$.threshold"));
        assert!(cmp("$.threshold", "NumericLessThanPath", "$.rating"));
        assert!(cmp("$.rating", "NumericLessThanEqualsPath", "$.rating"));
        assert!(cmp(
            "$.rating",
            "NumericGreaterThanEqualsPath",
            "$.threshold"
        ));
        assert!(cmp("$.flag", "BooleanEqualsPath", "$.yes"));
        // `now` is 11:00 UTC, an hour before `due`.
        assert!(!cmp("$.due", "TimestampLessThanPath", "$.now"));
        assert!(!cmp("$.due", "TimestampEqualsPath", "$.now"));
        assert!(cmp("$.due", "TimestampLessThanEqualsPath", "$.due"));
        assert!(cmp("$.now", "TimestampLessThanPath", "$.due"));
        assert!(cmp("$.due", "TimestampGreaterThanEqualsPath", "$.now"));
        assert!(cmp(
            "$.due",
            "TimestampGreaterThanPath",
            "$$.Execution.StartTime"
        ));
        // Mismatched types through a path are false too.
        assert!(!cmp("$.name", "NumericEqualsPath", "$.rating"));
        assert!(!cmp("$.rating", "StringEqualsPath", "$.name"));
        assert!(!cmp("$.name", "TimestampEqualsPath", "$.due"));
        // A second path that matches nothing fails the state.
        let missing = failure(
            json!({"Variable": "$.name", "StringEqualsPath": "$.nowhere"}),
            data.clone(),
        );
        assert_eq!(missing.error, "States.Runtime");
        assert!(missing.cause.contains("$.nowhere"), "{missing}");
    }

    #[test]
    fn context_object_paths() {
        assert!(check(
            json!({"Variable": "$$.Execution.Name", "StringEquals": "nightly-1"}),
            json!({})
        ));
        assert!(check(
            json!({"Variable": "$$.Execution.Name", "StringMatches": "nightly-*"}),
            json!({})
        ));
        assert!(check(
            json!({"Variable": "$$.State.EnteredTime", "TimestampGreaterThan": "2024-05-01T10:00:05Z"}),
            json!({})
        ));
        assert!(check(
            json!({"Variable": "$.name", "StringEqualsPath": "$$.State.Name"}),
            json!({"name": "Route"})
        ));
        let missing = failure(
            json!({"Variable": "$$.Map.Item.Index", "NumericEquals": 0}),
            json!({}),
        );
        assert_eq!(missing.error, "States.Runtime");
        assert!(missing.cause.contains("context object"), "{missing}");
    }

    #[test]
    fn boolean_expressions_nest() {
        let data = json!({"type": "Private", "value": 22, "tags": ["a", "b"]});
        let twenties = json!({"And": [
            {"Variable": "$.value", "IsNumeric": true},
            {"Variable": "$.value", "NumericGreaterThanEquals": 20},
            {"Variable": "$.value", "NumericLessThan": 30}
        ]});
        assert!(check(twenties.clone(), data.clone()));
        assert!(!check(twenties.clone(), json!({"type": "x", "value": 30})));
        assert!(!check(
            json!({"Not": {"Variable": "$.type", "StringEquals": "Private"}}),
            data.clone()
        ));
        assert!(check(
            json!({"Not": {"Not": {"Variable": "$.type", "StringEquals": "Private"}}}),
            data.clone()
        ));
        assert!(check(
            json!({"Or": [
                {"Variable": "$.type", "StringEquals": "Public"},
                twenties.clone()
            ]}),
            data.clone()
        ));
        assert!(!check(
            json!({"Or": [
                {"Variable": "$.type", "StringEquals": "Public"},
                {"Not": twenties.clone()}
            ]}),
            data.clone()
        ));
        assert!(check(
            json!({"And": [
                {"Or": [
                    {"Variable": "$.value", "NumericEquals": 1},
                    {"Not": {"Variable": "$.type", "IsNull": true}}
                ]},
                {"Variable": "$.tags[1]", "StringEquals": "b"},
                {"Not": {"And": [{"Variable": "$.value", "IsString": true}]}}
            ]}),
            data.clone()
        ));
        // An indefinite path selects the array of its matches, which no scalar test equals.
        assert!(!check(
            json!({"Variable": "$.tags[*]", "StringEquals": "a"}),
            data
        ));
    }

    #[test]
    fn top_level_next_and_comments_are_ignored() {
        assert!(check(
            json!({"Variable": "$.v", "NumericEquals": 1, "Next": "Done", "Comment": "one"}),
            json!({"v": 1})
        ));
        assert!(check(
            json!({"And": [{"Variable": "$.v", "IsNumeric": true, "Comment": "why"}], "Next": "Done"}),
            json!({"v": 1})
        ));
    }

    #[test]
    fn parse_errors_name_the_field() {
        let cases = [
            (
                json!({"And": [{"Variable": "$.a", "IsNull": true}, {"Variable": "$.a", "StringEq": "x"}]}),
                "Choices[0].And[1]: unknown comparison operator 'StringEq'",
            ),
            (
                json!({"Variable": "$.a", "StringMatchesPath": "$.b"}),
                "Choices[0]: unknown comparison operator 'StringMatchesPath'",
            ),
            (
                json!({"Variable": "x.a", "IsNull": true}),
                "Choices[0].Variable: 'x.a' is not a path",
            ),
            (
                json!({"Variable": "$.a[", "IsNull": true}),
                "Choices[0].Variable: '$.a[' is not a valid JSONPath",
            ),
            (
                json!({"Variable": 5, "IsNull": true}),
                "Choices[0].Variable: must be a path (a string), not a number",
            ),
            (
                json!({"Variable": "$.a", "StringEquals": 5}),
                "Choices[0].StringEquals: must be a string, not a number",
            ),
            (
                json!({"Variable": "$.a", "StringLessThan": null}),
                "Choices[0].StringLessThan: must be a string, not null",
            ),
            (
                json!({"Variable": "$.a", "NumericEquals": "5"}),
                "Choices[0].NumericEquals: must be a number, not a string",
            ),
            (
                json!({"Variable": "$.a", "BooleanEquals": "true"}),
                "Choices[0].BooleanEquals: must be true or false, not a string",
            ),
            (
                json!({"Variable": "$.a", "TimestampEquals": "yesterday"}),
                "Choices[0].TimestampEquals: 'yesterday' is not an RFC 3339 timestamp",
            ),
            (
                json!({"Variable": "$.a", "TimestampLessThan": 0}),
                "Choices[0].TimestampLessThan: must be a timestamp string, not a number",
            ),
            (
                json!({"Variable": "$.a", "StringEqualsPath": "b"}),
                "Choices[0].StringEqualsPath: 'b' is not a path",
            ),
            (
                json!({"Variable": "$.a", "NumericLessThanPath": 3}),
                "Choices[0].NumericLessThanPath: must be a path (a string), not a number",
            ),
            (
                json!({"Variable": "$.a", "IsPresent": "yes"}),
                "Choices[0].IsPresent: must be true or false, not a string",
            ),
            (
                json!({"Variable": "$.a", "IsTimestamp": 1}),
                "Choices[0].IsTimestamp: must be true or false, not a number",
            ),
            (
                json!({"Variable": "$.a", "StringMatches": 5}),
                "Choices[0].StringMatches: must be a string pattern, not a number",
            ),
            (
                json!({"Variable": "$.a", "StringMatches": "a\\b"}),
                "Choices[0].StringMatches: 'a\\b' has an open escape",
            ),
            (
                json!({"Variable": "$.a", "StringMatches": "a\\"}),
                "Choices[0].StringMatches: 'a\\' ends with an open escape",
            ),
            (
                json!({"And": []}),
                "Choices[0].And: must be a non-empty array of rules, not an array",
            ),
            (
                json!({"Or": {"Variable": "$.a", "IsNull": true}}),
                "Choices[0].Or: must be a non-empty array of rules, not an object",
            ),
            (
                json!({"Or": [{"Variable": "$.a", "IsNull": true}, 3]}),
                "Choices[0].Or[1]: a Choice rule must be an object, not a number",
            ),
            (
                json!({"Not": [{"Variable": "$.a", "IsNull": true}]}),
                "Choices[0].Not: must be one rule (an object), not an array",
            ),
            (
                json!({"Not": {"Variable": "$.a", "IsNull": true, "Next": "X"}}),
                "Choices[0].Not.Next: a rule nested in And, Or or Not cannot have Next",
            ),
            (
                json!({"Not": {"Variable": "$.a"}}),
                "Choices[0].Not: a rule with a Variable needs a comparison operator",
            ),
            (
                json!({"Or": [{"And": [{"Variable": "$.a", "NumericEquals": "1"}]}]}),
                "Choices[0].Or[0].And[0].NumericEquals: must be a number, not a string",
            ),
            (
                json!({"IsNull": true}),
                "Choices[0]: IsNull needs a Variable to test",
            ),
            (
                json!({"Next": "X"}),
                "Choices[0]: a rule needs And, Or, Not, or a Variable and a comparison operator",
            ),
            (
                json!({"Variable": "$.a", "IsNull": true, "StringEquals": "x"}),
                "Choices[0]: a rule has exactly one of And, Or, Not or a comparison operator",
            ),
            (
                json!({"Variable": "$.a", "And": [{"Variable": "$.a", "IsNull": true}]}),
                "Choices[0].Variable: a rule with And has no Variable",
            ),
            (
                json!("$.a"),
                "Choices[0]: a Choice rule must be an object, not a string",
            ),
        ];
        for (rule, expected) in cases {
            let error = error(rule.clone());
            assert!(
                error.starts_with(expected),
                "{rule}: got {error:?}, expected {expected:?}"
            );
        }
    }
}
