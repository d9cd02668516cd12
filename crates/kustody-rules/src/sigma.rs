//! Sigma rules for the `kubernetes`/`audit` log source, translated into the Falco condition
//! language so they run in the same compiled engine, with the same index and outputs.
//!
//! Semantics (SigmaHQ specification): string matching is case-insensitive unless `|cased`;
//! `*` and `?` are wildcards (`\*`, `\?` literal); a list of values is OR, `|all` makes it AND;
//! `field: '*'` means the field is present, `field: null` that it is absent. Each comparison
//! becomes an `iglob`/`glob` pattern (fnmatch), so case folding and wildcards are exact.
//! Conditions: selection names, `and`, `or`, `not`, parentheses, `1 of X*`, `all of X*`,
//! `1 of them`, `all of them`.
//!
//! Field names: a name listed in the field-mapping file (`data/sigma-field-mapping.yaml`) maps to
//! a dotted native path or a `ka.*`/`kustody.*` field; any other dotted name is a JSON pointer
//! into the event.

use kustody_model::yaml::Node;
use kustody_model::Priority;

/// Why a Sigma rule (or the field-mapping file) cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigmaError {
    /// The field-mapping file is not valid YAML.
    #[error("{line}:{col}: {message}")]
    Mapping { line: u32, col: u32, message: String },
    #[error("Sigma rule without `title`")]
    NoTitle,
    #[error("log source {product:?}/{service:?} is not kubernetes/audit")]
    LogSource { product: Option<String>, service: Option<String> },
    #[error("Sigma rule without `detection`")]
    NoDetection,
    #[error("`detection` must be a mapping")]
    DetectionNotMapping,
    #[error("detection without `condition`")]
    NoCondition,
    /// A Sigma feature kustody does not translate: `timeframe`, keyword selections, a modifier.
    #[error("{0} is not supported yet")]
    Unsupported(String),
    /// A problem inside the named selection.
    #[error("selection `{name}`: {source}")]
    Selection { name: String, source: Box<SigmaError> },
    #[error("selection keys must be field names")]
    SelectionKey,
    #[error("empty selection")]
    EmptySelection,
    #[error("`{key}` has no values")]
    NoValues { key: String },
    #[error("`{key}` needs a number, not `{value}`")]
    NotANumber { key: String, value: String },
    #[error("`expand` produces too many values")]
    ExpandTooMany,
    #[error("placeholder `{0}` has no values (add it under `placeholders:` in the field-mapping file)")]
    UnknownPlaceholder(String),
    #[error("`of` needs a target")]
    OfWithoutTarget,
    #[error("`{quantifier} of {target}` matches no selection")]
    OfMatchesNothing { quantifier: String, target: String },
    #[error("condition names `{0}`, which is not a selection")]
    UnknownSelection(String),
    #[error("empty condition")]
    EmptyCondition,
}

/// The field mapping shipped with kustody.
pub const DEFAULT_MAPPING: &str = include_str!("../data/sigma-field-mapping.yaml");

/// A Sigma rule translated to Falco form.
#[derive(Debug)]
pub struct Translated {
    pub title: String,
    pub condition: String,
    pub output: String,
    pub desc: String,
    pub priority: Priority,
    pub tags: Vec<String>,
    /// Problems that do not stop the rule (e.g. a selection that can never match).
    pub warnings: Vec<String>,
}

/// Paths whose values are numbers in every audit event: a non-numeric literal can never match.
const NUMERIC_PATHS: &[&str] = &["responseStatus.code"];

