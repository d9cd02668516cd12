//! The compiled rule set and its evaluation.

use std::sync::Arc;

use kustody_model::{Detection, Event, EventContext, FieldValue, OutputField, Priority, SourceRef};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::cond::{self, Ast, Op};
use crate::diag::{Diagnostic, Severity};
use crate::expr::{self, Expr, MacroError, RegexCache, Scope, Value};
use crate::fields::{Arg, Field};
use crate::loader::{exception_text, locate, Loader, RuleDef, K8S_AUDIT};
use crate::output::Template;
use crate::prog::{self, Node};

/// What to build from the loaded rules.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Rules less severe than this are compiled (and checked) but not evaluated.
    pub min_priority: Priority,
    /// Rules and correlations switched off by name (as `enabled: false` in their file would):
    /// compiled and listed, never evaluated.
    pub disabled: std::collections::BTreeSet<String>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { min_priority: Priority::Debug, disabled: Default::default() }
    }
}

/// A rule as listed by `kustody rules list`.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    pub name: String,
    pub desc: String,
    pub priority: Priority,
    pub source: String,
    pub tags: Vec<String>,
    pub enabled: bool,
    /// A correlation step's condition: evaluated for the correlation, never alerts.
    pub hidden: bool,
    pub file: Arc<str>,
    pub line: u32,
}

struct CompiledRule {
    info: RuleInfo,
    /// Shared copies for detections (cloning an `Arc` per alert instead of strings).
    name: Arc<str>,
    source: Arc<str>,
    tags: Arc<[String]>,
    /// The tags in byte order (Falco's alert JSON lists them sorted).
    sorted_tags: Box<[String]>,
    expr: Expr,
    prog: Node,
    output: Template,
    /// Per index key, the values the rule can match; `None` = any.
    keys: [Option<Constraint>; KEYS],
}

/// The index keys: verb, resource, subresource, stage.
pub const KEYS: usize = 4;

/// One index key a rule needs: the values it accepts (sorted) and whether they compare ASCII
/// case-insensitively (then lower case).
pub type IndexKey = (Vec<String>, bool);

fn key_of(field: &Field, arg: &Arg) -> Option<usize> {
    match (field, arg) {
        (Field::Verb, _) => Some(0),
        (Field::TargetResource, _) => Some(1),
        (Field::TargetSubresource, _) => Some(2),
        (Field::Stage, _) => Some(3),
        (Field::JsonValue, Arg::Pointer(p)) => match p.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["verb"] => Some(0),
            ["objectRef", "resource"] => Some(1),
            ["objectRef", "subresource"] => Some(2),
            ["stage"] => Some(3),
            _ => None,
        },
        _ => None,
    }
}

fn event_keys<'e>(ev: &'e Event<'_>) -> [Option<&'e str>; KEYS] {
    let o = ev.object_ref();
    [ev.verb(), o.and_then(|o| o.resource.as_deref()), o.and_then(|o| o.subresource.as_deref()), ev.stage()]
}

/// The values an index key must take for a rule to match; with `ci`, compared ASCII
/// case-insensitively (the set then holds lower-case values).
#[derive(Debug, Clone)]
struct Constraint {
    set: FxHashSet<String>,
    ci: bool,
}

impl Constraint {
    fn lower(self) -> Constraint {
        if self.ci {
            return self;
        }
        Constraint { set: self.set.into_iter().map(|v| v.to_ascii_lowercase()).collect(), ci: true }
    }

    fn admits(&self, v: &str) -> bool {
        if self.ci {
            self.set.contains(&v.to_ascii_lowercase())
        } else {
            self.set.contains(v)
        }
    }
}

/// A glob pattern with no wildcard or escape: a literal (Sigma's case-insensitive equality).
fn glob_literal(p: &str) -> bool {
    !p.contains(['*', '?', '[', '\\'])
}

