//! Intrinsic functions of Amazon States Language in JSONPath mode (`States.Format(…)`,
//! `States.ArrayRange(…)`, …): parsed once when a definition is loaded, evaluated against a
//! state's data and the context object each time the state runs.
//!
//! A call's arguments are string literals in single quotes (with the escapes `\'`, `\{`,
//! `\}` and `\\`), numbers, `true`, `false`, `null`, paths (`$…` on the data, `$$…` on the
//! context object) and nested calls. Mistakes that can be seen in the text (an unknown
//! function, a wrong number of arguments, a bad literal or path, an unbalanced parenthesis
//! or quote) are definition errors; mistakes that depend on the data are
//! `States.IntrinsicFailure` when the call runs.

use std::fmt::Display;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde_json::{Map, Value};
use sha2::Digest as _;

use crate::failure::Failure;
use crate::path::Path;
use crate::rng::Rng;

/// How deep calls may nest. AWS documents a limit of 10; keeping it also bounds the
/// parser's recursion, so a hostile definition cannot overflow the stack.
const MAX_DEPTH: usize = 10;

/// The most characters `States.Base64Encode`, `States.Base64Decode` and `States.Hash` take.
const MAX_TEXT_CHARS: usize = 10_000;

/// The most elements `States.ArrayRange` may produce.
const MAX_RANGE_ITEMS: i128 = 1000;

/// The range `States.MathAdd` accepts for each operand (a Java `int` in AWS).
const MATH_ADD_RANGE: std::ops::RangeInclusive<i64> = i32::MIN as i64..=i32::MAX as i64;

/// Decoding accepts text with or without padding, since MIME Base64 (what AWS documents)
/// is lenient about it.
const DECODER: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The functions of the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Function {
    Format,
    StringToJson,
    JsonToString,
    Array,
    ArrayPartition,
    ArrayContains,
    ArrayRange,
    ArrayGetItem,
    ArrayLength,
    ArrayUnique,
    Base64Encode,
    Base64Decode,
    Hash,
    JsonMerge,
    MathRandom,
    MathAdd,
    StringSplit,
    Uuid,
}

impl Function {
    const ALL: [Function; 18] = [
        Function::Format,
        Function::StringToJson,
        Function::JsonToString,
        Function::Array,
        Function::ArrayPartition,
        Function::ArrayContains,
        Function::ArrayRange,
        Function::ArrayGetItem,
        Function::ArrayLength,
        Function::ArrayUnique,
        Function::Base64Encode,
        Function::Base64Decode,
        Function::Hash,
        Function::JsonMerge,
        Function::MathRandom,
        Function::MathAdd,
        Function::StringSplit,
        Function::Uuid,
    ];

    fn name(self) -> &'static str {
        match self {
            Function::Format => "States.Format",
            Function::StringToJson => "States.StringToJson",
            Function::JsonToString => "States.JsonToString",
            Function::Array => "States.Array",
            Function::ArrayPartition => "States.ArrayPartition",
            Function::ArrayContains => "States.ArrayContains",
            Function::ArrayRange => "States.ArrayRange",
            Function::ArrayGetItem => "States.ArrayGetItem",
            Function::ArrayLength => "States.ArrayLength",
            Function::ArrayUnique => "States.ArrayUnique",
            Function::Base64Encode => "States.Base64Encode",
            Function::Base64Decode => "States.Base64Decode",
            Function::Hash => "States.Hash",
            Function::JsonMerge => "States.JsonMerge",
            Function::MathRandom => "States.MathRandom",
            Function::MathAdd => "States.MathAdd",
            Function::StringSplit => "States.StringSplit",
            Function::Uuid => "States.UUID",
        }
    }

    fn from_name(name: &str) -> Option<Function> {
        Function::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The fewest and the most arguments the function takes (`None`: no most).
    fn arity(self) -> (usize, Option<usize>) {
        match self {
            Function::Uuid => (0, Some(0)),
            Function::Array => (0, None),
            Function::Format => (1, None),
            Function::StringToJson
            | Function::JsonToString
            | Function::ArrayLength
            | Function::ArrayUnique
            | Function::Base64Encode
            | Function::Base64Decode => (1, Some(1)),
            Function::ArrayPartition
            | Function::ArrayContains
            | Function::ArrayGetItem
            | Function::Hash
            | Function::MathAdd
            | Function::StringSplit => (2, Some(2)),
            Function::MathRandom => (2, Some(3)),
            Function::ArrayRange | Function::JsonMerge => (3, Some(3)),
        }
    }
}

/// A string literal. `States.Format` must tell a placeholder `{}` from escaped braces
/// (`\{\}`), which the unescaped text no longer can, so the placeholders' byte offsets
/// are kept from parsing.
#[derive(Clone, Debug)]
struct Text {
    value: String,
    holes: Vec<usize>,
}

/// One argument of a call.
#[derive(Clone, Debug)]
enum Arg {
    /// A number, `true`, `false` or `null`.
    Literal(Value),
    Text(Text),
    Path(Path),
    Call(Intrinsic),
}

/// A parsed intrinsic function call, e.g. `States.Format('Hello {}', $.name)`.
#[derive(Clone, Debug)]
pub struct Intrinsic {
    function: Function,
    args: Vec<Arg>,
}

/// Whether a string value is an intrinsic call (starts with `States.` and a name followed by
/// `(`), so a Parameters `.$` value can be told from a path.
pub fn is_intrinsic(text: &str) -> bool {
    text.strip_prefix("States.").is_some_and(|rest| {
        let name = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        name > 0 && rest[name..].starts_with('(')
    })
}

impl Intrinsic {
    /// Parses the call at definition time; the error says what is wrong (unknown function,
    /// wrong number of arguments where fixed, bad literal, bad path, unbalanced parenthesis
    /// or quote).
    pub fn parse(text: &str) -> Result<Intrinsic, String> {
        let mut parser = Parser {
            chars: text.chars().collect(),
            pos: 0,
        };
        parser.skip_whitespace();
        let call = parser.call(1)?;
        parser.skip_whitespace();
        if let Some(c) = parser.peek() {
            return Err(format!(
                "unexpected '{c}' after the closing parenthesis of {} in '{text}'",
                call.function.name()
            ));
        }
        Ok(call)
    }

