//! Resolved conditions ([`Expr`]) and the plain reference evaluator.
//!
//! Lowering turns a parsed [`Ast`] into an [`Expr`]: macros are inlined, list names expanded,
//! field names resolved and operator/field types checked. The reference evaluator walks that tree
//! with no indexing, no hash sets and no automata; the optimised [`crate::prog`] evaluator is
//! tested against it.

use std::borrow::Cow;

use base64::Engine as _;
use kustody_model::Event;
use rustc_hash::FxHashMap;

use crate::cond::{Ast, FieldExpr, Op, Rhs, Span, Transformer};
use crate::extract::{extract, Val};
use crate::fields::{resolve, FieldRef};

/// A field with the transformers applied to it (innermost first).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operand {
    pub field: FieldRef,
    /// Applied in order: `tolower(b64(x))` is `[B64, ToLower]`.
    pub transformers: Vec<Transformer>,
}

impl Operand {
    /// True when the value is a list (a list field, unless `len()` turned it into a number).
    pub fn is_list(&self) -> bool {
        self.field.is_list && !self.is_numeric()
    }
    pub fn is_numeric(&self) -> bool {
        self.transformers.iter().any(|t| matches!(t, Transformer::Len | Transformer::Num))
    }

    /// Extracts and transforms. `None` when the field cannot be extracted.
    pub fn eval<'e>(&self, ev: &'e Event<'_>) -> Option<Val<'e>> {
        let mut v = extract(ev, &self.field)?;
        for t in &self.transformers {
            v = transform(*t, v)?;
        }
        Some(v)
    }

    pub fn display(&self) -> String {
        let mut s = self.field.display.clone();
        for t in &self.transformers {
            s = format!("{}({s})", t.name());
        }
        s
    }
}

fn transform(t: Transformer, v: Val<'_>) -> Option<Val<'_>> {
    let one = |s: Cow<'_, str>| -> Option<String> {
        Some(match t {
            Transformer::ToLower => s.to_ascii_lowercase(),
            Transformer::ToUpper => s.to_ascii_uppercase(),
            Transformer::Basename => s.rsplit('/').next().unwrap_or("").to_owned(),
            Transformer::B64 => {
                let trimmed = s.trim_end_matches('=');
                let bytes = base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed).ok()?;
                String::from_utf8(bytes).ok()?
            }
            Transformer::Len => s.len().to_string(),
            Transformer::Num => s.trim().parse::<i128>().ok()?.to_string(),
        })
    };
    match (t, v) {
        (Transformer::Len, Val::List(items)) => Some(Val::One(Cow::Owned(items.len().to_string()))),
        (_, Val::One(s)) => one(s).map(|s| Val::One(Cow::Owned(s))),
        (_, Val::List(items)) => {
            let out: Option<Vec<_>> = items.into_iter().map(|s| one(s).map(Cow::Owned)).collect();
            Some(Val::List(out?))
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    List(Vec<String>),
    Field(Operand),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Exists(Operand),
    Cmp { lhs: Operand, op: Op, rhs: Value },
}

/// A lowering error: where (byte span in the condition being lowered, or inside a macro) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerError {
    pub span: Span,
    /// When the error is inside a macro body, that macro's name (the span is then in its text).
    pub in_macro: Option<String>,
    pub message: String,
}

/// Why a macro named in a condition cannot be used (from [`Scope::macro_ast`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacroError {
    #[error("undefined macro `{0}`")]
    Undefined(String),
    /// Falco's load order: a macro sees only macros defined before it.
    #[error(
        "undefined macro `{name}` (it is defined after macro `{from}`, which can only use macros defined before it)"
    )]
    DefinedLater { name: String, from: String },
    #[error("macro `{0}` has a syntax error")]
    SyntaxError(String),
}