/// The values `key` must take for `e` to be true; `None` when unconstrained.
fn constraint(e: &Expr, key: usize) -> Option<Constraint> {
    match e {
        Expr::Cmp { lhs, op, rhs }
            if lhs.transformers.is_empty() && key_of(&lhs.field.field, &lhs.field.arg) == Some(key) =>
        {
            match (op, rhs) {
                (Op::Eq, Value::Str(v)) => Some(Constraint { set: std::iter::once(v.clone()).collect(), ci: false }),
                (Op::In | Op::Intersects, Value::List(items)) => {
                    Some(Constraint { set: items.iter().cloned().collect(), ci: false })
                }
                (Op::Glob, Value::Str(v)) if glob_literal(v) => {
                    Some(Constraint { set: std::iter::once(v.clone()).collect(), ci: false })
                }
                (Op::IGlob, Value::Str(v)) if glob_literal(v) => {
                    Some(Constraint { set: std::iter::once(v.to_ascii_lowercase()).collect(), ci: true })
                }
                _ => None,
            }
        }
        Expr::And(items) => items.iter().filter_map(|i| constraint(i, key)).reduce(|a, b| {
            let (a, b) = if a.ci || b.ci { (a.lower(), b.lower()) } else { (a, b) };
            Constraint { ci: a.ci, set: a.set.intersection(&b.set).cloned().collect() }
        }),
        Expr::Or(items) => {
            let mut parts = Vec::new();
            for i in items {
                parts.push(constraint(i, key)?);
            }
            let ci = parts.iter().any(|c| c.ci);
            let mut acc = Constraint { set: FxHashSet::default(), ci };
            for p in parts {
                acc.set.extend(if ci { p.lower().set } else { p.set });
            }
            Some(acc)
        }
        _ => None,
    }
}

/// Removes top-level conjuncts implied by the index constraints `keys` (see `candidates`).
fn prune_implied(e: &Expr, keys: &[Option<Constraint>; KEYS]) -> Expr {
    match e {
        Expr::And(items) => {
            Expr::And(items.iter().filter(|c| !implied(c, keys)).map(|c| prune_implied(c, keys)).collect())
        }
        other => other.clone(),
    }
}

/// True when every event the index offers satisfies `c`.
fn implied(c: &Expr, keys: &[Option<Constraint>; KEYS]) -> bool {
    let Expr::Cmp { lhs, op, rhs } = c else {
        return false;
    };
    if !lhs.transformers.is_empty() {
        return false;
    }
    let Some(Some(allowed)) = key_of(&lhs.field.field, &lhs.field.arg).and_then(|k| keys.get(k)) else {
        return false;
    };
    // A case-insensitive constraint over-approximates: it implies nothing exact.
    if allowed.ci {
        return false;
    }
    let allowed = &allowed.set;
    match (op, rhs) {
        (Op::Eq, Value::Str(v)) => allowed.len() == 1 && allowed.contains(v),
        (Op::In | Op::Intersects, Value::List(items)) => allowed.iter().all(|a| items.contains(a)),
        _ => false,
    }
}

/// A rule's alert parts, borrowed from the engine (see [`Engine::alert`]).
#[derive(Debug, Clone, Copy)]
pub struct Alert<'r> {
    pub rule: &'r str,
    pub priority: Priority,
    /// Falco's event source name (`k8s_audit`).
    pub source: &'r str,
    pub sorted_tags: &'r [String],
    pub template: &'r Template,
}

/// Per-thread scratch space: the candidate-rule cache, keyed by a hash of the event's index
/// keys (verified against the stored keys, so collisions cannot mix up candidate lists).
#[derive(Default)]
pub struct Scratch {
    cache: FxHashMap<u64, Vec<CacheEntry>>,
    entries: usize,
    regex: RegexCache,
}

/// Index keys of an event and the candidate rules for them.
type CacheEntry = ([Option<Box<str>>; KEYS], Box<[u32]>);

thread_local! {
    static AUDIT_ID: Arc<str> = Arc::from("ka.auditid");
}

/// Bounds the candidate cache: keys come from the (untrusted) events.
const CACHE_LIMIT: usize = 4096;