    /// Evaluates against the state's data (`$…` paths) and context object (`$$…`). Bad
    /// arguments are `States.IntrinsicFailure`; a path that matches nothing is the path's
    /// own `States.Runtime` failure.
    pub fn eval(&self, data: &Value, context: &Value, rng: &mut Rng) -> Result<Value, Failure> {
        // Arguments are evaluated left to right before the function runs, so nested calls
        // draw from `rng` in the order they are written.
        let mut values = Vec::with_capacity(self.args.len());
        for arg in &self.args {
            values.push(match arg {
                Arg::Literal(value) => value.clone(),
                Arg::Text(text) => Value::String(text.value.clone()),
                Arg::Path(path) => path.select(data, context)?,
                Arg::Call(call) => call.eval(data, context, rng)?,
            });
        }
        // Arity was checked by `parse`, the only way to make an `Intrinsic`, so indexing
        // the values below cannot go out of bounds.
        match self.function {
            Function::Format => self.format(&values),
            Function::StringToJson => {
                let text = self.string(&values, 0)?;
                serde_json::from_str(text)
                    .map_err(|e| self.fail(format!("the argument is not valid JSON: {e}")))
            }
            Function::JsonToString => Ok(Value::String(values[0].to_string())),
            Function::Array => Ok(Value::Array(values)),
            Function::ArrayPartition => {
                let items = self.array(&values, 0)?;
                let size = self.rounded(&values, 1)?;
                if size <= 0 {
                    return Err(self.fail(format!(
                        "the chunk size must be a positive integer, got {size}"
                    )));
                }
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                Ok(Value::Array(
                    items
                        .chunks(size)
                        .map(|chunk| Value::Array(chunk.to_vec()))
                        .collect(),
                ))
            }
            Function::ArrayContains => {
                let items = self.array(&values, 0)?;
                Ok(Value::Bool(items.iter().any(|item| same(item, &values[1]))))
            }
            Function::ArrayRange => self.range(&values),
            Function::ArrayGetItem => {
                let items = self.array(&values, 0)?;
                let index = self.index(&values, 1)?;
                usize::try_from(index)
                    .ok()
                    .and_then(|i| items.get(i))
                    .cloned()
                    .ok_or_else(|| {
                        self.fail(format!(
                            "index {index} is out of range for an array of {} items",
                            items.len()
                        ))
                    })
            }
            Function::ArrayLength => Ok(Value::from(self.array(&values, 0)?.len())),
            Function::ArrayUnique => {
                let items = self.array(&values, 0)?;
                let mut unique: Vec<Value> = Vec::with_capacity(items.len());
                for item in items {
                    if !unique.iter().any(|seen| same(seen, item)) {
                        unique.push(item.clone());
                    }
                }
                Ok(Value::Array(unique))
            }
            Function::Base64Encode => {
                let text = self.limited_string(&values, 0)?;
                Ok(Value::String(STANDARD.encode(text)))
            }
            Function::Base64Decode => {
                let text = self.limited_string(&values, 0)?;
                // MIME Base64 may be broken into lines; the breaks are not data.
                let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
                let bytes = DECODER
                    .decode(compact)
                    .map_err(|e| self.fail(format!("the argument is not Base64: {e}")))?;
                String::from_utf8(bytes)
                    .map(Value::String)
                    .map_err(|_| self.fail("the decoded data is not UTF-8 text"))
            }
            Function::Hash => self.hash(&values),
            Function::JsonMerge => {
                let first = self.object(&values, 0)?;
                let second = self.object(&values, 1)?;
                match &values[2] {
                    Value::Bool(false) => {}
                    Value::Bool(true) => {
                        return Err(self.fail(
                            "deep merging is not supported: the third argument must be false",
                        ));
                    }
                    other => {
                        return Err(self.fail(format!(
                            "argument 3 must be the boolean false, got {}",
                            crate::failure::kind_of(other)
                        )));
                    }
                }
                // A shallow merge: the second object's fields replace the first's whole.
                let mut merged = first.clone();
                merged.extend(second.iter().map(|(k, v)| (k.clone(), v.clone())));
                Ok(Value::Object(merged))
            }
            Function::MathRandom => self.random(&values, rng),
            Function::MathAdd => {
                let a = self.rounded(&values, 0)?;
                let b = self.rounded(&values, 1)?;
                for (n, value) in [(1, a), (2, b)] {
                    if !MATH_ADD_RANGE.contains(&value) {
                        return Err(self.fail(format!(
                            "argument {n} ({value}) is outside the range {} to {}",
                            MATH_ADD_RANGE.start(),
                            MATH_ADD_RANGE.end()
                        )));
                    }
                }
                Ok(Value::from(a + b))
            }
            Function::StringSplit => {
                let text = self.string(&values, 0)?;
                let delimiters = self.string(&values, 1)?;
                // Each character of the second argument is a delimiter on its own, and the
                // empty strings between adjacent delimiters are dropped.
                Ok(Value::Array(
                    text.split(|c| delimiters.contains(c))
                        .filter(|part| !part.is_empty())
                        .map(|part| Value::String(part.to_string()))
                        .collect(),
                ))
            }
            Function::Uuid => Ok(Value::String(uuid_v4(rng))),
        }
    }

    /// `States.Format`: the template's `{}` replaced by the other arguments in order.
    fn format(&self, values: &[Value]) -> Result<Value, Failure> {
        let template = self.string(values, 0)?;
        // A literal template knows its placeholders from parsing (escaped braces are not
        // placeholders); a template read from the data has no escapes, so every `{}` is one.
        let holes: Vec<usize> = match &self.args[0] {
            Arg::Text(text) => text.holes.clone(),
            _ => template.match_indices("{}").map(|(at, _)| at).collect(),
        };
        let inserted = &values[1..];
        if holes.len() != inserted.len() {
            return Err(self.fail(format!(
                "the template has {} placeholders but {} values were given",
                holes.len(),
                inserted.len()
            )));
        }
        let mut out = String::with_capacity(template.len());
        let mut from = 0;
        for (hole, value) in holes.iter().zip(inserted) {
            out.push_str(&template[from..*hole]);
            match value {
                Value::String(s) => out.push_str(s),
                other => out.push_str(&other.to_string()),
            }
            from = hole + 2;
        }
        out.push_str(&template[from..]);
        Ok(Value::String(out))
    }

