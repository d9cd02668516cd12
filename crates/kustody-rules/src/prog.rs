//! The optimised evaluator: an [`Expr`] compiled once into a [`Node`] tree where
//! * value sets are hash sets, `or`-chains of `contains` on one field are one Aho-Corasick
//!   automaton, and `or`-chains of `=`/`in` on one field are one hash set;
//! * regexes and globs are compiled once;
//! * the children of every `and` are ordered cheapest first (evaluation is pure, so order
//!   cannot change the answer, only how soon a false child stops the work).

use aho_corasick::AhoCorasick;
use kustody_model::Event;
use rustc_hash::FxHashSet;

use crate::cond::Op;
use crate::expr::{glob_match, path_prefix_match, Expr, Operand, Value};
use crate::extract::Val;
use crate::fields::{Arg, Field};

#[derive(Debug)]
pub enum Node {
    And(Box<[Node]>),
    Or(Box<[Node]>),
    Not(Box<Node>),
    Exists(Operand),
    Test {
        lhs: Operand,
        m: Matcher,
    },
    /// `jevt.rawtime exists` and `jevt.rawtime = N` (upstream's always-true / never-true
    /// macros, on every event): compared as numbers, without formatting the time.
    HasTime,
    TimeIs(i64),
}

#[derive(Debug)]
pub enum Matcher {
    Eq(Box<str>),
    Ne(Box<str>),
    Ord(Op, Box<str>),
    Contains(Box<str>),
    /// Any of several substrings (merged `contains`), or one case-insensitive substring.
    Substrings(AhoCorasick),
    StartsWith(Box<str>),
    EndsWith(Box<str>),
    Glob(crate::fnmatch::Pattern),
    PMatch(Box<[String]>),
    /// `in`/`intersects`: for a list value, `all` elements (in) or any (intersects).
    Set {
        set: FxHashSet<Box<str>>,
        all: bool,
    },
    /// The same for a handful of values, where comparing beats hashing.
    Few {
        items: Box<[Box<str>]>,
        all: bool,
    },
    Regex(regex::Regex),
    /// Networks for `cidr`; on a list, any element.
    Cidr(Box<[(std::net::IpAddr, u8)]>),
    /// ASCII case-insensitive equality (`iglob` without wildcards); holds the lower-case value.
    IEq(Box<str>),
    /// Prefix / suffix, optionally ASCII case-insensitive (lower-case needle).
    Prefix(Box<str>, bool),
    Suffix(Box<str>, bool),
    Num(Op, Box<[i128]>),
    Field(Op, Operand),
}