/// Compiled rules, ready to evaluate events.
pub struct Engine {
    rules: Vec<CompiledRule>,
    /// Indices of rules that are evaluated: enabled and at or above the minimum priority, or
    /// feeding an active correlation.
    active: Vec<u32>,
    /// Per rule: whether its matches are reported (enabled, not hidden, at the priority).
    emit: Vec<bool>,
    /// Per rule: the (correlation, steps) it feeds.
    feeds: Vec<Vec<(u16, u64)>>,
    corrs: Vec<crate::correlate::Compiled>,
}

pub(crate) struct LoadedSet<'l> {
    pub lists: FxHashMap<String, Vec<String>>,
    pub loader: &'l Loader,
}

impl Scope for LoadedSet<'_> {
    fn macro_ast(&self, name: &str, from_macro: Option<&str>) -> Result<&Ast, MacroError> {
        let undefined = || MacroError::Undefined(name.to_owned());
        let idx = self.loader.macro_idx.get(name).copied().ok_or_else(undefined)?;
        let m = self.loader.macros.get(idx).ok_or_else(undefined)?;
        if let Some(from) = from_macro {
            let from_def = self.loader.macro_idx.get(from).and_then(|&i| self.loader.macros.get(i));
            if let Some(f) = from_def {
                if m.index >= f.visibility {
                    return Err(MacroError::DefinedLater { name: name.to_owned(), from: from.to_owned() });
                }
            }
        }
        m.ast.as_ref().ok_or_else(|| MacroError::SyntaxError(name.to_owned()))
    }
    fn list_items(&self, name: &str) -> Option<&[String]> {
        self.lists.get(name).map(Vec::as_slice)
    }
}

impl Engine {
    /// Loads and compiles rule files in order.
    pub fn load(files: &[(String, String)], opts: &EngineOptions) -> (Engine, Vec<Diagnostic>) {
        let mut loader = Loader::new();
        for (name, text) in files {
            loader.add_file(name, text);
        }
        loader.finish(opts)
    }

