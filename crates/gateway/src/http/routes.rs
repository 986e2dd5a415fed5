//! The HTTP routes of the RPCs, read from the `google.api.http` options of the proto at startup,
//! so the proto stays the one place they are declared. The template grammar is the part of
//! Google's HTTP rule syntax the API uses: literal segments, single-segment variables
//! (`{name}` or `{name=*}`) and a trailing custom verb (`:watch`). Anything else in the proto is
//! refused at startup rather than served wrong.

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, ReflectMessage, Value};

/// Where an RPC's request body comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyRule {
    /// No body: fields come from the path and the query.
    None,
    /// `body: "*"`: the whole JSON body is the request; only the path adds to it.
    Whole,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// A variable binding one path segment to a request field.
    Field(String),
}

/// One route: an HTTP method and path template bound to an RPC.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) method: http::Method,
    pub(crate) template: String,
    segments: Vec<Segment>,
    verb: Option<String>,
    pub(crate) body: BodyRule,
    pub(crate) rpc: MethodDescriptor,
}

/// What a request's method and path found.
#[derive(Debug)]
pub(crate) enum Found<'a> {
    /// The route, and the path's variables (percent-decoded) by field name.
    Route(&'a Route, Vec<(String, String)>),
    /// The path exists with other methods only.
    WrongMethod(Vec<http::Method>),
    NoRoute,
}

/// Every route of one service, most specific first.
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// The routes of `service` (its full name) declared in `pool`; an RPC without a
    /// `google.api.http` option has no route.
    pub(crate) fn from_pool(pool: &DescriptorPool, service: &str) -> Result<Routes, String> {
        let service = pool.get_service_by_name(service).ok_or_else(|| format!("no service {service} in the protos"))?;
        let extension = pool
            .get_extension_by_name("google.api.http")
            .ok_or("the protos do not define the google.api.http option")?;
        let mut routes = Vec::new();
        for rpc in service.methods() {
            let options = rpc.options();
            if !options.has_extension(&extension) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(&extension).into_owned() else {
                return Err(format!("{}: google.api.http is not an HttpRule", rpc.full_name()));
            };
            add_rule(&mut routes, &rpc, &rule).map_err(|e| format!("{}: {e}", rpc.full_name()))?;
        }
        // A template with a verb is tried before the same path without one, then more literal
        // segments first: `/v1/copies/{name}:watch` before `/v1/copies/{name}`.
        routes.sort_by_key(|r| {
            (
                r.verb.is_none(),
                std::cmp::Reverse(r.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count()),
            )
        });
        Ok(Routes { routes })
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The route of `method` and `path` (the request's path as sent, still percent-encoded).
    pub(crate) fn find(&self, method: &http::Method, path: &str) -> Found<'_> {
        let mut allowed = Vec::new();
        for route in &self.routes {
            let Some(bound) = route.matches(path) else { continue };
            // HEAD is GET without the body, as HTTP wants.
            if route.method == method || (method == http::Method::HEAD && route.method == http::Method::GET) {
                return Found::Route(route, bound);
            }
            if !allowed.contains(&route.method) {
                allowed.push(route.method.clone());
            }
        }
        if allowed.is_empty() { Found::NoRoute } else { Found::WrongMethod(allowed) }
    }
}

fn add_rule(routes: &mut Vec<Route>, rpc: &MethodDescriptor, rule: &DynamicMessage) -> Result<(), String> {
    let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let mut pattern = None;
    for (field, method) in [
        ("get", http::Method::GET),
        ("put", http::Method::PUT),
        ("post", http::Method::POST),
        ("delete", http::Method::DELETE),
        ("patch", http::Method::PATCH),
    ] {
        let field_desc = rule.descriptor().get_field_by_name(field).ok_or("HttpRule without its fields")?;
        if rule.has_field(&field_desc) {
            pattern = Some((method, text(field)));
        }
    }
    let (method, template) = pattern.ok_or("only get, put, post, delete and patch routes are supported")?;
    let body = match text("body").as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::Whole,
        other => return Err(format!("body \"{other}\": only \"*\" or none is supported")),
    };
    if !text("response_body").is_empty() {
        return Err("response_body is not supported".into());
    }
    let (segments, verb) = parse_template(&template)?;
    for segment in &segments {
        if let Segment::Field(name) = segment {
            let field = rpc.input().get_field_by_name(name).ok_or_else(|| format!("{template}: no field {name}"))?;
            if field.is_list() || field.kind() != prost_reflect::Kind::String {
                return Err(format!("{template}: path variable {name} must be a singular string field"));
            }
        }
    }
    routes.push(Route { method, template, segments, verb, body, rpc: rpc.clone() });
    if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
        for binding in more {
            if let Value::Message(binding) = binding {
                add_rule(routes, rpc, binding)?;
            }
        }
    }
    Ok(())
}

