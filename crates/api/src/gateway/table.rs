//! The route table: which function serves a path and method, compiled once per change.
//!
//! Routes with the same shape (`/a/{x}` and `/a/{y}`) share one entry of the matcher and
//! are told apart by method; a shape and method claimed twice is a conflict, refused with a
//! message naming both functions.

use std::sync::Arc;

use model::http::{HttpTrigger, Segment, Trigger, methods_overlap, parse_route, route_shape};
use model::{Function, FunctionType};

use super::guard::Guard;

/// One route of one function.
pub struct Route {
    pub function: String,
    pub kind: FunctionType,
    /// Upper-case methods; empty is any.
    pub methods: Vec<String>,
    /// Names of the path parameters, in order.
    pub params: Vec<String>,
    /// `GET /catalog/{id}`, as API Gateway names routes (`ANY` for any method).
    pub route_key: String,
    /// For function URLs: the prefix (`/fn/name`) removed before the path reaches a web app.
    pub strip_prefix: Option<String>,
    /// What pauses the route (`nimbus triggers pause FUNCTION PATH`): its function's name
    /// and its path. Function URLs are not triggers and are not paused.
    pub paused_as: Option<(String, String)>,
    pub guard: Arc<Guard>,
    /// The event a handler gets.
    pub payload: super::event::Payload,
}

impl Route {
    pub fn allows(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }
}

/// What a path resolved to.
pub struct Found<'a> {
    pub routes: &'a [Route],
    /// Parameter values in route order (names are per route).
    pub values: Vec<String>,
}

/// All routes of the gateway.
#[derive(Default)]
pub struct RouteTable {
    matcher: matchit::Router<usize>,
    groups: Vec<(String, Vec<Route>)>,
}

impl RouteTable {
    /// Compiles the routes of `functions`. A conflict names both functions.
    pub fn build(functions: &[Function]) -> Result<RouteTable, String> {
        let mut table = RouteTable::default();
        for f in functions {
            for route in routes_of(f)? {
                table.insert(route)?;
            }
        }
        Ok(table)
    }

    fn insert(&mut self, (pattern, route): (String, Route)) -> Result<(), String> {
        // A function URL's root with a trailing slash is literal; every other pattern is
        // parsed (and was validated at deploy).
        let (shape, matcher_path) = if pattern.len() > 1 && pattern.ends_with('/') {
            (pattern.clone(), pattern.clone())
        } else {
            let segments = parse_route(&pattern).map_err(|e| format!("route {pattern}: {e}"))?;
            (route_shape(&segments), matcher_path(&segments))
        };
        if let Some((_, group)) = self.groups.iter_mut().find(|(s, _)| *s == shape) {
            if let Some(other) = group
                .iter()
                .find(|r| methods_overlap(&r.methods, &route.methods))
            {
                return Err(format!(
                    "route `{}` of function `{}` conflicts with route `{}` of function `{}`",
                    route.route_key, route.function, other.route_key, other.function
                ));
            }
            group.push(route);
            return Ok(());
        }
        let index = self.groups.len();
        self.matcher.insert(matcher_path, index).map_err(|e| {
            format!(
                "route `{}` of function `{}` cannot be added: {e}",
                route.route_key, route.function
            )
        })?;
        self.groups.push((shape, vec![route]));
        Ok(())
    }

    /// The routes for `path`, with the parameter values it carries.
    pub fn find(&self, path: &str) -> Option<Found<'_>> {
        let m = self.matcher.at(path).ok()?;
        let (_, routes) = &self.groups[*m.value];
        // matchit names parameters p0, p1, …; their order is the route's order.
        let mut values: Vec<(usize, String)> = m
            .params
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix('p')?.parse().ok()?, v.to_string())))
            .collect();
        values.sort_by_key(|(i, _)| *i);
        Some(Found {
            routes,
            values: values.into_iter().map(|(_, v)| v).collect(),
        })
    }
}