    pub(crate) fn build(set: &LoadedSet<'_>, opts: &EngineOptions) -> (Engine, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let mut rules = Vec::new();
        let mut other_sources: FxHashMap<(Arc<str>, String), usize> = FxHashMap::default();
        for def in &set.loader.rules {
            if def.source != K8S_AUDIT {
                *other_sources.entry((def.loc.file.clone(), def.source.clone())).or_default() += 1;
                continue;
            }
            match compile_rule(def, set) {
                Ok(mut r) => {
                    r.info.enabled &= !opts.disabled.contains(&r.info.name);
                    rules.push(r)
                }
                Err(d) => diags.extend(d),
            }
        }
        let mut other: Vec<_> = other_sources.into_iter().collect();
        other.sort();
        for ((file, source), n) in other {
            diags.push(Diagnostic {
                severity: Severity::Warning,
                file,
                line: 1,
                col: 1,
                item: None,
                message: format!("{n} rule(s) with source `{source}` skipped: kustody evaluates `{K8S_AUDIT}` rules (a rule without `source` is a `syscall` rule in Falco)"),
            });
        }
        let (corrs, feeds) = build_correlations(&set.loader.correlations, &rules, opts, &mut diags);
        let emit: Vec<bool> = rules
            .iter()
            .map(|r| r.info.enabled && !r.info.hidden && r.info.priority.at_least(opts.min_priority))
            .collect();
        let active = rules
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                r.info.enabled && (emit.get(*i) == Some(&true) || feeds.get(*i).is_some_and(|f| !f.is_empty()))
            })
            .map(|(i, _)| i as u32)
            .collect();
        (Engine { rules, active, emit, feeds, corrs }, diags)
    }

    /// Whether matches of rule `idx` are reported (hidden correlation steps and rules below the
    /// minimum priority that only feed correlations are evaluated but not reported).
    pub fn emits(&self, idx: u32) -> bool {
        self.emit.get(idx as usize).copied().unwrap_or(false)
    }

    /// Whether any correlation is active (callers can skip [`Engine::correlation_inputs`]).
    pub fn has_correlations(&self) -> bool {
        !self.corrs.is_empty()
    }

    /// The correlation inputs a match of rule `idx` on `ev` contributes.
    pub fn correlation_inputs(
        &self,
        idx: u32,
        ev: &Event<'_>,
        source_ref: &SourceRef,
        out: &mut Vec<crate::CorrInput>,
    ) {
        let Some(feeds) = self.feeds.get(idx as usize).filter(|f| !f.is_empty()) else { return };
        let Some(rule) = self.rules.get(idx as usize) else { return };
        let Some(time_ns) = ev.time_ns() else { return };
        for &(corr, steps) in feeds {
            let Some(c) = self.corrs.get(corr as usize) else { continue };
            let (key, fields) = c.key.render(ev);
            if fields.iter().any(|(_, v)| matches!(v, FieldValue::Missing)) {
                continue;
            }
            out.push(crate::CorrInput {
                corr,
                steps,
                key: key.into_boxed_str(),
                rule: rule.name.clone(),
                time_ns,
                source_ref: source_ref.clone(),
                audit_id: ev.audit_id().map(str::to_owned),
                context: EventContext::of(ev),
            });
        }
    }

    /// Every loaded correlation, enabled or not.
    pub fn correlations(&self) -> impl Iterator<Item = &crate::CorrelationInfo> {
        self.corrs.iter().map(|c| &c.info)
    }

    /// Fresh streaming state for the active correlations.
    pub fn correlator(&self) -> crate::Correlator {
        crate::Correlator::new(&self.corrs)
    }

    /// Every compiled rule, enabled or not.
    pub fn rules(&self) -> impl Iterator<Item = &RuleInfo> {
        self.rules.iter().map(|r| &r.info)
    }

    /// The values rule `idx` needs in the event's verb, resource, subresource and stage (its
    /// index keys, in that order): `None` where any value may match; with `true`, compared
    /// ASCII case-insensitively (the values are then lower case). A store can select candidate
    /// events by these before anything is parsed.
    pub fn index_keys(&self, idx: u32) -> Option<[Option<IndexKey>; KEYS]> {
        let r = self.rules.get(idx as usize)?;
        Some(r.keys.clone().map(|k| {
            k.map(|c| {
                let mut v: Vec<String> = c.set.into_iter().collect();
                v.sort_unstable();
                (v, c.ci)
            })
        }))
    }

    pub fn rule(&self, idx: u32) -> Option<&RuleInfo> {
        self.rules.get(idx as usize).map(|r| &r.info)
    }

    /// Number of rules that will be evaluated.
    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// The rules that can match an event with these index keys (cached per thread).
    fn candidates<'s>(&self, ev: &Event<'_>, scratch: &'s mut Scratch) -> &'s [u32] {
        let keys = event_keys(ev);
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = rustc_hash::FxHasher::default();
            keys.hash(&mut h);
            h.finish()
        };
        let same = |stored: &[Option<Box<str>>; KEYS]| stored.iter().zip(keys.iter()).all(|(a, b)| a.as_deref() == *b);
        let found = scratch.cache.get(&hash).and_then(|bucket| bucket.iter().position(|(k, _)| same(k)));
        let pos = match found {
            Some(p) => p,
            None => {
                let list: Box<[u32]> = self
                    .active
                    .iter()
                    .copied()
                    .filter(|&i| {
                        self.rules.get(i as usize).is_some_and(|r| {
                            r.keys.iter().zip(keys.iter()).all(|(allowed, have)| match (allowed, have) {
                                (None, _) => true,
                                (Some(c), Some(v)) => c.admits(v),
                                (Some(_), None) => false,
                            })
                        })
                    })
                    .collect();
                if scratch.entries >= CACHE_LIMIT {
                    scratch.cache.clear();
                    scratch.entries = 0;
                }
                scratch.entries += 1;
                let bucket = scratch.cache.entry(hash).or_default();
                bucket.push((keys.map(|k| k.map(Box::from)), list));
                bucket.len() - 1
            }
        };
        scratch.cache.get(&hash).and_then(|b| b.get(pos)).map_or(&[], |(_, l)| l)
    }

    /// Appends the indices of the active rules matching `ev` (optimised path, in rule order).
    pub fn matches(&self, ev: &Event<'_>, scratch: &mut Scratch, out: &mut Vec<u32>) {
        for &i in self.candidates(ev, scratch) {
            if self.rules.get(i as usize).is_some_and(|r| prog::eval(&r.prog, ev)) {
                out.push(i);
            }
        }
    }

    /// The same answer as [`Engine::matches`], computed by the plain reference evaluator over
    /// every active rule, without the index.
    pub fn matches_reference(&self, ev: &Event<'_>, scratch: &mut Scratch) -> Vec<u32> {
        self.active
            .iter()
            .copied()
            .filter(|&i| {
                self.rules.get(i as usize).is_some_and(|r| expr::eval_reference(&r.expr, ev, &mut scratch.regex))
            })
            .collect()
    }

    /// What an alert of rule `idx` is made of, for writers that render a match straight into
    /// their output buffer instead of through a [`Detection`].
    pub fn alert(&self, idx: u32) -> Option<Alert<'_>> {
        let r = self.rules.get(idx as usize)?;
        Some(Alert {
            rule: &r.name,
            priority: r.info.priority,
            source: &r.source,
            sorted_tags: &r.sorted_tags,
            template: &r.output,
        })
    }

    /// Renders a match into a [`Detection`]. `with_context` fills [`Detection::context`]
    /// (the columns of tables and CSV; JSON output does not need it).
    pub fn detection(&self, idx: u32, ev: &Event<'_>, source_ref: SourceRef, with_context: bool) -> Option<Detection> {
        let r = self.rules.get(idx as usize)?;
        let (output, fields) = r.output.render(ev);
        let mut output_fields: Vec<OutputField> =
            fields.into_iter().map(|(name, value)| OutputField { name, value }).collect();
        let audit_id = ev.audit_id().map(str::to_owned);
        if !output_fields.iter().any(|f| &*f.name == "ka.auditid") {
            let v = ev.audit_id().map_or(FieldValue::Missing, |a| FieldValue::Str(a.to_owned()));
            output_fields.push(OutputField { name: AUDIT_ID.with(Clone::clone), value: v });
        }
        Some(Detection {
            rule: r.name.clone(),
            priority: r.info.priority,
            source: r.source.clone(),
            tags: r.tags.clone(),
            time_ns: ev.time_ns(),
            output,
            output_fields,
            audit_id,
            source_ref,
            context: if with_context { EventContext::of(ev) } else { EventContext::default() },
        })
    }
}

