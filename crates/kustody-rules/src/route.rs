//! Conditions over records that are not audit events: a finding or an incident, as a set of
//! named fields (`finding.rule`, `incident.severity`, …). Used by notification routes and
//! playbook matches, written in the rule files' condition syntax ([`crate::cond`]).
//!
//! Fields are declared up front, so a typo is an error when the configuration loads, not a
//! route that silently never matches. Macros and lists of rule files do not apply here: a bare
//! word inside `( … )` is a value.

use std::collections::BTreeMap;

use crate::cond::{self, Ast, FieldExpr, Op, Rhs, Transformer};
use crate::expr::{glob_match, in_network, parse_cidr, path_prefix_match};

/// A field's value in a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    List(Vec<String>),
    Num(i64),
}

/// A record: field name → value (absent fields do not exist).
pub type Record = BTreeMap<&'static str, Value>;

/// A compiled condition over records.
#[derive(Debug, Clone)]
pub struct Filter {
    ast: Ast,
    regexes: BTreeMap<String, regex::Regex>,
    source: String,
}

impl Filter {
    /// Parses `src` and checks every field against `fields`.
    pub fn compile(src: &str, fields: &[&str]) -> Result<Filter, String> {
        let ast = cond::parse(src).map_err(|e| format!("at offset {}: {}", e.offset, e.message))?;
        let mut regexes = BTreeMap::new();
        check(&ast, fields, &mut regexes)?;
        Ok(Filter { ast, regexes, source: src.to_owned() })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, r: &Record) -> bool {
        eval(&self.ast, r, &self.regexes)
    }
}

fn check_field(f: &FieldExpr, fields: &[&str]) -> Result<(), String> {
    if f.arg.is_some() {
        return Err(format!("`{}[{}]`: fields of findings take no argument", f.name, f.arg.as_deref().unwrap_or("")));
    }
    if f.transformers.iter().any(|t| matches!(t, Transformer::B64 | Transformer::Basename | Transformer::Num)) {
        return Err(format!("`{}`: only tolower, toupper and len apply to finding fields", f.name));
    }
    if fields.contains(&f.name.as_str()) {
        Ok(())
    } else {
        Err(format!("unknown field `{}` (known: {})", f.name, fields.join(", ")))
    }
}

fn check(ast: &Ast, fields: &[&str], regexes: &mut BTreeMap<String, regex::Regex>) -> Result<(), String> {
    match ast {
        Ast::And(v) | Ast::Or(v) => v.iter().try_for_each(|a| check(a, fields, regexes)),
        Ast::Not(a) => check(a, fields, regexes),
        Ast::Macro { name, .. } => Err(format!("`{name}`: macros are not available here; write the comparison")),
        Ast::Exists { lhs } => check_field(lhs, fields),
        Ast::Cmp { lhs, op, rhs, .. } => {
            check_field(lhs, fields)?;
            match rhs {
                Rhs::Field(f) => check_field(f, fields)?,
                Rhs::Value(v) if *op == Op::Regex => {
                    let re = regex::Regex::new(v).map_err(|e| format!("bad regex `{v}`: {e}"))?;
                    regexes.insert(v.clone(), re);
                }
                Rhs::List(items) if *op == Op::Cidr => {
                    for i in items {
                        parse_cidr(&i.value).ok_or_else(|| format!("`{}` is not a network (a.b.c.d/n)", i.value))?;
                    }
                }
                _ => {}
            }
            Ok(())
        }
    }
}

fn transform(v: Value, ts: &[Transformer]) -> Value {
    ts.iter().rev().fold(v, |v, t| match (t, v) {
        (Transformer::ToLower, Value::Str(s)) => Value::Str(s.to_lowercase()),
        (Transformer::ToUpper, Value::Str(s)) => Value::Str(s.to_uppercase()),
        (Transformer::ToLower, Value::List(l)) => Value::List(l.into_iter().map(|s| s.to_lowercase()).collect()),
        (Transformer::ToUpper, Value::List(l)) => Value::List(l.into_iter().map(|s| s.to_uppercase()).collect()),
        (Transformer::Len, Value::Str(s)) => Value::Num(s.chars().count() as i64),
        (Transformer::Len, Value::List(l)) => Value::Num(l.len() as i64),
        (_, v) => v,
    })
}

fn get(f: &FieldExpr, r: &Record) -> Option<Value> {
    r.get(f.name.as_str()).cloned().map(|v| transform(v, &f.transformers))
}

fn eval(ast: &Ast, r: &Record, re: &BTreeMap<String, regex::Regex>) -> bool {
    match ast {
        Ast::And(v) => v.iter().all(|a| eval(a, r, re)),
        Ast::Or(v) => v.iter().any(|a| eval(a, r, re)),
        Ast::Not(a) => !eval(a, r, re),
        Ast::Macro { .. } => false,
        Ast::Exists { lhs } => get(lhs, r).is_some(),
        Ast::Cmp { lhs, op, rhs, .. } => {
            let Some(left) = get(lhs, r) else { return false };
            let right: Vec<String> = match rhs {
                Rhs::Value(v) => vec![v.clone()],
                Rhs::List(items) => items.iter().map(|i| i.value.clone()).collect(),
                Rhs::Field(f) => match get(f, r) {
                    Some(Value::Str(s)) => vec![s],
                    Some(Value::List(l)) => l,
                    Some(Value::Num(n)) => vec![n.to_string()],
                    None => return false,
                },
            };
            compare(&left, *op, &right, re)
        }
    }
}