/// A comparison that Falco's (libsinsp's) operator and type rules refuse, found at load time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TypeError {
    #[error("`{0}` is not a network (use 10.0.0.0/8 or fd00::/8)")]
    NotANetwork(String),
    #[error("`cidr` does not apply to the number `{0}`")]
    CidrOnNumber(String),
    #[error("`{field}` is a list field: only `exists`, `in` and `intersects` apply to it, not `{op}`")]
    ListField { field: String, op: &'static str },
    #[error("operator `{op}` applies to byte-buffer fields; `{field}` is a string field")]
    ByteOperator { op: &'static str, field: String },
    #[error("operator `{op}` needs a numeric value, not `{value}`")]
    NotNumeric { op: &'static str, value: String },
    #[error("invalid regex `{pattern}`: {source}")]
    Regex { pattern: String, source: regex::Error },
    #[error("operator `{op}` does not apply to the number `{field}`")]
    StringOperatorOnNumber { op: &'static str, field: String },
    #[error("`val()` cannot be used with `{0}`")]
    FieldValueWith(&'static str),
    #[error("`{lhs}` and `{rhs}` have different types")]
    DifferentTypes { lhs: String, rhs: String },
    #[error("`{field}` is a number; `{value}` is not")]
    NumberField { field: String, value: String },
}

/// What lowering needs from the loaded rule set.
pub trait Scope {
    /// The parsed condition of macro `name`, if it is visible from the current context.
    fn macro_ast(&self, name: &str, from_macro: Option<&str>) -> Result<&Ast, MacroError>;
    /// The final items of list `name`.
    fn list_items(&self, name: &str) -> Option<&[String]>;
}

/// Lowers `ast` (the text of a rule or macro) into an [`Expr`]. Reports every independent
/// problem (each operand of an `and`/`or` is checked even after one failed), not just the first.
pub fn lower(ast: &Ast, scope: &dyn Scope) -> Result<Expr, Vec<LowerError>> {
    let mut l = Lowerer { scope, stack: Vec::new(), nodes: 0, depth: 0, errors: Vec::new(), fatal: false };
    let result = l.lower(ast);
    let mut errors = l.errors;
    match result {
        Ok(e) if errors.is_empty() => Ok(e),
        Ok(_) => Err(errors),
        Err(e) => {
            if !e.message.is_empty() {
                errors.push(e);
            }
            Err(errors)
        }
    }
}

struct Lowerer<'s> {
    scope: &'s dyn Scope,
    /// Macros being expanded, innermost last, for loop detection and error attribution.
    stack: Vec<String>,
    /// Nodes produced so far and the current depth: macros that use each other twice per level
    /// grow exponentially, and deep trees overflow evaluation stacks.
    nodes: usize,
    depth: usize,
    /// Errors found in operands whose siblings were still checked.
    errors: Vec<LowerError>,
    /// A size limit was hit: stop at once.
    fatal: bool,
}

/// A rule's condition, all macros inlined, may have at most this many nodes…
pub const MAX_NODES: usize = 100_000;
/// …and be nested at most this deep.
pub const MAX_DEPTH: usize = 128;

impl Lowerer<'_> {
    fn err(&self, span: Span, message: impl Into<String>) -> LowerError {
        LowerError { span, in_macro: self.stack.last().cloned(), message: message.into() }
    }

    fn lower(&mut self, ast: &Ast) -> Result<Expr, LowerError> {
        self.nodes += 1;
        self.depth += 1;
        let span = match ast {
            Ast::Macro { span, .. } | Ast::Cmp { span, .. } => *span,
            Ast::Exists { lhs } => lhs.span,
            _ => (0, 0),
        };
        if self.nodes > MAX_NODES {
            self.fatal = true;
            return Err(self.err(span, format!("condition has more than {MAX_NODES} nodes once macros are expanded")));
        }
        if self.depth > MAX_DEPTH {
            self.fatal = true;
            return Err(self
                .err(span, format!("condition is nested more than {MAX_DEPTH} levels deep once macros are expanded")));
        }
        let r = self.lower_node(ast);
        self.depth -= 1;
        r
    }

    /// Lowers every operand, recording the errors of the ones that fail, so that one bad
    /// comparison does not hide the next.
    fn lower_all(&mut self, items: &[Ast]) -> Result<Vec<Expr>, LowerError> {
        let mut out = Vec::with_capacity(items.len());
        let mut failed = false;
        for a in items {
            match self.lower(a) {
                Ok(e) => out.push(e),
                Err(e) if self.fatal => return Err(e),
                Err(e) => {
                    if !e.message.is_empty() {
                        self.errors.push(e);
                    }
                    failed = true;
                }
            }
        }
        if failed {
            // Already recorded: an empty message marks "see the errors above".
            return Err(LowerError { span: (0, 0), in_macro: None, message: String::new() });
        }
        Ok(out)
    }

    fn lower_node(&mut self, ast: &Ast) -> Result<Expr, LowerError> {
        Ok(match ast {
            Ast::And(items) => Expr::And(self.lower_all(items)?),
            Ast::Or(items) => Expr::Or(self.lower_all(items)?),
            Ast::Not(inner) => Expr::Not(Box::new(self.lower(inner)?)),
            Ast::Macro { name, span } => {
                if self.stack.iter().any(|m| m == name) {
                    return Err(self.err(
                        *span,
                        format!("macro `{name}` refers to itself (loop: {} -> {name})", self.stack.join(" -> ")),
                    ));
                }
                let from = self.stack.last().map(String::as_str);
                let body = self.scope.macro_ast(name, from).map_err(|m| self.err(*span, m.to_string()))?;
                self.stack.push(name.clone());
                let r = self.lower(body);
                self.stack.pop();
                r?
            }
            Ast::Exists { lhs } => Expr::Exists(self.operand(lhs)?),
            Ast::Cmp { lhs, op, rhs, span } => {
                let lhs = self.operand(lhs)?;
                let rhs = match rhs {
                    Rhs::Value(v) => Value::Str(v.clone()),
                    Rhs::List(items) => {
                        let mut out = Vec::new();
                        for it in items {
                            match self.scope.list_items(&it.value).filter(|_| it.bare) {
                                Some(expanded) => {
                                    self.nodes += expanded.len() / 8;
                                    if self.nodes > MAX_NODES {
                                        return Err(self.err(
                                            *span,
                                            format!(
                                                "condition has more than {MAX_NODES} nodes once lists are expanded"
                                            ),
                                        ));
                                    }
                                    out.extend(expanded.iter().cloned())
                                }
                                None => out.push(it.value.clone()),
                            }
                        }
                        Value::List(out)
                    }
                    Rhs::Field(f) => Value::Field(self.operand(f)?),
                };
                check_types(&lhs, *op, &rhs).map_err(|m| self.err(*span, m.to_string()))?;
                Expr::Cmp { lhs, op: *op, rhs }
            }
        })
    }

    fn operand(&self, f: &FieldExpr) -> Result<Operand, LowerError> {
        let field = resolve(&f.name, f.arg.as_deref()).map_err(|m| self.err(f.span, m.to_string()))?;
        let mut transformers = f.transformers.clone();
        transformers.reverse();
        if let Some(pos) = transformers.iter().position(|t| matches!(t, Transformer::Len | Transformer::Num)) {
            if pos + 1 != transformers.len() {
                return Err(
                    self.err(f.span, "`len()` and `num()` give a number: no string transformer can be applied to it")
                );
            }
        }
        if transformers.last() == Some(&Transformer::Num) && field.is_list {
            return Err(self.err(f.span, "`num()` applies to single values, not to the list field"));
        }
        Ok(Operand { field, transformers })
    }
}

fn is_numeric_text(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Falco's (libsinsp's) operator/type rules, checked at load time.
fn check_types(lhs: &Operand, op: Op, rhs: &Value) -> Result<(), TypeError> {
    let name = lhs.display();
    if op == Op::Cidr {
        if let Value::List(items) = rhs {
            if let Some(bad) = items.iter().find(|i| parse_cidr(i).is_none()) {
                return Err(TypeError::NotANetwork(bad.clone()));
            }
        }
        if lhs.is_numeric() {
            return Err(TypeError::CidrOnNumber(name));
        }
        return Ok(());
    }
    if lhs.is_list() && !matches!(op, Op::In | Op::Intersects) {
        return Err(TypeError::ListField { field: name, op: op.name() });
    }
    match op {
        Op::BContains | Op::BStartsWith => return Err(TypeError::ByteOperator { op: op.name(), field: name }),
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            if let Value::Str(v) = rhs {
                if !is_numeric_text(v) {
                    return Err(TypeError::NotNumeric { op: op.name(), value: v.clone() });
                }
            }
        }
        Op::Regex => {
            if let Value::Str(v) = rhs {
                regex::Regex::new(&format!("^(?:{v})$"))
                    .map_err(|source| TypeError::Regex { pattern: v.clone(), source })?;
            }
        }
        Op::Contains | Op::IContains | Op::StartsWith | Op::EndsWith | Op::Glob | Op::IGlob | Op::PMatch
            if lhs.is_numeric() =>
        {
            return Err(TypeError::StringOperatorOnNumber { op: op.name(), field: name })
        }
        _ => {}
    }
    if let Value::Field(r) = rhs {
        if matches!(op, Op::PMatch | Op::Regex) {
            return Err(TypeError::FieldValueWith(op.name()));
        }
        if r.is_list() != lhs.is_list() || r.is_numeric() != lhs.is_numeric() {
            return Err(TypeError::DifferentTypes { lhs: name, rhs: r.display() });
        }
    }
    if lhs.is_numeric() {
        let bad = match rhs {
            Value::Str(v) => (!is_numeric_text(v)).then(|| v.clone()),
            Value::List(items) => items.iter().find(|v| !is_numeric_text(v)).cloned(),
            Value::Field(_) => None,
        };
        if let Some(v) = bad {
            return Err(TypeError::NumberField { field: name, value: v });
        }
    }
    Ok(())
}

// ----- reference evaluation -------------------------------------------------------------

/// Regexes compiled by the reference evaluator, by pattern.
pub type RegexCache = FxHashMap<String, Option<regex::Regex>>;

/// Evaluates `expr` the plain way. Regexes are compiled on use and cached in `cache`.
pub fn eval_reference(expr: &Expr, ev: &Event<'_>, cache: &mut RegexCache) -> bool {
    match expr {
        Expr::And(items) => items.iter().all(|e| eval_reference(e, ev, cache)),
        Expr::Or(items) => items.iter().any(|e| eval_reference(e, ev, cache)),
        Expr::Not(inner) => !eval_reference(inner, ev, cache),
        Expr::Exists(op) => op.eval(ev).is_some(),
        Expr::Cmp { lhs, op, rhs } => {
            let Some(l) = lhs.eval(ev) else { return false };
            let rhs_val;
            let rhs_values: Vec<&str> = match rhs {
                Value::Str(s) => vec![s.as_str()],
                Value::List(items) => items.iter().map(String::as_str).collect(),
                Value::Field(f) => {
                    let Some(v) = f.eval(ev) else { return false };
                    rhs_val = v;
                    match &rhs_val {
                        Val::One(s) => vec![s.as_ref()],
                        Val::List(items) => items.iter().map(AsRef::as_ref).collect(),
                    }
                }
            };
            if *op == Op::Cidr {
                let nets: Vec<(std::net::IpAddr, u8)> = rhs_values.iter().filter_map(|r| parse_cidr(r)).collect();
                let hit = |s: &str| nets.iter().any(|n| in_network(s, *n));
                return match &l {
                    Val::List(items) => items.iter().any(|i| hit(i)),
                    Val::One(s) => hit(s),
                };
            }
            match l {
                Val::List(items) => match op {
                    Op::In => items.iter().all(|i| rhs_values.contains(&i.as_ref())),
                    Op::Intersects => items.iter().any(|i| rhs_values.contains(&i.as_ref())),
                    _ => false,
                },
                Val::One(s) => {
                    if lhs.is_numeric() {
                        return reference_numeric(&s, *op, &rhs_values);
                    }
                    reference_string(&s, *op, &rhs_values, cache)
                }
            }
        }
    }
}

fn reference_numeric(s: &str, op: Op, rhs: &[&str]) -> bool {
    let Ok(l) = s.parse::<i128>() else {
        return false;
    };
    let nums: Vec<i128> = rhs.iter().filter_map(|r| r.parse().ok()).collect();
    let Some(&r) = nums.first() else { return false };
    match op {
        Op::Eq => l == r,
        Op::Ne => l != r,
        Op::Lt => l < r,
        Op::Le => l <= r,
        Op::Gt => l > r,
        Op::Ge => l >= r,
        Op::In | Op::Intersects => nums.contains(&l),
        _ => false,
    }
}

fn reference_string(s: &str, op: Op, rhs: &[&str], cache: &mut RegexCache) -> bool {
    let r = rhs.first().copied().unwrap_or("");
    match op {
        Op::Eq => s == r,
        Op::Ne => s != r,
        Op::Lt => s < r,
        Op::Le => s <= r,
        Op::Gt => s > r,
        Op::Ge => s >= r,
        Op::Contains => s.contains(r),
        Op::IContains => s.to_ascii_lowercase().contains(&r.to_ascii_lowercase()),
        Op::StartsWith => s.starts_with(r),
        Op::EndsWith => s.ends_with(r),
        Op::In | Op::Intersects => rhs.contains(&s),
        Op::Glob => glob_match(r, s, false),
        Op::IGlob => glob_match(r, s, true),
        Op::PMatch => rhs.iter().any(|p| path_prefix_match(p, s)),
        Op::Regex => {
            let re = cache.entry(r.to_owned()).or_insert_with(|| regex::Regex::new(&format!("^(?:{r})$")).ok());
            re.as_ref().is_some_and(|re| re.is_match(s))
        }
        Op::BContains | Op::BStartsWith | Op::Cidr => false,
    }
}

/// `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = bits.unwrap_or(max);
    (bits <= max).then_some((ip, bits))
}