fn compile_rule(def: &RuleDef, set: &LoadedSet<'_>) -> Result<CompiledRule, Vec<Diagnostic>> {
    let item = Some(format!("rule `{}`", def.name));
    let mk = |severity, file: &Arc<str>, line, col, message: String| Diagnostic {
        severity,
        file: file.clone(),
        line,
        col,
        item: item.clone(),
        message,
    };
    let mut errors = Vec::new();

    // Falco's shape: "(condition)" then " and not (exception)" for each exception with values.
    let mut text = format!("({})", def.condition);
    let cond_end = text.len();
    for e in &def.exceptions {
        match exception_text(e) {
            Ok(Some(t)) => {
                text.push_str(" and not ");
                text.push_str(&t);
            }
            Ok(None) => {}
            Err(m) => errors.push(mk(Severity::Error, &e.loc.file, e.loc.pos.line, e.loc.pos.col, m.to_string())),
        }
    }
    let exc_loc = def.exceptions.first().map(|e| e.loc.clone());
    let place = |offset: usize| -> (Arc<str>, u32, u32, String) {
        if offset >= 1 && offset <= cond_end.saturating_sub(1) || exc_loc.is_none() {
            let (p, snip) = locate(&def.condition, def.cond_loc.pos, offset.saturating_sub(1));
            (def.cond_loc.file.clone(), p.line, p.col, snip)
        } else {
            let l = exc_loc.clone().unwrap_or_else(|| def.cond_loc.clone());
            (l.file, l.pos.line, l.pos.col, " (in the rule's exceptions)".into())
        }
    };
    // Syntax errors are reported against the condition as written (without the parentheses
    // and exception clauses added above), so positions and messages match the user's text.
    let ast = match cond::parse(&def.condition) {
        Err(own) => {
            let (p, snip) = locate(&def.condition, def.cond_loc.pos, own.offset);
            errors.push(mk(Severity::Error, &def.cond_loc.file, p.line, p.col, format!("{}{snip}", own.message)));
            None
        }
        Ok(_) => match cond::parse(&text) {
            Ok(a) => Some(a),
            Err(e) => {
                let (f, l, c, snip) = place(e.offset);
                errors.push(mk(Severity::Error, &f, l, c, format!("{}{snip}", e.message)));
                None
            }
        },
    };
    let expr = ast.as_ref().and_then(|ast| match expr::lower(ast, set) {
        Ok(x) => Some(x),
        Err(errs) => {
            if def.skip_if_unknown_filter && errs.iter().all(|e| e.message.starts_with("unknown field")) {
                let msg = errs.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ");
                errors.push(mk(
                    Severity::Warning,
                    &def.loc.file,
                    def.loc.pos.line,
                    def.loc.pos.col,
                    format!("skipped (skip-if-unknown-filter): {msg}"),
                ));
                return None;
            }
            for e in errs {
                match &e.in_macro {
                    Some(m) => {
                        let mdef = set.loader.macro_idx.get(m).and_then(|&i| set.loader.macros.get(i));
                        let (file, pos, snip) = match mdef {
                            Some(md) => {
                                let (p, s) = locate(&md.cond, md.cond_loc.pos, e.span.0);
                                (md.cond_loc.file.clone(), p, s)
                            }
                            None => (def.cond_loc.file.clone(), def.cond_loc.pos, String::new()),
                        };
                        errors.push(mk(
                            Severity::Error,
                            &file,
                            pos.line,
                            pos.col,
                            format!("in macro `{m}`: {}{snip}", e.message),
                        ));
                    }
                    None => {
                        let (f, l, c, snip) = place(e.span.0);
                        errors.push(mk(Severity::Error, &f, l, c, format!("{}{snip}", e.message)));
                    }
                }
            }
            None
        }
    });
    let output = match Template::parse(def.output.trim()) {
        Ok(t) => Some(t),
        Err(es) => {
            for m in es {
                errors.push(mk(
                    Severity::Error,
                    &def.output_loc.file,
                    def.output_loc.pos.line,
                    def.output_loc.pos.col,
                    format!("invalid output: {m}"),
                ));
            }
            None
        }
    };
    let (Some(expr), Some(output)) = (expr, output) else {
        return Err(errors);
    };
    let keys: [Option<Constraint>; KEYS] = std::array::from_fn(|k| constraint(&expr, k));
    // The index only offers an event to this rule when its keys are in these sets, so the
    // conjuncts that demand exactly that (`kevt`'s stage test, `ka.verb=create`, ...) need not be
    // evaluated again. The reference evaluator keeps the full condition.
    let prog = match prog::compile(&prune_implied(&expr, &keys)) {
        Ok(p) => p,
        Err(m) => {
            errors.push(mk(
                Severity::Error,
                &def.cond_loc.file,
                def.cond_loc.pos.line,
                def.cond_loc.pos.col,
                m.to_string(),
            ));
            return Err(errors);
        }
    };
    if errors.iter().any(|d| d.severity == Severity::Error) {
        return Err(errors);
    }
    Ok(CompiledRule {
        name: def.name.as_str().into(),
        source: def.source.as_str().into(),
        tags: def.tags.clone().into(),
        sorted_tags: {
            let mut t = def.tags.clone();
            t.sort_unstable();
            t.into()
        },
        info: RuleInfo {
            name: def.name.clone(),
            desc: def.desc.clone(),
            priority: def.priority,
            source: def.source.clone(),
            tags: def.tags.clone(),
            enabled: def.enabled,
            hidden: def.hidden,
            file: def.loc.file.clone(),
            line: def.loc.pos.line,
        },
        expr,
        prog,
        output,
        keys,
    })
}