/// The matcher's syntax for a route: positional parameter names, so routes of one shape
/// share an entry whatever their parameter names.
fn matcher_path(segments: &[Segment]) -> String {
    let mut path = String::new();
    for (i, s) in segments.iter().enumerate() {
        path.push('/');
        match s {
            Segment::Literal(l) => path.push_str(l),
            Segment::Param(_) => path.push_str(&format!("{{p{i}}}")),
            Segment::Greedy(_) => path.push_str(&format!("{{*p{i}}}")),
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

fn param_names(segments: &[Segment]) -> Vec<String> {
    segments
        .iter()
        .filter_map(|s| match s {
            Segment::Param(n) | Segment::Greedy(n) => Some(n.clone()),
            Segment::Literal(_) => None,
        })
        .collect()
}

/// The routes of one function: its triggers, and its function URL if enabled.
fn routes_of(f: &Function) -> Result<Vec<(String, Route)>, String> {
    let spec = &f.spec;
    let mut routes = Vec::new();
    for t in spec.triggers.iter().filter_map(Trigger::http) {
        // A route to a version or alias calls `name:qualifier`.
        let target = match &t.qualifier {
            Some(q) => format!("{}:{q}", spec.name),
            None => spec.name.clone(),
        };
        routes.push(trigger_route(target, spec.kind, spec.conventions, t)?);
    }
    if let Some(options) = &spec.url {
        let guard = Arc::new(Guard::compile(options, &[])?);
        let prefix = format!("/fn/{}", spec.name);
        for pattern in [
            prefix.clone(),
            format!("{prefix}/"),
            format!("{prefix}/{{proxy+}}"),
        ] {
            let segments = parse_route(&pattern).unwrap_or_default();
            routes.push((
                pattern.clone(),
                Route {
                    function: spec.name.clone(),
                    kind: spec.kind,
                    methods: Vec::new(),
                    params: param_names(&segments),
                    route_key: format!("ANY {pattern}"),
                    strip_prefix: Some(prefix.clone()),
                    paused_as: None,
                    guard: guard.clone(),
                    payload: payload_of(spec.conventions, None),
                },
            ));
        }
    }
    Ok(routes)
}

/// The event a route's handler gets: Function Compute's for `conventions: fc`, else the
/// payload version the route names.
fn payload_of(conventions: model::Conventions, version: Option<&str>) -> super::event::Payload {
    use super::event::Payload;
    match (conventions, version) {
        (model::Conventions::Fc, _) => Payload::Fc,
        (_, Some("1.0")) => Payload::V1,
        _ => Payload::V2,
    }
}

fn trigger_route(
    function: String,
    kind: FunctionType,
    conventions: model::Conventions,
    t: &HttpTrigger,
) -> Result<(String, Route), String> {
    let segments = parse_route(&t.path).map_err(|e| format!("route {}: {e}", t.path))?;
    let methods: Vec<String> = t.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
    let route_key = if methods.is_empty() {
        format!("ANY {}", t.path)
    } else {
        format!("{} {}", methods.join(","), t.path)
    };
    let guard = Arc::new(Guard::compile(&t.options(), &methods)?);
    let paused_as = Some((
        function
            .split_once(':')
            .map_or(function.as_str(), |(f, _)| f)
            .to_string(),
        t.path.clone(),
    ));
    Ok((
        t.path.clone(),
        Route {
            function,
            paused_as,
            kind,
            methods,
            params: param_names(&segments),
            route_key,
            strip_prefix: None,
            guard,
            payload: if t.format == model::timer::EventFormat::Cloudevent {
                super::event::Payload::Cloud
            } else {
                payload_of(conventions, t.payload_format_version.as_deref())
            },
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::http::HttpTrigger;

    fn function(name: &str, routes: &[(&str, &[&str])]) -> Function {
        let triggers = routes
            .iter()
            .map(|(path, methods)| {
                Trigger::Http(HttpTrigger {
                    path: path.to_string(),
                    methods: methods.iter().map(|m| m.to_string()).collect(),
                    auth: Default::default(),
                    cors: None,
                    allow: vec![],
                    deny: vec![],
                    body_limit_bytes: None,
                    rate_limit: None,
                    qualifier: None,
                    payload_format_version: None,
                    format: Default::default(),
                })
            })
            .collect();
        Function {
            spec: model::FunctionSpec {
                triggers,
                ..model::FunctionSpec::new(
                    name,
                    model::Runtime::Python3,
                    "main.handler",
                    &"0".repeat(64),
                )
            },
            revision: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn finds_params_greedy_and_methods() {
        let table = RouteTable::build(&[
            function("a", &[("/catalog/{id}", &["GET"]), ("/files/{path+}", &[])]),
            function(
                "b",
                &[("/catalog/{name}", &["POST"]), ("/catalog", &["GET"])],
            ),
        ])
        .unwrap();
        let found = table.find("/catalog/42").unwrap();
        assert_eq!(found.values, ["42"]);
        let funcs: Vec<_> = found
            .routes
            .iter()
            .map(|r| (r.function.as_str(), r.params.clone()))
            .collect();
        assert_eq!(
            funcs,
            [
                ("a", vec!["id".to_string()]),
                ("b", vec!["name".to_string()])
            ]
        );
        assert_eq!(
            table.find("/files/a/b/c.txt").unwrap().values,
            ["a/b/c.txt"]
        );
        assert!(table.find("/files/").is_none());
        assert!(table.find("/nothing").is_none());
        assert_eq!(table.find("/catalog").unwrap().routes[0].function, "b");
    }

    #[test]
    fn conflicts_name_both_functions() {
        let err = RouteTable::build(&[
            function("a", &[("/items/{id}", &["GET", "PUT"])]),
            function("b", &[("/items/{name}", &["PUT"])]),
        ])
        .err()
        .unwrap();
        assert_eq!(
            err,
            "route `PUT /items/{name}` of function `b` conflicts with route `GET,PUT /items/{id}` of function `a`"
        );
        assert!(
            RouteTable::build(&[
                function("a", &[("/x", &[])]),
                function("b", &[("/x", &["GET"])])
            ])
            .is_err()
        );
    }
}
