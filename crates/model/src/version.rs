//! Published versions, aliases with weighted (canary) routing, and qualifiers that name
//! which of them a call runs: `fn` ($LATEST), `fn:3` (a version), `fn:prod` (an alias).

use serde::{Deserialize, Serialize};

use crate::{FunctionSpec, limits};

/// An immutable snapshot of a function: its code hash and full configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub function: String,
    pub version: u32,
    pub spec: FunctionSpec,
    pub description: String,
    pub created_at_ms: i64,
}

/// A named pointer to a version, optionally sending a share of calls to a second one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alias {
    pub name: String,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub updated_at_ms: i64,
}

/// The second version of an alias and the share of calls it gets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    pub version: u32,
    /// Share of calls, 0 to 100 (fractions allowed). 0 after a rollback.
    pub percent: f64,
    /// When set, the canary is rolled back (its percent set to 0) once its error rate
    /// crosses the bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    /// Why the canary was rolled back, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
}

/// A canary's automatic rollback: more than `max_error_rate` of its calls failing within
/// `window_ms`, counted once at least `min_calls` calls were made in that window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Guard {
    pub max_error_rate: f64,
    #[serde(default = "guard_window_default")]
    pub window_ms: u32,
    #[serde(default = "guard_min_calls_default")]
    pub min_calls: u32,
}

fn guard_window_default() -> u32 {
    60_000
}
fn guard_min_calls_default() -> u32 {
    20
}

/// Which code and configuration of a function a call runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Qualifier {
    Latest,
    Version(u32),
    Alias(String),
}

impl Qualifier {
    /// Splits `fn`, `fn:3`, `fn:prod` or `fn:$LATEST` into the name and its qualifier.
    pub fn split(target: &str) -> Result<(&str, Qualifier), String> {
        match target.split_once(':') {
            None => Ok((target, Qualifier::Latest)),
            Some((name, q)) => Ok((name, q.parse()?)),
        }
    }
}

impl std::str::FromStr for Qualifier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "$LATEST" || s.is_empty() {
            return Ok(Qualifier::Latest);
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u32>() {
                Ok(v) if v >= 1 => Ok(Qualifier::Version(v)),
                _ => Err(format!("`{s}` is not a version number (1 or more)")),
            };
        }
        validate_alias_name(s)?;
        Ok(Qualifier::Alias(s.to_string()))
    }
}

impl std::fmt::Display for Qualifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Qualifier::Latest => f.write_str("$LATEST"),
            Qualifier::Version(v) => write!(f, "{v}"),
            Qualifier::Alias(a) => f.write_str(a),
        }
    }
}

/// An alias name: 1 to 64 of `[A-Za-z0-9_-]`, starting with a letter (so it is never taken
/// for a version number).
pub fn validate_alias_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > limits::NAME_LEN_MAX {
        return Err(format!(
            "alias names are 1 to {} characters long",
            limits::NAME_LEN_MAX
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!("alias `{name}` must start with a letter"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "alias `{name}` contains `{c}`; only letters, digits, `-` and `_` are allowed"
        ));
    }
    Ok(())
}

impl Alias {
    /// Checks the alias's own fields (that its versions exist is the store's to say).
    pub fn validate(&self) -> Result<(), String> {
        validate_alias_name(&self.name)?;
        if self.version == 0 {
            return Err("version must be 1 or more".into());
        }
        if let Some(c) = &self.canary {
            if c.version == 0 {
                return Err("canary version must be 1 or more".into());
            }
            if c.version == self.version {
                return Err(format!(
                    "the canary version is the alias's own version ({})",
                    c.version
                ));
            }
            if !(0.0..=100.0).contains(&c.percent) || !c.percent.is_finite() {
                return Err(format!("canary percent {} must be 0 to 100", c.percent));
            }
            if let Some(g) = &c.guard {
                if !(0.0..=1.0).contains(&g.max_error_rate) || !g.max_error_rate.is_finite() {
                    return Err(format!(
                        "guard max_error_rate {} must be 0 to 1",
                        g.max_error_rate
                    ));
                }
                if !(1_000..=3_600_000).contains(&g.window_ms) {
                    return Err("guard window_ms must be 1000 to 3600000".into());
                }
                if !(1..=100_000).contains(&g.min_calls) {
                    return Err("guard min_calls must be 1 to 100000".into());
                }
            }
        }
        if self.description.chars().count() > limits::DESCRIPTION_LEN_MAX {
            return Err(format!(
                "description is longer than {} characters",
                limits::DESCRIPTION_LEN_MAX
            ));
        }
        Ok(())
    }

    /// The version a call runs: the canary for `percent` of the points in 0..10000, so a
    /// caller's affinity point (a hash of its key) always gets the same one while the
    /// weights stay; a random point otherwise.
    pub fn pick(&self, point: u32) -> u32 {
        match &self.canary {
            Some(c) if (point % 10_000) < (c.percent * 100.0).round() as u32 => c.version,
            _ => self.version,
        }
    }

    /// The versions it points at.
    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.version).chain(self.canary.as_ref().map(|c| c.version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifiers_parse() {
        assert_eq!(Qualifier::split("f").unwrap(), ("f", Qualifier::Latest));
        assert_eq!(
            Qualifier::split("f:$LATEST").unwrap(),
            ("f", Qualifier::Latest)
        );
        assert_eq!(
            Qualifier::split("f:3").unwrap(),
            ("f", Qualifier::Version(3))
        );
        assert_eq!(
            Qualifier::split("f:prod").unwrap(),
            ("f", Qualifier::Alias("prod".into()))
        );
        assert!(Qualifier::split("f:0").is_err());
        assert!(Qualifier::split("f:9999999999").is_err());
        assert!(Qualifier::split("f:-x").is_err());
        assert!(Qualifier::split("f:a b").is_err());
    }

    #[test]
    fn a_canary_takes_its_share_of_points() {
        let alias = Alias {
            name: "prod".into(),
            version: 1,
            canary: Some(Canary {
                version: 2,
                percent: 10.0,
                guard: None,
                rolled_back: None,
            }),
            description: String::new(),
            updated_at_ms: 0,
        };
        let to_canary = (0..10_000).filter(|p| alias.pick(*p) == 2).count();
        assert_eq!(to_canary, 1_000);
        assert!(alias.validate().is_ok());
        let same = Alias {
            canary: Some(Canary {
                version: 1,
                percent: 5.0,
                guard: None,
                rolled_back: None,
            }),
            ..alias.clone()
        };
        assert!(same.validate().is_err());
        let too_much = Alias {
            canary: Some(Canary {
                version: 2,
                percent: 101.0,
                guard: None,
                rolled_back: None,
            }),
            ..alias
        };
        assert!(too_much.validate().is_err());
    }
}