/// Compiles the loaded correlations against the compiled rules: each step's rule names become
/// indices, each rule learns which steps it feeds. Correlations below the minimum priority or
/// disabled are kept for listing but feed nothing.
fn build_correlations(
    defs: &[crate::correlate::CorrDef],
    rules: &[CompiledRule],
    opts: &EngineOptions,
    diags: &mut Vec<Diagnostic>,
) -> (Vec<crate::correlate::Compiled>, Vec<Vec<(u16, u64)>>) {
    let by_name: FxHashMap<&str, usize> = rules.iter().enumerate().map(|(i, r)| (r.info.name.as_str(), i)).collect();
    let mut feeds: Vec<Vec<(u16, u64)>> = vec![Vec::new(); rules.len()];
    let mut out = Vec::new();
    for d in defs {
        let item = Some(format!("correlation `{}`", d.name));
        let diag = |severity, message: String| Diagnostic {
            severity,
            file: d.loc.file.clone(),
            line: d.loc.pos.line,
            col: d.loc.pos.col,
            item: item.clone(),
            message,
        };
        let key_text: Vec<String> = d.by.iter().map(|f| format!("%{f}")).collect();
        let Ok(key) = Template::parse(&key_text.join("\u{1f}")) else {
            diags.push(diag(Severity::Error, "invalid `by` fields".into()));
            continue;
        };
        let mut steps_idx: Vec<Vec<usize>> = Vec::new();
        let mut ok = true;
        for (i, names) in d.steps.iter().enumerate() {
            let mut idx = Vec::new();
            for n in names {
                match by_name.get(n.as_str()) {
                    Some(&r) => idx.push(r),
                    None => {
                        diags.push(diag(
                            Severity::Error,
                            format!("step {}: no rule `{n}` (or it did not compile)", i + 1),
                        ));
                        ok = false;
                    }
                }
            }
            if ok && !idx.iter().any(|&r| rules.get(r).is_some_and(|r| r.info.enabled)) {
                diags.push(diag(
                    Severity::Warning,
                    format!("step {}: every rule it names is disabled, so it can never complete", i + 1),
                ));
            }
            steps_idx.push(idx);
        }
        if !ok {
            continue;
        }
        let corr = out.len() as u16;
        let enabled = d.enabled && !opts.disabled.contains(&d.name);
        let active = enabled && d.priority.at_least(opts.min_priority);
        if active {
            for (step, idx) in steps_idx.iter().enumerate() {
                for &r in idx {
                    if let Some(f) = feeds.get_mut(r) {
                        match f.iter_mut().find(|(c, _)| *c == corr) {
                            Some((_, mask)) => *mask |= 1u64 << step,
                            None => f.push((corr, 1u64 << step)),
                        }
                    }
                }
            }
        }
        out.push(crate::correlate::Compiled {
            info: crate::CorrelationInfo {
                name: d.name.clone(),
                desc: d.desc.clone(),
                priority: d.priority,
                tags: d.tags.clone(),
                enabled,
                file: d.loc.file.clone(),
                line: d.loc.pos.line,
                by: d.by.clone(),
                window: d.window.clone(),
                steps: d.steps.clone(),
                ordered: d.ordered,
                count: d.count,
            },
            name: d.name.as_str().into(),
            tags: d.tags.clone().into(),
            key,
            window_ns: d.window_ns,
            output: d.output.trim().to_owned(),
        });
    }
    (out, feeds)
}