/// Why a checked expression could not be compiled (`lower` validates most of these first).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProgError {
    /// A value compared with a numeric field is not a number.
    #[error("`{value}`: {source}")]
    Number { value: String, source: std::num::ParseIntError },
    #[error(transparent)]
    Regex(#[from] regex::Error),
    /// A substring automaton could not be built.
    #[error(transparent)]
    Substrings(#[from] aho_corasick::BuildError),
    #[error("operator `{0}` is not supported")]
    UnsupportedOperator(&'static str),
}

/// Compiles a checked expression. Fails only on patterns that `lower` already validated.
pub fn compile(expr: &Expr) -> Result<Node, ProgError> {
    let node = build(expr)?;
    Ok(optimise(node))
}

fn build(expr: &Expr) -> Result<Node, ProgError> {
    Ok(match expr {
        Expr::And(items) => Node::And(items.iter().map(build).collect::<Result<_, _>>()?),
        Expr::Or(items) => Node::Or(items.iter().map(build).collect::<Result<_, _>>()?),
        Expr::Not(inner) => Node::Not(Box::new(build(inner)?)),
        Expr::Exists(op) if is_rawtime(op) => Node::HasTime,
        Expr::Exists(op) => Node::Exists(op.clone()),
        Expr::Cmp { lhs, op: Op::Eq, rhs: Value::Str(v) } if is_rawtime(lhs) && v.parse::<i64>().is_ok() => {
            Node::TimeIs(v.parse::<i64>().unwrap_or_default())
        }
        Expr::Cmp { lhs, op, rhs } => Node::Test { lhs: lhs.clone(), m: matcher(lhs, *op, rhs)? },
    })
}

fn is_rawtime(op: &Operand) -> bool {
    op.transformers.is_empty() && op.field.field == Field::JsonRawTime
}

fn matcher(lhs: &Operand, op: Op, rhs: &Value) -> Result<Matcher, ProgError> {
    let items: Vec<&str> = match rhs {
        Value::Field(f) => return Ok(Matcher::Field(op, f.clone())),
        Value::Str(s) => vec![s.as_str()],
        Value::List(l) => l.iter().map(String::as_str).collect(),
    };
    let first: Box<str> = items.first().copied().unwrap_or("").into();
    if lhs.is_numeric() {
        let nums = items
            .iter()
            .map(|s| s.parse::<i128>().map_err(|source| ProgError::Number { value: (*s).to_owned(), source }))
            .collect::<Result<Box<[_]>, _>>()?;
        return Ok(Matcher::Num(op, nums));
    }
    let set = || items.iter().map(|s| Box::<str>::from(*s)).collect::<FxHashSet<_>>();
    Ok(match op {
        Op::Cidr => Matcher::Cidr(items.iter().filter_map(|s| crate::expr::parse_cidr(s)).collect()),
        Op::In => set_matcher(set(), true),
        Op::Intersects => set_matcher(set(), false),
        Op::Eq => Matcher::Eq(first),
        Op::Ne => Matcher::Ne(first),
        Op::Lt | Op::Le | Op::Gt | Op::Ge => Matcher::Ord(op, first),
        Op::Contains => Matcher::Contains(first),
        Op::IContains => {
            Matcher::Substrings(AhoCorasick::builder().ascii_case_insensitive(true).build([first.as_ref()])?)
        }
        Op::StartsWith => Matcher::StartsWith(first),
        Op::EndsWith => Matcher::EndsWith(first),
        Op::Glob | Op::IGlob => glob_matcher(&first, op == Op::IGlob)?,
        Op::PMatch => Matcher::PMatch(items.iter().map(|s| (*s).to_owned()).collect()),
        Op::Regex => Matcher::Regex(regex::Regex::new(&format!("^(?:{first})$"))?),
        Op::BContains | Op::BStartsWith => return Err(ProgError::UnsupportedOperator(op.name())),
    })
}

/// Globs of the shapes Sigma produces — `lit`, `lit*`, `*lit`, `*lit*` — as direct string
/// tests (ASCII case folding for `iglob`, like fnmatch's FNM_CASEFOLD); anything else as fnmatch.
fn glob_matcher(p: &str, ci: bool) -> Result<Matcher, ProgError> {
    let inner = p.strip_prefix('*').unwrap_or(p);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if inner.is_empty() || inner.contains(['*', '?', '[', '\\']) {
        return Ok(Matcher::Glob(crate::fnmatch::Pattern::new(p, ci)));
    }
    let (lead, trail) = (p.starts_with('*'), p.len() > 1 && p.ends_with('*'));
    let lit: Box<str> = if ci { inner.to_ascii_lowercase().into() } else { inner.into() };
    Ok(match (lead, trail) {
        (false, false) if ci => Matcher::IEq(lit),
        (false, false) => Matcher::Eq(lit),
        (true, true) if ci => {
            Matcher::Substrings(AhoCorasick::builder().ascii_case_insensitive(true).build([lit.as_ref()])?)
        }
        (true, true) => Matcher::Contains(lit),
        (false, true) => Matcher::Prefix(lit, ci),
        (true, false) => Matcher::Suffix(lit, ci),
    })
}

/// Up to this many values, a linear scan is faster than hashing the probe.
const FEW: usize = 4;

fn set_matcher(set: FxHashSet<Box<str>>, all: bool) -> Matcher {
    if set.len() <= FEW {
        let mut items: Vec<Box<str>> = set.into_iter().collect();
        items.sort();
        Matcher::Few { items: items.into_boxed_slice(), all }
    } else {
        Matcher::Set { set, all }
    }
}

/// Flattens, merges `or`-chains on one field, and orders `and` children by cost.
fn optimise(node: Node) -> Node {
    match node {
        Node::And(items) => {
            let mut flat = Vec::new();
            for it in items.into_vec().into_iter().map(optimise) {
                match it {
                    Node::And(inner) => flat.extend(inner.into_vec()),
                    other => flat.push(other),
                }
            }
            flat.sort_by_key(cost);
            single_or(flat, Node::And)
        }
        Node::Or(items) => {
            let mut flat = Vec::new();
            for it in items.into_vec().into_iter().map(optimise) {
                match it {
                    Node::Or(inner) => flat.extend(inner.into_vec()),
                    other => flat.push(other),
                }
            }
            let mut merged = merge_or(flat);
            merged.sort_by_key(cost);
            single_or(merged, Node::Or)
        }
        Node::Not(inner) => Node::Not(Box::new(optimise(*inner))),
        other => other,
    }
}

fn single_or(mut items: Vec<Node>, wrap: fn(Box<[Node]>) -> Node) -> Node {
    if items.len() == 1 {
        if let Some(n) = items.pop() {
            return n;
        }
    }
    wrap(items.into_boxed_slice())
}

/// Merges `f contains a or f contains b` into one automaton, and `f = a or f in (b, c)` into
/// one set, for scalar (non-list, non-numeric) operands.
fn merge_or(items: Vec<Node>) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    let mut contains: Vec<(Operand, Vec<String>)> = Vec::new();
    let mut sets: Vec<(Operand, FxHashSet<Box<str>>)> = Vec::new();
    for it in items {
        match it {
            Node::Test { lhs, m: Matcher::Contains(s) } if !lhs.is_list() && !lhs.is_numeric() => {
                match contains.iter_mut().find(|(l, _)| *l == lhs) {
                    Some((_, v)) => v.push(s.into()),
                    None => contains.push((lhs, vec![s.into()])),
                }
            }
            Node::Test { lhs, m: Matcher::Eq(s) } if !lhs.is_list() && !lhs.is_numeric() => {
                add_set(&mut sets, lhs, [s])
            }
            Node::Test { lhs, m: Matcher::Set { set, .. } } if !lhs.is_list() && !lhs.is_numeric() => {
                add_set(&mut sets, lhs, set)
            }
            Node::Test { lhs, m: Matcher::Few { items, .. } } if !lhs.is_list() && !lhs.is_numeric() => {
                add_set(&mut sets, lhs, items.into_vec())
            }
            other => out.push(other),
        }
    }
    for (lhs, pats) in contains {
        if pats.len() == 1 {
            if let Some(p) = pats.into_iter().next() {
                out.push(Node::Test { lhs, m: Matcher::Contains(p.into()) });
            }
            continue;
        }
        match AhoCorasick::new(&pats) {
            Ok(ac) => out.push(Node::Test { lhs, m: Matcher::Substrings(ac) }),
            Err(_) => {
                out.extend(pats.into_iter().map(|p| Node::Test { lhs: lhs.clone(), m: Matcher::Contains(p.into()) }))
            }
        }
    }
    for (lhs, set) in sets {
        out.push(Node::Test { lhs, m: set_matcher(set, true) });
    }
    out
}

fn add_set(sets: &mut Vec<(Operand, FxHashSet<Box<str>>)>, lhs: Operand, vals: impl IntoIterator<Item = Box<str>>) {
    match sets.iter_mut().find(|(l, _)| *l == lhs) {
        Some((_, s)) => s.extend(vals),
        None => sets.push((lhs, vals.into_iter().collect())),
    }
}

/// Rough cost of evaluating a node on an event: typed top-level fields are nearly free,
/// request/response bodies cost a parse the first time, the whole event costs a full DOM.
fn cost(n: &Node) -> u32 {
    match n {
        Node::And(items) | Node::Or(items) => items.iter().map(cost).sum(),
        Node::Not(inner) => cost(inner),
        Node::HasTime | Node::TimeIs(_) => 1,
        Node::Exists(op) => field_cost(op),
        Node::Test { lhs, m } => {
            field_cost(lhs)
                + match m {
                    Matcher::Regex(_) | Matcher::Glob(..) | Matcher::PMatch(_) => 4,
                    Matcher::Field(_, r) => field_cost(r),
                    _ => 0,
                }
        }
    }
}

fn field_cost(op: &Operand) -> u32 {
    use Field::*;
    let base = match op.field.field {
        AuditId | Stage | UserName | UserGroups | ImpUserName | Verb | Uri | TargetName | TargetNamespace
        | TargetResource | TargetSubresource | ResponseCode | ResponseReason | UserAgent | SourceIps
        | ReqConfigmapName | JsonRawTime => 1,
        AuthDecision
        | AuthReason
        | AuthOpenshiftDecision
        | AuthOpenshiftUsername
        | ValidationsAdmissionPolicyFailure
        | SecurityPodViolations
        | ClusterName => 2,
        UriParam | UriParams => 3,
        JsonValue => match &op.field.arg {
            Arg::Pointer(p) if p.first().is_some_and(|s| matches!(s.as_str(), "requestObject" | "responseObject")) => {
                20
            }
            Arg::Pointer(p) if p.len() <= 2 => 1,
            _ => 50,
        },
        JsonObj => 60,
        _ => 20,
    };
    base + op.transformers.len() as u32
}

/// Evaluates a compiled node.
pub fn eval(n: &Node, ev: &Event<'_>) -> bool {
    match n {
        Node::And(items) => items.iter().all(|i| eval(i, ev)),
        Node::Or(items) => items.iter().any(|i| eval(i, ev)),
        Node::Not(inner) => !eval(inner, ev),
        Node::HasTime => ev.time_ns().is_some(),
        Node::TimeIs(n) => ev.time_ns() == Some(*n),
        Node::Exists(op) => op.eval(ev).is_some(),
        Node::Test { lhs, m } => match lhs.eval(ev) {
            None => false,
            Some(v) => test(&v, m, ev),
        },
    }
}

fn test(v: &Val<'_>, m: &Matcher, ev: &Event<'_>) -> bool {
    let s: &str = match v {
        Val::List(items) => {
            return match m {
                Matcher::Set { set, all: true } => items.iter().all(|i| set.contains(i.as_ref())),
                Matcher::Set { set, all: false } => items.iter().any(|i| set.contains(i.as_ref())),
                Matcher::Cidr(nets) => items.iter().any(|i| nets.iter().any(|n| crate::expr::in_network(i, *n))),
                Matcher::Few { items: few, all: true } => items.iter().all(|i| few.iter().any(|f| **f == **i)),
                Matcher::Few { items: few, all: false } => items.iter().any(|i| few.iter().any(|f| **f == **i)),
                Matcher::Field(op, r) => match r.eval(ev) {
                    Some(Val::List(rs)) => match op {
                        Op::In => items.iter().all(|i| rs.contains(i)),
                        Op::Intersects => items.iter().any(|i| rs.contains(i)),
                        _ => false,
                    },
                    _ => false,
                },
                _ => false,
            }
        }
        Val::One(s) => s,
    };
    match m {
        Matcher::Eq(r) => s == r.as_ref(),
        Matcher::Ne(r) => s != r.as_ref(),
        Matcher::Ord(op, r) => ord(s, *op, r),
        Matcher::Contains(r) => s.contains(r.as_ref()),
        Matcher::Substrings(ac) => ac.is_match(s),
        Matcher::StartsWith(r) => s.starts_with(r.as_ref()),
        Matcher::EndsWith(r) => s.ends_with(r.as_ref()),
        Matcher::Glob(p) => p.matches(s),
        Matcher::PMatch(paths) => paths.iter().any(|p| path_prefix_match(p, s)),
        Matcher::Set { set, .. } => set.contains(s),
        Matcher::Few { items, .. } => items.iter().any(|f| &**f == s),
        Matcher::Regex(re) => re.is_match(s),
        Matcher::Cidr(nets) => nets.iter().any(|n| crate::expr::in_network(s, *n)),
        Matcher::IEq(r) => s.eq_ignore_ascii_case(r),
        Matcher::Prefix(r, ci) => {
            s.get(..r.len()).is_some_and(|h| if *ci { h.eq_ignore_ascii_case(r) } else { h == r.as_ref() })
        }
        Matcher::Suffix(r, ci) => {
            s.len() >= r.len()
                && s.get(s.len() - r.len()..)
                    .is_some_and(|t| if *ci { t.eq_ignore_ascii_case(r) } else { t == r.as_ref() })
        }
        Matcher::Num(op, nums) => {
            let Ok(l) = s.parse::<i128>() else {
                return false;
            };
            match op {
                Op::In | Op::Intersects => nums.contains(&l),
                _ => nums.first().is_some_and(|r| num_cmp(l, *op, *r)),
            }
        }
        Matcher::Field(op, r) => {
            let Some(Val::One(rv)) = r.eval(ev) else {
                return false;
            };
            if r.is_numeric() {
                return match (s.parse::<i128>(), rv.parse::<i128>()) {
                    (Ok(l), Ok(rn)) => num_cmp(l, *op, rn),
                    _ => false,
                };
            }
            match op {
                Op::Eq | Op::In | Op::Intersects => s == rv,
                Op::Ne => s != rv,
                Op::Lt | Op::Le | Op::Gt | Op::Ge => ord(s, *op, &rv),
                Op::Contains => s.contains(rv.as_ref()),
                Op::IContains => s.to_ascii_lowercase().contains(&rv.to_ascii_lowercase()),
                Op::StartsWith => s.starts_with(rv.as_ref()),
                Op::EndsWith => s.ends_with(rv.as_ref()),
                Op::Glob => glob_match(&rv, s, false),
                Op::IGlob => glob_match(&rv, s, true),
                Op::PMatch | Op::Regex | Op::BContains | Op::BStartsWith | Op::Cidr => false,
            }
        }
    }
}

fn ord(s: &str, op: Op, r: &str) -> bool {
    match op {
        Op::Lt => s < r,
        Op::Le => s <= r,
        Op::Gt => s > r,
        Op::Ge => s >= r,
        _ => false,
    }
}

fn num_cmp(l: i128, op: Op, r: i128) -> bool {
    match op {
        Op::Eq | Op::In | Op::Intersects => l == r,
        Op::Ne => l != r,
        Op::Lt => l < r,
        Op::Le => l <= r,
        Op::Gt => l > r,
        Op::Ge => l >= r,
        _ => false,
    }
}