/// Parses the mapping file into (sigma name, target) pairs.
pub fn parse_mapping(text: &str) -> Result<Vec<(String, String)>, SigmaError> {
    let docs = kustody_model::yaml::parse(text).map_err(|e| SigmaError::Mapping {
        line: e.pos.line,
        col: e.pos.col,
        message: e.message,
    })?;
    let mut out = Vec::new();
    if let Some(Node::Map { entries, .. }) = docs.first() {
        for (k, v) in entries {
            match (k.as_str(), v) {
                // `placeholders: {name: [values]}` feeds the `expand` modifier (`%name%`).
                (Some("placeholders"), Node::Map { entries: ph, .. }) => {
                    for (name, values) in ph {
                        let (Some(name), Node::Seq { items, .. }) = (name.as_str(), values) else { continue };
                        let vals: Vec<&str> = items.iter().filter_map(Node::as_str).collect();
                        out.push((format!("%{name}%"), vals.join("\n")));
                    }
                }
                (Some(k), v) => {
                    if let Some(v) = v.as_str() {
                        out.push((k.to_owned(), v.to_owned()));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A Sigma value as an fnmatch pattern: Sigma wildcards kept, fnmatch's other specials escaped.
fn pattern(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some('*' | '?' | '\\') => {
                    out.push('\\');
                    out.extend(chars.next());
                }
                _ => out.push_str("\\\\"),
            },
            '[' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

fn field_expr(name: &str, mapping: &[(String, String)]) -> String {
    let target = mapping.iter().find(|(k, _)| k == name).map_or(name, |(_, v)| v.as_str());
    if target.starts_with("ka.") || target.starts_with("kustody.") || target.starts_with("jevt.") {
        return target.to_owned();
    }
    let ptr: Vec<String> = target.split('.').map(|s| s.replace('~', "~0").replace('/', "~1")).collect();
    format!("jevt.value[/{}]", ptr.join("/"))
}

/// `base64`: the value base64-encoded; `base64offset`: the three encodings of the value at byte
/// offsets 0, 1 and 2 inside a longer text, without the edge characters that depend on the
/// neighbours (use with `contains`); `windash`: `-` and `/` (and the Unicode dashes) swapped
/// as option prefixes.
fn variants(v: &str, encode: Option<&str>, windash: bool) -> Vec<String> {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = match encode {
        Some("base64") => vec![b64(v.as_bytes())],
        Some(_) => (0..3usize)
            .map(|i| {
                let mut padded = vec![b' '; i];
                padded.extend_from_slice(v.as_bytes());
                let enc = b64(&padded);
                let start = [0, 2, 3].get(i).copied().unwrap_or(0);
                let cut = [0, 3, 2].get((v.len() + i) % 3).copied().unwrap_or(0);
                // pySigma's slicing: the cut also drops the padding.
                enc.get(start..enc.len().saturating_sub(cut)).unwrap_or(&enc).to_owned()
            })
            .collect(),
        None => vec![v.to_owned()],
    };
    if windash {
        let mut more = Vec::new();
        for x in &out {
            for dash in ['-', '/', '\u{2013}', '\u{2014}', '\u{2015}'] {
                if let Some(rest) = x.strip_prefix(['-', '/']) {
                    more.push(format!("{dash}{rest}"));
                }
            }
        }
        out.extend(more);
        out.dedup();
    }
    out
}

/// `expand`: every `%name%` is replaced by each of the placeholder's values from the mapping
/// file's `placeholders` section.
fn expand_placeholders(
    values: Vec<Option<String>>,
    mapping: &[(String, String)],
) -> Result<Vec<Option<String>>, SigmaError> {
    let mut out = Vec::new();
    let mut todo: Vec<String> = values.iter().flatten().cloned().collect();
    out.extend(values.iter().filter(|v| v.is_none()).cloned());
    let mut guard = 0;
    while let Some(v) = todo.pop() {
        guard += 1;
        if guard > 10_000 {
            return Err(SigmaError::ExpandTooMany);
        }
        let Some(start) = v.find('%') else {
            out.push(Some(v));
            continue;
        };
        let Some(len) = v.get(start + 1..).and_then(|r| r.find('%')) else {
            out.push(Some(v));
            continue;
        };
        let name = v.get(start..start + len + 2).unwrap_or("");
        let Some((_, vals)) = mapping.iter().find(|(k, _)| k == name) else {
            return Err(SigmaError::UnknownPlaceholder(name.to_owned()));
        };
        for val in vals.split('\n') {
            todo.push(format!("{}{val}{}", v.get(..start).unwrap_or(""), v.get(start + len + 2..).unwrap_or("")));
        }
    }
    out.reverse();
    Ok(out)
}

fn is_list_field(f: &str) -> bool {
    crate::fields::lookup(f.split('[').next().unwrap_or(f)).is_some_and(|i| i.is_list)
}

fn scalar_text(n: &Node) -> Option<String> {
    match n {
        Node::Scalar { value, .. } => Some(value.clone()),
        _ => None,
    }
}

/// Translates one `field|mods: values` pair.
fn pair(
    key: &str,
    value: &Node,
    mapping: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<String, SigmaError> {
    let mut parts = key.split('|');
    let name = parts.next().unwrap_or("");
    let mods: Vec<&str> = parts.collect();
    let field = field_expr(name, mapping);
    let list_field = is_list_field(&field);
    let mut cased = false;
    let mut all = false;
    let mut shape = "exact";
    let mut regex_flags = String::new();
    let mut fieldref = false;
    let mut exists: Option<bool> = None;
    let mut encode: Option<&str> = None;
    let mut windash = false;
    let mut expand = false;
    for m in &mods {
        match *m {
            "base64" | "base64offset" => encode = Some(m),
            "windash" => windash = true,
            "expand" => expand = true,
            "cidr" => shape = "cidr",
            "gt" | "gte" | "lt" | "lte" => shape = m,
            "contains" | "startswith" | "endswith" => shape = m,
            "all" => all = true,
            "cased" => cased = true,
            "re" => shape = "re",
            "i" | "m" | "s" if shape == "re" => regex_flags.push_str(m),
            "exists" => exists = Some(value.as_str() != Some("false")),
            "fieldref" => fieldref = true,
            other => return Err(SigmaError::Unsupported(format!("modifier `{other}`"))),
        }
    }
    if let Some(e) = exists {
        return Ok(if e { format!("{field} exists") } else { format!("not {field} exists") });
    }
    let values: Vec<Option<String>> = match value {
        Node::Seq { items, .. } => items.iter().map(|i| if i.is_null() { None } else { scalar_text(i) }).collect(),
        n if n.is_null() => vec![None],
        n => vec![scalar_text(n)],
    };
    if values.is_empty() {
        return Err(SigmaError::NoValues { key: key.to_owned() });
    }
    let numeric =
        NUMERIC_PATHS.contains(&name) || mapping.iter().any(|(k, v)| k == name && NUMERIC_PATHS.contains(&v.as_str()));
    if numeric && shape == "exact" {
        let impossible: Vec<&String> =
            values.iter().flatten().filter(|v| !v.contains(['*', '?']) && v.parse::<i64>().is_err()).collect();
        if !impossible.is_empty() && impossible.len() == values.len() {
            warnings.push(format!(
                "`{name}` is a number in every audit event, so {} can never match",
                impossible.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let values = if expand { expand_placeholders(values, mapping)? } else { values };
    // Value transformations multiply the values: each variant is one more alternative.
    let values: Vec<Option<String>> = values
        .into_iter()
        .flat_map(|v| match v {
            None => vec![None],
            Some(v) => variants(&v, encode, windash).into_iter().map(Some).collect(),
        })
        .collect();
    let mut terms = Vec::new();
    for v in values {
        let Some(v) = v else {
            terms.push(format!("not {field} exists"));
            continue;
        };
        if fieldref {
            terms.push(format!("{field} = val({})", field_expr(&v, mapping)));
            continue;
        }
        if shape == "cidr" {
            terms.push(format!("{field} cidr ({})", quote(&v)));
            continue;
        }
        if let Some(op) = match shape {
            "gt" => Some(">"),
            "gte" => Some(">="),
            "lt" => Some("<"),
            "lte" => Some("<="),
            _ => None,
        } {
            if v.trim().parse::<i64>().is_err() {
                return Err(SigmaError::NotANumber { key: key.to_owned(), value: v.clone() });
            }
            terms.push(format!("num({field}) {op} {}", v.trim()));
            continue;
        }
        if shape == "re" {
            let flags = if regex_flags.is_empty() { String::new() } else { format!("(?{regex_flags})") };
            terms.push(format!("{field} regex {}", quote(&format!("{flags}(?s:.*(?:{v}).*)"))));
            continue;
        }
        if v == "*" && shape == "exact" {
            terms.push(format!("{field} exists"));
            continue;
        }
        let p = pattern(&v);
        let p = match shape {
            "contains" => format!("*{p}*"),
            "startswith" => format!("{p}*"),
            "endswith" => format!("*{p}"),
            _ => p,
        };
        if list_field {
            // List fields take only in/intersects: exact (cased) element membership.
            terms.push(format!("{field} intersects ({})", quote(&v)));
        } else {
            terms.push(format!("{field} {} {}", if cased { "glob" } else { "iglob" }, quote(&p)));
        }
    }
    let joiner = if all { " and " } else { " or " };
    Ok(format!("({})", terms.join(joiner)))
}

/// A selection: a map (all pairs AND) or a list of maps (OR).
fn selection(n: &Node, mapping: &[(String, String)], warnings: &mut Vec<String>) -> Result<String, SigmaError> {
    match n {
        Node::Map { entries, .. } => {
            let mut parts = Vec::new();
            for (k, v) in entries {
                let key = k.as_str().ok_or(SigmaError::SelectionKey)?;
                parts.push(pair(key, v, mapping, warnings)?);
            }
            if parts.is_empty() {
                return Err(SigmaError::EmptySelection);
            }
            Ok(format!("({})", parts.join(" and ")))
        }
        Node::Seq { items, .. } if items.iter().all(|i| matches!(i, Node::Map { .. })) => {
            let parts: Result<Vec<_>, _> = items.iter().map(|i| selection(i, mapping, warnings)).collect();
            Ok(format!("({})", parts?.join(" or ")))
        }
        _ => Err(SigmaError::Unsupported("keyword selections (lists of plain values)".into())),
    }
}

fn glob_names<'a>(pat: &str, names: &'a [String]) -> Vec<&'a String> {
    let p = crate::fnmatch::Pattern::new(pat, false);
    names.iter().filter(|n| p.matches(n)).collect()
}

/// Translates a Sigma condition, substituting selections.
fn condition(cond: &str, sels: &[(String, String)]) -> Result<String, SigmaError> {
    let names: Vec<String> = sels.iter().map(|(n, _)| n.clone()).collect();
    let get = |n: &str| sels.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let spaced = cond.replace('(', " ( ").replace(')', " ) ");
    let toks: Vec<&str> = spaced.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&t) = toks.get(i) {
        match t {
            "and" | "or" | "not" | "(" | ")" => out.push(t.to_owned()),
            "1" | "all" | "any" if toks.get(i + 1) == Some(&"of") => {
                let target = toks.get(i + 2).ok_or(SigmaError::OfWithoutTarget)?;
                let matched: Vec<&String> = if *target == "them" {
                    names.iter().filter(|n| !n.starts_with('_')).collect()
                } else {
                    glob_names(target, &names)
                };
                if matched.is_empty() {
                    return Err(SigmaError::OfMatchesNothing {
                        quantifier: t.to_owned(),
                        target: (*target).to_owned(),
                    });
                }
                let parts: Vec<String> = matched.iter().filter_map(|n| get(n)).collect();
                out.push(format!("({})", parts.join(if t == "all" { " and " } else { " or " })));
                i += 2;
            }
            name => out.push(get(name).ok_or_else(|| SigmaError::UnknownSelection(name.to_owned()))?),
        }
        i += 1;
    }
    if out.is_empty() {
        return Err(SigmaError::EmptyCondition);
    }
    Ok(out.join(" "))
}

fn level_priority(level: Option<&str>) -> Priority {
    match level.map(str::to_ascii_lowercase).as_deref() {
        Some("critical") => Priority::Critical,
        Some("high") => Priority::Error,
        Some("medium") => Priority::Warning,
        Some("low") => Priority::Notice,
        _ => Priority::Informational,
    }
}

/// Translates one Sigma rule document.
pub fn translate(doc: &Node, mapping: &[(String, String)]) -> Result<Translated, SigmaError> {
    let title = doc.get("title").and_then(Node::as_str).ok_or(SigmaError::NoTitle)?.to_owned();
    let ls = doc.get("logsource");
    let product = ls.and_then(|l| l.get("product")).and_then(Node::as_str);
    let service = ls.and_then(|l| l.get("service")).and_then(Node::as_str);
    if product != Some("kubernetes") || service != Some("audit") {
        return Err(SigmaError::LogSource { product: product.map(str::to_owned), service: service.map(str::to_owned) });
    }
    let det = doc.get("detection").ok_or(SigmaError::NoDetection)?;
    let Node::Map { entries, .. } = det else { return Err(SigmaError::DetectionNotMapping) };
    let mut warnings = Vec::new();
    let mut sels = Vec::new();
    let mut cond_text = None;
    for (k, v) in entries {
        let Some(name) = k.as_str() else { continue };
        match name {
            "condition" => cond_text = Some(v),
            "timeframe" => return Err(SigmaError::Unsupported("`timeframe` (aggregation)".into())),
            _ => sels.push((
                name.to_owned(),
                selection(v, mapping, &mut warnings)
                    .map_err(|e| SigmaError::Selection { name: name.to_owned(), source: Box::new(e) })?,
            )),
        }
    }
    let cond = match cond_text {
        Some(Node::Scalar { value, .. }) => condition(value, &sels)?,
        Some(Node::Seq { items, .. }) => {
            let parts: Result<Vec<_>, SigmaError> =
                items.iter().filter_map(Node::as_str).map(|c| condition(c, &sels)).collect();
            format!("({})", parts?.join(") or ("))
        }
        _ => return Err(SigmaError::NoCondition),
    };
    let mut tags: Vec<String> = match doc.get("tags") {
        Some(Node::Seq { items, .. }) => items.iter().filter_map(Node::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    tags.push("sigma".into());
    let desc = doc.get("description").and_then(Node::as_str).unwrap_or("").trim().to_owned();
    Ok(Translated {
        output: format!(
            "{} (user=%ka.user.name verb=%ka.verb resource=%ka.target.resource ns=%ka.target.namespace name=%ka.target.name code=%ka.response.code agent=%ka.useragent)",
            title
        ),
        title,
        condition: cond,
        desc,
        priority: level_priority(doc.get("level").and_then(Node::as_str)),
        tags,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(yaml: &str) -> Result<Translated, SigmaError> {
        let docs = kustody_model::yaml::parse(yaml).unwrap();
        translate(&docs[0], &parse_mapping(DEFAULT_MAPPING).unwrap())
    }

    #[test]
    fn translates_selections_and_conditions() {
        let t = tr("title: T\nlogsource: {product: kubernetes, service: audit}\nlevel: high\ndetection:\n  sel_a:\n    verb: [create, delete]\n    objectRef.resource|contains: Secret\n  sel_b:\n    apiGroup|startswith: rbac\n  filter:\n    user.username: null\n  condition: 1 of sel_* and not filter\n").unwrap();
        assert_eq!(t.priority, Priority::Error);
        assert!(
            t.condition.contains("jevt.value[/verb] iglob \"create\" or jevt.value[/verb] iglob \"delete\""),
            "{}",
            t.condition
        );
        assert!(t.condition.contains("jevt.value[/objectRef/resource] iglob \"*Secret*\""), "{}", t.condition);
        assert!(t.condition.contains("jevt.value[/objectRef/apiGroup] iglob \"rbac*\""), "{}", t.condition);
        assert!(
            t.condition.contains("not (not jevt.value[/user/username] exists)")
                || t.condition.contains("not ((not jevt.value[/user/username] exists))"),
            "{}",
            t.condition
        );
        assert!(crate::cond::parse(&t.condition).is_ok());
    }

    #[test]
    fn impossible_and_unsupported() {
        let t = tr("title: T\nlogsource: {product: kubernetes, service: audit}\ndetection:\n  s:\n    responseStatus.code: 'ALLOW'\n  condition: s\n").unwrap();
        assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
        assert!(tr("title: T\nlogsource: {product: kubernetes, service: audit}\ndetection:\n  s:\n    verb|expand: '%x%'\n  condition: s\n").unwrap_err().to_string().contains("placeholder `%x%`"));
        let docs = kustody_model::yaml::parse("title: T\nlogsource: {product: kubernetes, service: audit}\ndetection:\n  s:\n    user.username|expand: '%admins%'\n  condition: s\n").unwrap();
        let mapping = parse_mapping("placeholders:\n  admins: [alice, bob]\n").unwrap();
        let t = translate(&docs[0], &mapping).unwrap();
        assert!(t.condition.contains("\"alice\"") && t.condition.contains("\"bob\""), "{}", t.condition);
        let t = tr("title: T\nlogsource: {product: kubernetes, service: audit}\ndetection:\n  s:\n    sourceIPs|cidr: [10.0.0.0/8, 'fd00::/8']\n    responseStatus.code|gte: 400\n  condition: s\n").unwrap();
        assert!(
            t.condition.contains("ka.sourceips cidr (\"10.0.0.0/8\") or ka.sourceips cidr (\"fd00::/8\")"),
            "{}",
            t.condition
        );
        assert!(t.condition.contains("num(jevt.value[/responseStatus/code]) >= 400"), "{}", t.condition);
        assert!(matches!(
            tr("title: T\nlogsource: {product: windows}\ndetection:\n  s: {a: b}\n  condition: s\n"),
            Err(SigmaError::LogSource { product: Some(p), service: None }) if p == "windows"
        ));
        assert_eq!(
            tr("title: T\nlogsource: {product: kubernetes, service: audit}\ndetection:\n  s: {verb: get}\n  condition: t\n").unwrap_err(),
            SigmaError::UnknownSelection("t".into())
        );
        let e = tr("title: T\nlogsource: {product: kubernetes, service: audit}\ndetection:\n  s: {verb|nope: get}\n  condition: s\n").unwrap_err();
        assert!(
            matches!(&e, SigmaError::Selection { name, source } if name == "s" && matches!(**source, SigmaError::Unsupported(_)))
        );
        assert_eq!(e.to_string(), "selection `s`: modifier `nope` is not supported yet");
    }

    #[test]
    fn patterns_escape_fnmatch_but_keep_sigma_wildcards() {
        assert_eq!(pattern("a*b?c"), "a*b?c");
        assert_eq!(pattern("a\\*b"), "a\\*b");
        assert_eq!(pattern("[x]"), "\\[x\\]");
        assert_eq!(pattern("C:\\Windows"), "C:\\\\Windows");
        assert_eq!(variants("abc", Some("base64"), false), ["YWJj"]);
        assert_eq!(variants("-x", None, true).len(), 5);
        // Same as pySigma's base64offset of "http" (checked with its slicing in Python).
        assert_eq!(variants("http", Some("base64offset"), false), ["aHR0c", "h0dH", "odHRw"]);
    }
}