fn compare(left: &Value, op: Op, right: &[String], re: &BTreeMap<String, regex::Regex>) -> bool {
    let one = right.first().map(String::as_str).unwrap_or("");
    match left {
        Value::List(items) => match op {
            Op::In => !items.is_empty() && items.iter().all(|i| right.contains(i)),
            Op::Intersects => items.iter().any(|i| right.contains(i)),
            Op::Ne => !items.iter().any(|i| i == one),
            // Any element satisfies the scalar comparison (Falco's list-field semantics).
            _ => items.iter().any(|i| compare(&Value::Str(i.clone()), op, right, re)),
        },
        Value::Num(n) => {
            let Ok(want) = one.trim().parse::<i64>() else { return false };
            match op {
                Op::Eq => *n == want,
                Op::Ne => *n != want,
                Op::Lt => *n < want,
                Op::Le => *n <= want,
                Op::Gt => *n > want,
                Op::Ge => *n >= want,
                Op::In | Op::Intersects => right.iter().any(|v| v.trim().parse::<i64>().ok() == Some(*n)),
                _ => false,
            }
        }
        Value::Str(s) => match op {
            Op::Eq => s == one,
            Op::Ne => s != one,
            Op::Lt | Op::Le | Op::Gt | Op::Ge => match (s.trim().parse::<i64>(), one.trim().parse::<i64>()) {
                (Ok(a), Ok(b)) => match op {
                    Op::Lt => a < b,
                    Op::Le => a <= b,
                    Op::Gt => a > b,
                    _ => a >= b,
                },
                _ => false,
            },
            Op::Contains | Op::BContains => s.contains(one),
            Op::IContains => s.to_lowercase().contains(&one.to_lowercase()),
            Op::StartsWith | Op::BStartsWith => s.starts_with(one),
            Op::EndsWith => s.ends_with(one),
            Op::Glob => glob_match(one, s, false),
            Op::IGlob => glob_match(one, s, true),
            Op::PMatch => right.iter().any(|p| path_prefix_match(p, s)),
            Op::In | Op::Intersects => right.iter().any(|v| v == s),
            Op::Regex => re.get(one).is_some_and(|r| r.is_match(s)),
            Op::Cidr => right.iter().filter_map(|n| parse_cidr(n)).any(|n| in_network(s, n)),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FIELDS: &[&str] =
        &["finding.rule", "finding.namespace", "finding.tags", "finding.source_ip", "incident.steps"];

    fn rec() -> Record {
        let mut r = Record::new();
        r.insert("finding.rule", Value::Str("Terminal Shell in Container".into()));
        r.insert("finding.namespace", Value::Str("payments".into()));
        r.insert("finding.tags", Value::List(vec!["k8s".into(), "T1609".into()]));
        r.insert("finding.source_ip", Value::Str("10.244.3.9".into()));
        r.insert("incident.steps", Value::Num(4));
        r
    }

    fn m(src: &str) -> bool {
        Filter::compile(src, FIELDS).unwrap().matches(&rec())
    }

    #[test]
    fn conditions_over_finding_fields() {
        assert!(m("finding.namespace in (prod, payments)"));
        assert!(!m("finding.namespace in (prod)"));
        assert!(m("finding.rule icontains shell and not finding.namespace = kube-system"));
        assert!(m("finding.tags intersects (T1609, T1610)"));
        assert!(m("finding.tags = T1609"));
        assert!(!m("finding.tags in (T1609)"));
        assert!(m("finding.source_ip cidr (10.244.0.0/16)"));
        assert!(m("incident.steps >= 3 and incident.steps < 5"));
        assert!(m("finding.rule regex '^Terminal'"));
        assert!(m("finding.rule glob 'Terminal*'"));
        assert!(m("tolower(finding.rule) startswith terminal"));
        assert!(m("len(finding.tags) = 2"));
        assert!(m("finding.namespace exists"));
        assert!(!m("finding.namespace != payments"));
    }

    #[test]
    fn mistakes_are_errors_when_loading() {
        let e = Filter::compile("finding.nmespace = x", FIELDS).unwrap_err();
        assert!(e.contains("unknown field `finding.nmespace`") && e.contains("finding.namespace"), "{e}");
        assert!(Filter::compile("some_macro", FIELDS).unwrap_err().contains("macros"));
        assert!(Filter::compile("finding.rule regex '('", FIELDS).unwrap_err().contains("bad regex"));
        assert!(Filter::compile("finding.source_ip cidr (nope)", FIELDS).unwrap_err().contains("network"));
        assert!(Filter::compile("finding.rule = ", FIELDS).is_err());
    }
}