    /// `States.ArrayRange`: from the first argument to the second, inclusive, by the third.
    fn range(&self, values: &[Value]) -> Result<Value, Failure> {
        let start = i128::from(self.rounded(values, 0)?);
        let end = i128::from(self.rounded(values, 1)?);
        let step = i128::from(self.rounded(values, 2)?);
        if step == 0 {
            return Err(self.fail("the step (argument 3) must not be zero"));
        }
        // A step that moves away from the end gives an empty array, as a loop would.
        let count = if (end - start) * step.signum() < 0 {
            0
        } else {
            (end - start) / step + 1
        };
        if count > MAX_RANGE_ITEMS {
            return Err(self.fail(format!(
                "the range would have {count} items, more than the {MAX_RANGE_ITEMS} allowed"
            )));
        }
        Ok(Value::Array(
            (0..count)
                .map(|n| Value::from((start + n * step) as i64))
                .collect(),
        ))
    }

    /// `States.Hash`: the lower-case hex digest of the data with the named algorithm.
    fn hash(&self, values: &[Value]) -> Result<Value, Failure> {
        // A string is hashed as its text; any other value as its JSON text, since AWS
        // accepts non-string data and a hash needs bytes.
        let data = match &values[0] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let chars = data.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(self.fail(format!(
                "the data has {chars} characters, more than the {MAX_TEXT_CHARS} allowed"
            )));
        }
        let algorithm = self.string(values, 1)?;
        let digest: Vec<u8> = match algorithm {
            "MD5" => md5::Md5::digest(data.as_bytes()).to_vec(),
            "SHA-1" => sha1::Sha1::digest(data.as_bytes()).to_vec(),
            "SHA-256" => sha2::Sha256::digest(data.as_bytes()).to_vec(),
            "SHA-384" => sha2::Sha384::digest(data.as_bytes()).to_vec(),
            "SHA-512" => sha2::Sha512::digest(data.as_bytes()).to_vec(),
            other => {
                return Err(self.fail(format!(
                    "unknown algorithm '{other}': it must be one of MD5, SHA-1, SHA-256, \
                     SHA-384, SHA-512"
                )));
            }
        };
        Ok(Value::String(
            digest.iter().map(|b| format!("{b:02x}")).collect(),
        ))
    }

    /// `States.MathRandom`: an integer in `[start, end)`, from `rng` or, with a seed, from
    /// a generator of its own so that the same seed always gives the same number.
    fn random(&self, values: &[Value], rng: &mut Rng) -> Result<Value, Failure> {
        let start = self.rounded(values, 0)?;
        let end = self.rounded(values, 1)?;
        if start >= end {
            return Err(self.fail(format!(
                "the start ({start}) must be less than the end ({end})"
            )));
        }
        let draw = match values.get(2) {
            Some(_) => Rng::new(self.rounded(values, 2)? as u64).next_u64(),
            None => rng.next_u64(),
        };
        // Scaling the 64-bit draw onto the span (rather than taking a remainder) keeps
        // every result equally likely up to a bias of span / 2^64.
        let span = (i128::from(end) - i128::from(start)) as u128;
        let offset = (u128::from(draw) * span) >> 64;
        Ok(Value::from((i128::from(start) + offset as i128) as i64))
    }

    fn fail(&self, why: impl Display) -> Failure {
        Failure::intrinsic(format!("{}: {why}", self.function.name()))
    }

    fn wrong_type(&self, n: usize, wanted: &str, got: &Value) -> Failure {
        self.fail(format!(
            "argument {} must be {wanted}, got {}",
            n + 1,
            crate::failure::kind_of(got)
        ))
    }

    fn string<'v>(&self, values: &'v [Value], n: usize) -> Result<&'v str, Failure> {
        values[n]
            .as_str()
            .ok_or_else(|| self.wrong_type(n, "a string", &values[n]))
    }

    fn limited_string<'v>(&self, values: &'v [Value], n: usize) -> Result<&'v str, Failure> {
        let text = self.string(values, n)?;
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(self.fail(format!(
                "the argument has {chars} characters, more than the {MAX_TEXT_CHARS} allowed"
            )));
        }
        Ok(text)
    }

    fn array<'v>(&self, values: &'v [Value], n: usize) -> Result<&'v Vec<Value>, Failure> {
        values[n]
            .as_array()
            .ok_or_else(|| self.wrong_type(n, "an array", &values[n]))
    }

    fn object<'v>(&self, values: &'v [Value], n: usize) -> Result<&'v Map<String, Value>, Failure> {
        values[n]
            .as_object()
            .ok_or_else(|| self.wrong_type(n, "an object", &values[n]))
    }

    /// A number as an integer, a fraction rounded to the nearest (halves up, as Java's
    /// `Math.round` that AWS documents as "round it off to the nearest integer").
    fn rounded(&self, values: &[Value], n: usize) -> Result<i64, Failure> {
        let Value::Number(number) = &values[n] else {
            return Err(self.wrong_type(n, "a number", &values[n]));
        };
        if let Some(i) = number.as_i64() {
            return Ok(i);
        }
        let x = number.as_f64().unwrap_or(f64::NAN);
        let r = (x + 0.5).floor();
        // 2^63 is exactly representable, so this bound admits no value that overflows.
        if number.is_f64() && r.is_finite() && r >= -(2f64.powi(63)) && r < 2f64.powi(63) {
            Ok(r as i64)
        } else {
            Err(self.fail(format!(
                "argument {} ({number}) is out of the integer range",
                n + 1
            )))
        }
    }

    /// An array index: an integer, not rounded, since AWS documents no rounding here and
    /// picking a neighbouring item silently would hide a mistake.
    fn index(&self, values: &[Value], n: usize) -> Result<i64, Failure> {
        let Value::Number(number) = &values[n] else {
            return Err(self.wrong_type(n, "an integer", &values[n]));
        };
        if let Some(i) = number.as_i64() {
            return Ok(i);
        }
        // An integer past i64 is past any array's end; saying so beats "not an integer".
        if number.as_u64().is_some() {
            return Ok(i64::MAX);
        }
        match number.as_f64() {
            Some(x) if x.fract() == 0.0 && x.abs() < 2f64.powi(63) => Ok(x as i64),
            _ => Err(self.fail(format!(
                "argument {} must be an integer, got {number}",
                n + 1
            ))),
        }
    }
}

/// JSON equality in which numbers compare by value, so that `1` and `1.0` are the same item
/// for `States.ArrayContains` and `States.ArrayUnique` (serde_json tells them apart).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// A version 4 UUID from 128 bits of `rng`, so replaying an event replays its UUIDs.
fn uuid_v4(rng: &mut Rng) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
    bytes[8..].copy_from_slice(&rng.next_u64().to_be_bytes());
    // The version nibble says 4 (random); the variant bits say RFC 4122.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A recursive-descent parser over the call's characters.
struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn starts_with(&self, prefix: &str) -> bool {
        (self.pos..)
            .zip(prefix.chars())
            .all(|(at, c)| self.chars.get(at) == Some(&c))
    }

    /// `States.Name(arg, …)` at `depth` (the outermost call is 1).
    fn call(&mut self, depth: usize) -> Result<Intrinsic, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "intrinsic functions may nest at most {MAX_DEPTH} deep"
            ));
        }
        if !self.starts_with("States.") {
            return Err("an intrinsic function call must begin with 'States.'".to_string());
        }
        self.pos += "States.".len();
        let mut name = String::from("States.");
        while let Some(c) = self.peek().filter(char::is_ascii_alphanumeric) {
            name.push(c);
            self.pos += 1;
        }
        let function = Function::from_name(&name)
            .ok_or_else(|| format!("unknown intrinsic function '{name}'"))?;
        if self.next() != Some('(') {
            return Err(format!("expected '(' after {name}"));
        }
        let mut args = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(')') {
            self.pos += 1;
        } else {
            loop {
                args.push(self.arg(function, depth)?);
                self.skip_whitespace();
                match self.next() {
                    Some(',') => self.skip_whitespace(),
                    Some(')') => break,
                    Some(c) => {
                        return Err(format!(
                            "unexpected '{c}' in the arguments of {name}: expected ',' or ')'"
                        ));
                    }
                    None => {
                        return Err(format!("unbalanced parenthesis: {name}( is not closed"));
                    }
                }
            }
        }
        let (min, max) = function.arity();
        let count = args.len();
        if count < min || max.is_some_and(|max| count > max) {
            let (expected, most) = match max {
                Some(max) if max == min => (format!("{min}"), max),
                Some(max) => (format!("{min} or {max}"), max),
                None => (format!("at least {min}"), min),
            };
            let plural = if most == 1 { "" } else { "s" };
            return Err(format!(
                "{name} takes {expected} argument{plural}, got {count}"
            ));
        }
        if function == Function::Format {
            match &args[0] {
                Arg::Literal(value) => {
                    return Err(format!(
                        "{name}: the template (argument 1) must be a string, got {}",
                        crate::failure::kind_of(value)
                    ));
                }
                Arg::Text(text) if text.holes.len() != count - 1 => {
                    return Err(format!(
                        "{name}: the template has {} placeholders but {} values were given",
                        text.holes.len(),
                        count - 1
                    ));
                }
                _ => {}
            }
        }
        Ok(Intrinsic { function, args })
    }

    /// One argument of a call to `function`, itself at `depth`.
    fn arg(&mut self, function: Function, depth: usize) -> Result<Arg, String> {
        let name = function.name();
        match self.peek() {
            None => Err(format!("unbalanced parenthesis: {name}( is not closed")),
            Some(',' | ')') => Err(format!("{name}: an argument is missing")),
            Some('\'') => self.text(name).map(Arg::Text),
            Some('$') => {
                let raw = self.path_token(name)?;
                Path::parse(&raw)
                    .map(Arg::Path)
                    .map_err(|e| format!("{name}: bad path: {e}"))
            }
            Some(c) if c == '-' || c.is_ascii_digit() => {
                let token = self.token();
                match serde_json::from_str::<Value>(&token) {
                    Ok(number @ Value::Number(_)) => Ok(Arg::Literal(number)),
                    _ => Err(format!("{name}: '{token}' is not a number")),
                }
            }
            Some(_) if self.starts_with("States.") => self.call(depth + 1).map(Arg::Call),
            Some(_) => {
                let token = self.token();
                match token.as_str() {
                    "true" => Ok(Arg::Literal(Value::Bool(true))),
                    "false" => Ok(Arg::Literal(Value::Bool(false))),
                    "null" => Ok(Arg::Literal(Value::Null)),
                    _ => Err(format!(
                        "{name}: '{token}' is not an argument: expected a string in single \
                         quotes, a number, true, false, null, a path or an intrinsic function"
                    )),
                }
            }
        }
    }

    /// A bare word or number: everything up to a separator.
    fn token(&mut self) -> String {
        let mut token = String::new();
        while let Some(c) = self
            .peek()
            .filter(|c| !matches!(c, ',' | ')' | '(' | '\'') && !c.is_whitespace())
        {
            token.push(c);
            self.pos += 1;
        }
        if token.is_empty()
            && let Some(c) = self.next()
        {
            token.push(c);
        }
        token
    }

    /// A single-quoted string literal, its escapes undone and its `{}` placeholders noted.
    fn text(&mut self, name: &str) -> Result<Text, String> {
        self.pos += 1;
        let mut value = String::new();
        let mut holes = Vec::new();
        // Where an unescaped `{` was just written, so that an unescaped `}` right after it
        // makes a placeholder.
        let mut open: Option<usize> = None;
        loop {
            let unclosed = || format!("{name}: unbalanced quote: a string literal is not closed");
            match self.next().ok_or_else(unclosed)? {
                '\'' => break,
                '\\' => match self.next().ok_or_else(unclosed)? {
                    c @ ('\'' | '{' | '}' | '\\') => {
                        value.push(c);
                        open = None;
                    }
                    c => {
                        return Err(format!(
                            "{name}: bad escape '\\{c}' in a string literal: only \\', \\{{, \
                             \\}} and \\\\ are allowed"
                        ));
                    }
                },
                '{' => {
                    open = Some(value.len());
                    value.push('{');
                }
                '}' => {
                    if let Some(at) = open.take() {
                        holes.push(at);
                    }
                    value.push('}');
                }
                c => {
                    value.push(c);
                    open = None;
                }
            }
        }
        Ok(Text { value, holes })
    }

    /// A path argument's text: up to a `,`, `)` or whitespace outside brackets, filter
    /// parentheses and quoted names, which may hold any of those.
    fn path_token(&mut self, name: &str) -> Result<String, String> {
        let mut raw = String::new();
        let mut depth = 0usize;
        let mut quote: Option<char> = None;
        loop {
            let Some(c) = self.peek() else {
                if quote.is_some() {
                    return Err(format!("{name}: unbalanced quote in the path '{raw}'"));
                }
                if depth > 0 {
                    return Err(format!("{name}: unbalanced bracket in the path '{raw}'"));
                }
                break;
            };
            if let Some(q) = quote {
                raw.push(c);
                self.pos += 1;
                if c == '\\' {
                    if let Some(escaped) = self.next() {
                        raw.push(escaped);
                    }
                } else if c == q {
                    quote = None;
                }
                continue;
            }
            match c {
                '\'' | '"' if depth > 0 => quote = Some(c),
                '[' | '(' => depth += 1,
                ']' | ')' if depth > 0 => depth -= 1,
                ',' | ')' => break,
                c if c.is_whitespace() && depth == 0 => break,
                _ => {}
            }
            raw.push(c);
            self.pos += 1;
        }
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const INTRINSIC: &str = "States.IntrinsicFailure";

    fn context() -> Value {
        json!({"Execution": {"Id": "arn:exec:1", "Name": "e1"}})
    }

    fn run(text: &str, data: Value) -> Result<Value, Failure> {
        let call = Intrinsic::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        call.eval(&data, &context(), &mut Rng::new(42))
    }

    fn ok(text: &str, data: Value) -> Value {
        run(text, data).unwrap_or_else(|f| panic!("{text}: {f}"))
    }

    /// Asserts that `text` fails at run time with `States.IntrinsicFailure` naming the
    /// function and saying `why`.
    fn fails(text: &str, data: Value, why: &str) {
        let failure = run(text, data).expect_err(text);
        assert_eq!(failure.error, INTRINSIC, "{text}: {failure}");
        let function = &text[..text.find('(').unwrap()];
        assert!(failure.cause.starts_with(function), "{text}: {failure}");
        assert!(failure.cause.contains(why), "{text}: {failure}");
    }

    fn bad(text: &str, why: &str) {
        let error = Intrinsic::parse(text).expect_err(text);
        assert!(error.contains(why), "{text}: {error}");
    }

    #[test]
    fn recognises_calls() {
        assert!(is_intrinsic("States.Format('x')"));
        assert!(is_intrinsic("States.UUID()"));
        assert!(is_intrinsic("States.Nope(1)"));
        assert!(!is_intrinsic("$.a"));
        assert!(!is_intrinsic("States.('x')"));
        assert!(!is_intrinsic("States.Format"));
        assert!(!is_intrinsic(" States.Format('x')"));
        assert!(!is_intrinsic("States.Format ('x')"));
    }

    #[test]
    fn parse_errors_say_why() {
        bad("States.Nope(1)", "unknown intrinsic function 'States.Nope'");
        bad("States.format('x')", "unknown intrinsic function");
        bad("Format('x')", "must begin with 'States.'");
        bad("States.Array", "expected '('");
        bad("States.Array(1, 2", "unbalanced parenthesis");
        bad("States.Array(States.Array(1)", "unbalanced parenthesis");
        bad("States.Array(1))", "unexpected ')'");
        bad("States.Array(1 2)", "expected ',' or ')'");
        bad("States.Array(1,)", "argument is missing");
        bad("States.Array(,1)", "argument is missing");
        bad("States.Array('abc)", "unbalanced quote");
        bad("States.Array('a\\nb')", "bad escape");
        bad("States.Array(1.2.3)", "not a number");
        bad("States.Array(-)", "not a number");
        bad("States.Array(maybe)", "'maybe' is not an argument");
        bad("States.Array(a.b)", "not an argument");
        bad("States.Array($.a[)", "bad path");
        bad("States.Array($.a[0)", "bad path");
        bad("States.Array($.a[0", "unbalanced bracket");
        bad("States.Array($.a['x)", "unbalanced quote");
        bad("States.ArrayLength()", "takes 1 argument, got 0");
        bad("States.ArrayLength($.a, $.b)", "takes 1 argument, got 2");
        bad("States.ArrayRange(1, 2)", "takes 3 arguments, got 2");
        bad("States.MathRandom(1)", "takes 2 or 3 arguments, got 1");
        bad(
            "States.MathRandom(1, 2, 3, 4)",
            "takes 2 or 3 arguments, got 4",
        );
        bad("States.UUID(1)", "takes 0 arguments, got 1");
        bad("States.Format()", "takes at least 1 argument, got 0");
        bad("States.Format(5)", "template (argument 1) must be a string");
        bad("States.Format('{} {}', 1)", "2 placeholders but 1 values");
        bad("States.Format('x', 1)", "0 placeholders but 1 values");
        bad("States.JsonMerge($.a, $.b)", "takes 3 arguments");
        bad("States.Array(States.Nope())", "unknown intrinsic function");
    }

    #[test]
    fn arguments_literals_paths_and_whitespace() {
        let data = json!({"a": 1, "list": [{"p": 5}, {"p": 15}], "odd-name": "o"});
        assert_eq!(
            ok(
                "States.Array( 'x' ,1, -2.5, 1e2, true, false, null, $.a, $$.Execution.Name )",
                data.clone()
            ),
            json!(["x", 1, -2.5, 100.0, true, false, null, 1, "e1"])
        );
        assert!(ok("States.Array(7)", json!({}))[0].is_i64());
        assert_eq!(ok("States.Array()", json!({})), json!([]));
        assert_eq!(ok("States.Array($)", json!(3)), json!([3]));
        assert_eq!(
            ok(
                "States.Array($.list[?(@.p > 10)].p, $['odd-name'])",
                data.clone()
            ),
            json!([[15], "o"])
        );
        assert_eq!(
            ok("States.Array($.list[*].p,$.a)", data.clone()),
            json!([[5, 15], 1])
        );
        assert_eq!(
            ok("States.Array($['a,b)'])", json!({"a,b)": 2})),
            json!([2])
        );
        // A path that matches nothing fails as the path does, not as the function.
        let missing = run("States.Array($.nope)", data).unwrap_err();
        assert_eq!(missing.error, "States.Runtime");
        assert!(missing.cause.contains("$.nope"), "{missing}");
    }

    #[test]
    fn escapes_in_string_literals() {
        let data = json!({"v": "x"});
        assert_eq!(ok(r"States.Array('it\'s')", json!({})), json!(["it's"]));
        assert_eq!(ok(r"States.Array('a\\b')", json!({})), json!([r"a\b"]));
        assert_eq!(ok(r"States.Array('\{\}')", json!({})), json!(["{}"]));
        // Escaped braces are text, not placeholders; unescaped ones are.
        assert_eq!(
            ok(r"States.Format('\{\} {} \{} {\}', $.v)", data.clone()),
            json!("{} x {} {}")
        );
        assert_eq!(
            ok(r"States.Format('{{}}', $.v)", data.clone()),
            json!("{x}")
        );
        assert_eq!(ok("States.Array('a, b) c')", json!({})), json!(["a, b) c"]));
        assert_eq!(ok("States.Array('')", json!({})), json!([""]));
    }

    #[test]
    fn nesting() {
        let data = json!({"a": [1, 2, 3], "arn": "arn:aws:imagebuilder:r:1:image/name.v1/2.3.4"});
        assert_eq!(
            ok("States.Format('{}', States.ArrayLength($.a))", data.clone()),
            json!("3")
        );
        // The documented nine-call example.
        let arn = "States.Format('{}.{}.{}', \
            States.ArrayGetItem(States.StringSplit(States.ArrayGetItem(States.StringSplit($.arn, '/'), 2), '.'), 0), \
            States.ArrayGetItem(States.StringSplit(States.ArrayGetItem(States.StringSplit($.arn, '/'), 2), '.'), 1), \
            States.ArrayGetItem(States.StringSplit(States.ArrayGetItem(States.StringSplit($.arn, '/'), 2), '.'), 2))";
        assert_eq!(ok(arn, data.clone()), json!("2.3.4"));
        let nested = |n: usize| format!("{}1{}", "States.Array(".repeat(n), ")".repeat(n));
        assert_eq!(
            ok(&nested(10), json!({}))[0][0][0][0][0][0][0][0][0][0],
            json!(1)
        );
        bad(&nested(11), "nest at most 10");
        // A failing inner call is the whole call's failure.
        let inner = run("States.ArrayLength(States.StringSplit($.a, ','))", data).unwrap_err();
        assert_eq!(inner.error, INTRINSIC);
        assert!(
            inner.cause.starts_with("States.StringSplit: argument 1"),
            "{inner}"
        );
    }

    #[test]
    fn format() {
        let data = json!({"name": "Arnav", "template": "Hello, my name is {}.", "n": 3,
                          "o": {"k": [1, "x"]}, "f": 1.5});
        assert_eq!(
            ok(
                "States.Format('Hello, my name is {}.', $.name)",
                data.clone()
            ),
            json!("Hello, my name is Arnav.")
        );
        assert_eq!(
            ok("States.Format($.template, $.name)", data.clone()),
            json!("Hello, my name is Arnav.")
        );
        assert_eq!(
            ok(
                "States.Format('{}|{}|{}|{}|{}|{}', $.n, $.f, true, null, $.o, 'raw')",
                data.clone()
            ),
            json!("3|1.5|true|null|{\"k\":[1,\"x\"]}|raw")
        );
        assert_eq!(ok("States.Format('plain')", json!({})), json!("plain"));
        fails(
            "States.Format($.template)",
            data.clone(),
            "1 placeholders but 0 values",
        );
        fails(
            "States.Format($.template, 1, 2)",
            data.clone(),
            "1 placeholders but 2 values",
        );
        fails(
            "States.Format($.n)",
            data,
            "argument 1 must be a string, got a number",
        );
    }

    #[test]
    fn string_to_json_and_back() {
        let data = json!({"escaped": "{\"foo\": \"bar\"}", "bad": "{oops", "n": 1,
                          "unescaped": {"foo": "bar"}});
        assert_eq!(
            ok("States.StringToJson($.escaped)", data.clone()),
            json!({"foo": "bar"})
        );
        assert_eq!(
            ok("States.StringToJson('[1, 2]')", json!({})),
            json!([1, 2])
        );
        fails("States.StringToJson($.bad)", data.clone(), "not valid JSON");
        fails("States.StringToJson('')", data.clone(), "not valid JSON");
        fails(
            "States.StringToJson($.n)",
            data.clone(),
            "must be a string, got a number",
        );
        assert_eq!(
            ok("States.JsonToString($.unescaped)", data.clone()),
            json!("{\"foo\":\"bar\"}")
        );
        assert_eq!(ok("States.JsonToString($.n)", data.clone()), json!("1"));
        assert_eq!(ok("States.JsonToString('s')", data), json!("\"s\""));
    }

    #[test]
    fn array() {
        assert_eq!(
            ok("States.Array($.Id)", json!({"Id": 123456})),
            json!([123456])
        );
        assert_eq!(
            ok("States.Array(States.Array(), 'a')", json!({})),
            json!([[], "a"])
        );
    }

    #[test]
    fn array_partition() {
        let data = json!({"a": [1, 2, 3, 4, 5, 6, 7, 8, 9], "s": "x"});
        assert_eq!(
            ok("States.ArrayPartition($.a, 4)", data.clone()),
            json!([[1, 2, 3, 4], [5, 6, 7, 8], [9]])
        );
        assert_eq!(
            ok("States.ArrayPartition($.a, 20)", data.clone()),
            json!([[1, 2, 3, 4, 5, 6, 7, 8, 9]])
        );
        assert_eq!(
            ok("States.ArrayPartition(States.Array(), 2)", json!({})),
            json!([])
        );
        // A fractional size is rounded to the nearest integer.
        assert_eq!(
            ok("States.ArrayPartition($.a, 4.6)", data.clone())[0],
            json!([1, 2, 3, 4, 5])
        );
        fails(
            "States.ArrayPartition($.a, 0)",
            data.clone(),
            "positive integer, got 0",
        );
        fails(
            "States.ArrayPartition($.a, -1)",
            data.clone(),
            "positive integer, got -1",
        );
        fails(
            "States.ArrayPartition($.a, 0.4)",
            data.clone(),
            "positive integer, got 0",
        );
        fails(
            "States.ArrayPartition($.s, 2)",
            data.clone(),
            "argument 1 must be an array, got a string",
        );
        fails(
            "States.ArrayPartition($.a, '2')",
            data,
            "argument 2 must be a number, got a string",
        );
    }

    #[test]
    fn array_contains() {
        let data = json!({"a": [1, 2, {"k": [3]}, "x", null], "five": 5, "s": "x"});
        assert_eq!(
            ok("States.ArrayContains($.a, 2)", data.clone()),
            json!(true)
        );
        assert_eq!(
            ok("States.ArrayContains($.a, 2.0)", data.clone()),
            json!(true)
        );
        assert_eq!(
            ok("States.ArrayContains($.a, $.five)", data.clone()),
            json!(false)
        );
        assert_eq!(
            ok("States.ArrayContains($.a, 'x')", data.clone()),
            json!(true)
        );
        assert_eq!(
            ok("States.ArrayContains($.a, null)", data.clone()),
            json!(true)
        );
        assert_eq!(
            ok(
                "States.ArrayContains($.a, States.StringToJson('{\"k\":[3]}'))",
                data.clone()
            ),
            json!(true)
        );
        fails(
            "States.ArrayContains($.s, 'x')",
            data,
            "argument 1 must be an array",
        );
    }

    #[test]
    fn array_range() {
        assert_eq!(
            ok("States.ArrayRange(1, 9, 2)", json!({})),
            json!([1, 3, 5, 7, 9])
        );
        assert_eq!(
            ok("States.ArrayRange(1, 10, 2)", json!({})),
            json!([1, 3, 5, 7, 9])
        );
        assert_eq!(
            ok("States.ArrayRange(5, 1, -2)", json!({})),
            json!([5, 3, 1])
        );
        assert_eq!(ok("States.ArrayRange(3, 3, 1)", json!({})), json!([3]));
        assert_eq!(ok("States.ArrayRange(1, 9, -1)", json!({})), json!([]));
        assert_eq!(
            ok("States.ArrayRange(0.6, 2.4, 1)", json!({})),
            json!([1, 2])
        );
        assert_eq!(
            ok("States.ArrayRange(1, 1000, 1)", json!({}))
                .as_array()
                .unwrap()
                .len(),
            1000
        );
        fails(
            "States.ArrayRange(1, 1001, 1)",
            json!({}),
            "1001 items, more than the 1000",
        );
        fails("States.ArrayRange(1, 9, 0)", json!({}), "must not be zero");
        fails(
            "States.ArrayRange(1, 9, 0.2)",
            json!({}),
            "must not be zero",
        );
        fails(
            "States.ArrayRange('1', 9, 1)",
            json!({}),
            "argument 1 must be a number",
        );
        fails(
            "States.ArrayRange(1, 1e300, 1)",
            json!({}),
            "out of the integer range",
        );
    }

    #[test]
    fn array_get_item() {
        let data = json!({"a": [1, 2, 3, 4, 5, 6, 7, 8, 9], "index": 5});
        assert_eq!(
            ok("States.ArrayGetItem($.a, $.index)", data.clone()),
            json!(6)
        );
        assert_eq!(ok("States.ArrayGetItem($.a, 0)", data.clone()), json!(1));
        assert_eq!(ok("States.ArrayGetItem($.a, 8.0)", data.clone()), json!(9));
        fails(
            "States.ArrayGetItem($.a, 9)",
            data.clone(),
            "index 9 is out of range for an array of 9",
        );
        fails(
            "States.ArrayGetItem($.a, -1)",
            data.clone(),
            "index -1 is out of range",
        );
        fails(
            "States.ArrayGetItem($.a, 1.5)",
            data.clone(),
            "must be an integer, got 1.5",
        );
        fails(
            "States.ArrayGetItem($.a, 'x')",
            data.clone(),
            "argument 2 must be an integer, got a string",
        );
        fails(
            "States.ArrayGetItem($.index, 0)",
            data,
            "argument 1 must be an array, got a number",
        );
    }

    #[test]
    fn array_length() {
        let data = json!({"a": [1, 2, 3, 4, 5, 6, 7, 8, 9], "o": {}});
        assert_eq!(ok("States.ArrayLength($.a)", data.clone()), json!(9));
        assert_eq!(
            ok("States.ArrayLength(States.Array())", data.clone()),
            json!(0)
        );
        fails(
            "States.ArrayLength($.o)",
            data,
            "argument 1 must be an array, got an object",
        );
    }

    #[test]
    fn array_unique() {
        let data = json!({"a": [1, 2, 3, 3, 3, 3, 3, 3, 4], "m": [{"k": 1}, "1", {"k": 1}, 1, 1.0, null, null],
                          "s": "x"});
        assert_eq!(
            ok("States.ArrayUnique($.a)", data.clone()),
            json!([1, 2, 3, 4])
        );
        assert_eq!(
            ok("States.ArrayUnique($.m)", data.clone()),
            json!([{"k": 1}, "1", 1, null])
        );
        fails(
            "States.ArrayUnique($.s)",
            data,
            "argument 1 must be an array",
        );
    }

    #[test]
    fn base64() {
        let data = json!({"input": "Data to encode", "b64": "RGF0YSB0byBlbmNvZGU=",
                          "long": "x".repeat(10_001), "n": 1});
        assert_eq!(
            ok("States.Base64Encode($.input)", data.clone()),
            json!("RGF0YSB0byBlbmNvZGU=")
        );
        assert_eq!(ok("States.Base64Encode('')", data.clone()), json!(""));
        assert_eq!(
            ok("States.Base64Decode($.b64)", data.clone()),
            json!("Data to encode")
        );
        assert_eq!(
            ok("States.Base64Decode('RGF0YSB0\nbyBlbmNvZGU')", data.clone()),
            json!("Data to encode")
        );
        assert_eq!(
            ok(
                "States.Base64Decode(States.Base64Encode('é✓'))",
                data.clone()
            ),
            json!("é✓")
        );
        fails(
            "States.Base64Encode($.long)",
            data.clone(),
            "10001 characters, more than the 10000",
        );
        fails(
            "States.Base64Decode($.long)",
            data.clone(),
            "10001 characters",
        );
        fails(
            "States.Base64Encode($.n)",
            data.clone(),
            "must be a string, got a number",
        );
        fails(
            "States.Base64Decode('not base64!')",
            data.clone(),
            "not Base64",
        );
        // 0xff alone is not UTF-8.
        fails("States.Base64Decode('/w==')", data, "not UTF-8");
    }

    #[test]
    fn hash() {
        let data = json!({"Data": "abc", "Algorithm": "SHA-1", "n": 1, "long": "x".repeat(10_001)});
        let hash =
            |algorithm: &str| ok(&format!("States.Hash($.Data, '{algorithm}')"), data.clone());
        assert_eq!(hash("MD5"), json!("900150983cd24fb0d6963f7d28e17f72"));
        assert_eq!(
            hash("SHA-1"),
            json!("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
        assert_eq!(
            hash("SHA-256"),
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            hash("SHA-384"),
            json!(
                "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
            )
        );
        assert_eq!(
            hash("SHA-512"),
            json!(
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
            )
        );
        assert_eq!(
            ok("States.Hash($.Data, $.Algorithm)", data.clone()),
            hash("SHA-1")
        );
        // Non-string data is hashed as its JSON text.
        assert_eq!(
            ok("States.Hash($.n, 'MD5')", data.clone()),
            ok("States.Hash('1', 'MD5')", data.clone())
        );
        fails(
            "States.Hash($.Data, 'sha-1')",
            data.clone(),
            "unknown algorithm 'sha-1'",
        );
        fails(
            "States.Hash($.Data, 'CRC32')",
            data.clone(),
            "unknown algorithm",
        );
        fails(
            "States.Hash($.Data, 1)",
            data.clone(),
            "argument 2 must be a string",
        );
        fails("States.Hash($.long, 'MD5')", data, "more than the 10000");
    }

    #[test]
    fn json_merge() {
        let data = json!({"json1": {"a": {"a1": 1, "a2": 2}, "b": 2},
                          "json2": {"a": {"a3": 1, "a4": 2}, "c": 3}, "list": []});
        assert_eq!(
            ok("States.JsonMerge($.json1, $.json2, false)", data.clone()),
            json!({"a": {"a3": 1, "a4": 2}, "b": 2, "c": 3})
        );
        fails(
            "States.JsonMerge($.json1, $.json2, true)",
            data.clone(),
            "deep merging is not supported",
        );
        fails(
            "States.JsonMerge($.json1, $.json2, 'false')",
            data.clone(),
            "argument 3 must be the boolean false",
        );
        fails(
            "States.JsonMerge($.list, $.json2, false)",
            data.clone(),
            "argument 1 must be an object, got an array",
        );
        fails(
            "States.JsonMerge($.json1, 1, false)",
            data,
            "argument 2 must be an object, got a number",
        );
    }

    #[test]
    fn math_random() {
        let mut rng = Rng::new(7);
        let call = Intrinsic::parse("States.MathRandom($.start, $.end)").unwrap();
        let data = json!({"start": 1, "end": 4});
        let mut seen = [false; 3];
        for _ in 0..200 {
            let n = call.eval(&data, &context(), &mut rng).unwrap();
            let n = n.as_i64().expect("an integer");
            assert!((1..4).contains(&n), "{n}");
            seen[(n - 1) as usize] = true;
        }
        assert_eq!(seen, [true; 3], "every value in [start, end) comes up");
        // A seed gives the same number whatever the engine's generator.
        let seeded = Intrinsic::parse("States.MathRandom(0, 1000000, 12)").unwrap();
        let a = seeded.eval(&data, &context(), &mut Rng::new(1)).unwrap();
        let b = seeded.eval(&data, &context(), &mut Rng::new(2)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, ok("States.MathRandom(0, 1000000, 13)", json!({})));
        assert_eq!(ok("States.MathRandom(5, 6)", json!({})), json!(5));
        assert_eq!(ok("States.MathRandom(-3.4, -2)", json!({})), json!(-3));
        let wide = ok(
            "States.MathRandom(-9223372036854775808, 9223372036854775807)",
            json!({}),
        );
        assert!(wide.is_i64());
        fails(
            "States.MathRandom(4, 4)",
            json!({}),
            "start (4) must be less than the end (4)",
        );
        fails("States.MathRandom(5, 1)", json!({}), "must be less than");
        fails(
            "States.MathRandom('1', 5)",
            json!({}),
            "argument 1 must be a number",
        );
        fails(
            "States.MathRandom(1, 5, 'seed')",
            json!({}),
            "argument 3 must be a number",
        );
    }

    #[test]
    fn math_add() {
        let data = json!({"value1": 111, "step": -1});
        assert_eq!(
            ok("States.MathAdd($.value1, $.step)", data.clone()),
            json!(110)
        );
        assert!(ok("States.MathAdd(1, 2)", json!({})).is_i64());
        assert_eq!(ok("States.MathAdd(1.2, -2.5)", json!({})), json!(-1));
        assert_eq!(
            ok("States.MathAdd(2147483647, 2147483647)", json!({})),
            json!(4294967294i64)
        );
        fails(
            "States.MathAdd(2147483648, 1)",
            json!({}),
            "argument 1 (2147483648) is outside the range",
        );
        fails(
            "States.MathAdd(1, -2147483649)",
            json!({}),
            "argument 2 (-2147483649) is outside",
        );
        fails(
            "States.MathAdd('1', 1)",
            json!({}),
            "argument 1 must be a number, got a string",
        );
        fails(
            "States.MathAdd(1, null)",
            json!({}),
            "argument 2 must be a number, got null",
        );
    }

    #[test]
    fn string_split() {
        let data = json!({"inputString": "1,2,3,4,5", "splitter": ",",
                          "multi": "This.is+a,test=string", "n": 1});
        assert_eq!(
            ok(
                "States.StringSplit($.inputString, $.splitter)",
                data.clone()
            ),
            json!(["1", "2", "3", "4", "5"])
        );
        assert_eq!(
            ok("States.StringSplit($.multi, '.+,=')", data.clone()),
            json!(["This", "is", "a", "test", "string"])
        );
        assert_eq!(
            ok("States.StringSplit(',a,,b,', ',')", data.clone()),
            json!(["a", "b"])
        );
        assert_eq!(
            ok("States.StringSplit('abc', ',')", data.clone()),
            json!(["abc"])
        );
        assert_eq!(
            ok("States.StringSplit('abc', '')", data.clone()),
            json!(["abc"])
        );
        assert_eq!(ok("States.StringSplit('', ',')", data.clone()), json!([]));
        fails(
            "States.StringSplit($.n, ',')",
            data.clone(),
            "argument 1 must be a string",
        );
        fails(
            "States.StringSplit('a', $.n)",
            data,
            "argument 2 must be a string",
        );
    }

    #[test]
    fn uuid() {
        let call = Intrinsic::parse("States.UUID()").unwrap();
        let mut rng = Rng::new(9);
        let a = call.eval(&json!({}), &context(), &mut rng).unwrap();
        let b = call.eval(&json!({}), &context(), &mut rng).unwrap();
        assert_ne!(a, b);
        for uuid in [&a, &b] {
            let s = uuid.as_str().unwrap();
            let groups: Vec<&str> = s.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{s}"
            );
            assert!(
                s.chars()
                    .all(|c| c == '-' || matches!(c, '0'..='9' | 'a'..='f')),
                "{s}"
            );
            assert!(groups[2].starts_with('4'), "version 4: {s}");
            assert!(
                matches!(&groups[3][..1], "8" | "9" | "a" | "b"),
                "variant: {s}"
            );
        }
        // The same generator state gives the same UUID, so a replay is faithful.
        let again = call.eval(&json!({}), &context(), &mut Rng::new(9)).unwrap();
        assert_eq!(a, again);
    }
}