/// Whether the address text `s` lies in `net`.
pub fn in_network(s: &str, (net, bits): (std::net::IpAddr, u8)) -> bool {
    use std::net::IpAddr;
    let Ok(ip) = s.trim().parse::<IpAddr>() else { return false };
    let (a, b, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32u32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128u32),
        _ => return false,
    };
    let bits = u32::from(bits);
    if bits == 0 {
        return true;
    }
    let shift = width - bits;
    a.checked_shr(shift) == b.checked_shr(shift)
}

/// fnmatch(3) with no flags: `*` also matches `/`.
pub fn glob_match(pattern: &str, s: &str, case_insensitive: bool) -> bool {
    crate::fnmatch::Pattern::new(pattern, case_insensitive).matches(s)
}

/// libsinsp `pmatch`: `s` equals `prefix` or lies below it, comparing `/`-separated
/// components (empty components ignored); components with glob characters match by fnmatch.
pub fn path_prefix_match(prefix: &str, s: &str) -> bool {
    let mut want = prefix.split('/').filter(|c| !c.is_empty());
    let mut have = s.split('/').filter(|c| !c.is_empty());
    loop {
        match (want.next(), have.next()) {
            (None, _) => return true,
            (Some(_), None) => return false,
            (Some(w), Some(h)) => {
                let ok = if w.contains(['*', '?', '[']) { glob_match(w, h, false) } else { w == h };
                if !ok {
                    return false;
                }
            }
        }
    }
}