/// Splits `/v1/copies/{name}:watch` into its segments and verb.
fn parse_template(template: &str) -> Result<(Vec<Segment>, Option<String>), String> {
    let rest = template.strip_prefix('/').ok_or_else(|| format!("{template}: must begin with /"))?;
    // The verb follows the last colon outside braces.
    let (path, verb) = match rest.rfind(':') {
        Some(at) if !rest[at..].contains('}') => (&rest[..at], Some(rest[at + 1..].to_owned())),
        _ => (rest, None),
    };
    if let Some(verb) = &verb
        && (verb.is_empty() || !verb.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        return Err(format!("{template}: bad verb"));
    }
    let mut segments = Vec::new();
    for part in path.split('/') {
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let name = inner.strip_suffix("=*").unwrap_or(inner);
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("{template}: variable {{{inner}}} is not supported (one segment, one field)"));
            }
            segments.push(Segment::Field(name.to_owned()));
        } else if part.is_empty() || part.contains(['{', '}', '*', ':']) {
            return Err(format!("{template}: segment \"{part}\" is not supported"));
        } else {
            segments.push(Segment::Literal(part.to_owned()));
        }
    }
    Ok((segments, verb))
}

impl Route {
    /// The path's variables when `path` fits this route's template.
    fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            // The verb is matched before decoding: `%3A` in a name is a colon of the name.
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut bound = Vec::new();
        for (part, segment) in parts.iter().zip(&self.segments) {
            match segment {
                Segment::Literal(literal) if part == literal => {}
                Segment::Literal(_) => return None,
                Segment::Field(name) => {
                    let value = percent_decode(part)?;
                    if value.is_empty() {
                        return None;
                    }
                    bound.push((name.clone(), value));
                }
            }
        }
        Some(bound)
    }
}

/// `%XX` escapes decoded; `None` when the result is not UTF-8 or an escape is broken.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        let pool = DescriptorPool::decode(snapgate_proto::FILE_DESCRIPTOR_SET).unwrap();
        Routes::from_pool(&pool, "snapgate.v1.SnapshotCopyService").unwrap()
    }

    fn rpc(found: Found<'_>) -> (String, Vec<(String, String)>) {
        match found {
            Found::Route(route, bound) => (route.rpc.name().to_owned(), bound),
            other => panic!("no route: {other:?}"),
        }
    }

    #[test]
    fn every_rpc_has_its_route_from_the_proto() {
        let routes = routes();
        let mut names: Vec<&str> = routes.iter().map(|r| r.rpc.name()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "ApplyPlan",
                "CancelCopy",
                "CopyClusterSnapshot",
                "DeletePlan",
                "GetCopy",
                "GetPlan",
                "ListCopies",
                "ListPlanRuns",
                "ListPlans",
                "PreviewPlan",
                "RunPlan",
                "WatchCopy"
            ]
        );
    }

    #[test]
    fn arns_fit_in_the_path_with_their_colons() {
        let routes = routes();
        let arn = "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:my-copy";
        let get = rpc(routes.find(&http::Method::GET, &format!("/v1/copies/{arn}")));
        assert_eq!(get, ("GetCopy".to_owned(), vec![("name".to_owned(), arn.to_owned())]));
        let watch = rpc(routes.find(&http::Method::GET, &format!("/v1/copies/{arn}:watch")));
        assert_eq!(watch, ("WatchCopy".to_owned(), vec![("name".to_owned(), arn.to_owned())]));
        let cancel = rpc(routes.find(&http::Method::POST, "/v1/copies/my-copy:cancel"));
        assert_eq!(cancel, ("CancelCopy".to_owned(), vec![("name".to_owned(), "my-copy".to_owned())]));
        assert_eq!(rpc(routes.find(&http::Method::GET, "/v1/copies")).0, "ListCopies");
        assert_eq!(rpc(routes.find(&http::Method::POST, "/v1/copies")).0, "CopyClusterSnapshot");
        // A snapshot named like a verb: its colon escaped.
        let named_watch = rpc(routes.find(&http::Method::GET, "/v1/copies/arn:aws:rds:x:1:cluster-snapshot%3Awatch"));
        assert_eq!(named_watch.0, "GetCopy");
        assert_eq!(named_watch.1[0].1, "arn:aws:rds:x:1:cluster-snapshot:watch");
    }

    #[test]
    fn other_paths_and_methods_are_told_apart() {
        let routes = routes();
        assert!(matches!(routes.find(&http::Method::GET, "/v1/nothing"), Found::NoRoute));
        assert!(matches!(routes.find(&http::Method::GET, "/v1/copies/a/b"), Found::NoRoute));
        assert!(matches!(routes.find(&http::Method::GET, "/v1/copies/"), Found::NoRoute));
        assert!(matches!(routes.find(&http::Method::GET, "/v1/copies/%zz"), Found::NoRoute));
        match routes.find(&http::Method::DELETE, "/v1/copies") {
            Found::WrongMethod(allowed) => assert_eq!(allowed.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unsupported_templates_are_refused() {
        for bad in ["v1/x", "/v1/{name=copies/**}", "/v1/{}", "/v1/x:", "/v1//x", "/v1/a*"] {
            assert!(parse_template(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_template("/v1/{name=*}:go").unwrap(),
            (vec![Segment::Literal("v1".into()), Segment::Field("name".into())], Some("go".into()))
        );
    }
}
