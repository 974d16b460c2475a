//! Payload templates (`Parameters`, `ResultSelector`, `ItemSelector`): JSON whose keys ending
//! in `.$` take their value from a path or an intrinsic function, parsed once at deploy.

use serde_json::{Map, Value};

use crate::failure::Failure;
use crate::intrinsic::{self, Intrinsic};
use crate::path::Path;
use crate::rng::Rng;

#[derive(Clone, Debug)]
pub enum Template {
    /// JSON with no `.$` key anywhere inside: copied as it is.
    Literal(Value),
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
    Path(Path),
    Intrinsic(Box<Intrinsic>),
}

impl Template {
    /// Parses `value`; `at` names the field for errors (`Parameters.user.$`).
    pub fn parse(value: &Value, at: &str) -> Result<Template, String> {
        match value {
            Value::Object(map) => {
                if !has_dynamic_key(value) {
                    return Ok(Template::Literal(value.clone()));
                }
                let mut fields = Vec::with_capacity(map.len());
                for (key, v) in map {
                    let here = format!("{at}.{key}");
                    if let Some(name) = key.strip_suffix(".$") {
                        let Value::String(text) = v else {
                            return Err(format!(
                                "{here}: a '.$' field takes a path or an intrinsic function (a string)"
                            ));
                        };
                        let t = if intrinsic::is_intrinsic(text) {
                            Template::Intrinsic(Box::new(
                                Intrinsic::parse(text).map_err(|e| format!("{here}: {e}"))?,
                            ))
                        } else {
                            Template::Path(Path::parse(text).map_err(|e| format!("{here}: {e}"))?)
                        };
                        if map.contains_key(name) {
                            return Err(format!("{here}: '{name}' is also given without '.$'"));
                        }
                        fields.push((name.to_string(), t));
                    } else {
                        fields.push((key.clone(), Template::parse(v, &here)?));
                    }
                }
                Ok(Template::Object(fields))
            }
            Value::Array(items) if has_dynamic_key(value) => Ok(Template::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(n, v)| Template::parse(v, &format!("{at}[{n}]")))
                    .collect::<Result<_, _>>()?,
            )),
            _ => Ok(Template::Literal(value.clone())),
        }
    }

    /// The JSON this template makes from the state's data and the context object.
    pub fn eval(&self, data: &Value, context: &Value, rng: &mut Rng) -> Result<Value, Failure> {
        Ok(match self {
            Template::Literal(v) => v.clone(),
            Template::Object(fields) => {
                let mut out = Map::with_capacity(fields.len());
                for (k, t) in fields {
                    out.insert(k.clone(), t.eval(data, context, rng)?);
                }
                Value::Object(out)
            }
            Template::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.eval(data, context, rng))
                    .collect::<Result<_, _>>()?,
            ),
            Template::Path(p) => p.select(data, context)?,
            Template::Intrinsic(i) => i.eval(data, context, rng)?,
        })
    }
}

/// Whether any object inside `value` has a key ending in `.$`.
fn has_dynamic_key(value: &Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.ends_with(".$") || has_dynamic_key(v)),
        Value::Array(items) => items.iter().any(has_dynamic_key),
        _ => false,
    }
}
