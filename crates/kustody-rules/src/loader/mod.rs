//! Loading Falco rule files: `rule`, `macro`, `list`, `required_engine_version`,
//! `required_plugin_versions`, with `enabled`, `exceptions`, `override` and the deprecated
//! `append: true`, in Falco's load-order semantics:
//!
//! * a later item with the same name replaces an earlier one in place, or changes it with
//!   `override` / `append`;
//! * a list item naming another list is expanded only if that list was defined before the
//!   latest definition/append of the referencing list;
//! * a macro sees only macros defined before its own latest definition; rules see all macros;
//! * lists named in conditions always expand to their final items.

mod correlation;
mod exceptions;
mod overrides;

use std::sync::Arc;

use kustody_model::Priority;
use rustc_hash::FxHashMap;

use crate::cond::{self, Ast};
use crate::diag::{Diagnostic, Severity};
use crate::engine::{Engine, EngineOptions};
use crate::yaml::{self, Node, Pos};

pub(crate) use exceptions::exception_text;
use exceptions::exceptions;

/// The Falco rules-engine version kustody implements. Files requiring a newer one still load
/// (with a warning): most newer files use nothing newer.
pub const ENGINE_VERSION: (u64, u64, u64) = (0, 43, 0);

/// Plugin versions whose fields kustody implements: `required_plugin_versions` above these warn.
const PLUGINS: &[(&str, (u64, u64, u64))] = &[
    ("k8saudit", (0, 18, 0)),
    ("k8saudit-eks", (0, 12, 0)),
    ("k8saudit-gke", (0, 9, 0)),
    ("k8saudit-aks", (0, 6, 0)),
    ("k8saudit-ovh", (0, 6, 0)),
    ("json", (0, 7, 0)),
];

/// A list, nested lists expanded, keeps at most this many items (a diagnostic says so).
pub const MAX_LIST_ITEMS: usize = 100_000;

/// The event source kustody evaluates.
pub const K8S_AUDIT: &str = "k8s_audit";

/// A rule file handed to the loader.
#[derive(Debug, Clone)]
pub struct RuleSource {
    pub name: String,
    pub text: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Loc {
    pub file: Arc<str>,
    pub pos: Pos,
}

#[derive(Debug)]
struct ListDef {
    loc: Loc,
    name: String,
    items: Vec<String>,
    index: usize,
    visibility: usize,
}

#[derive(Debug)]
pub(crate) struct MacroDef {
    pub name: String,
    pub cond: String,
    pub cond_loc: Loc,
    pub index: usize,
    pub visibility: usize,
    pub ast: Option<Ast>,
}

#[derive(Debug, Clone)]
pub(crate) enum ExcFields {
    Single(String),
    Multi(Vec<String>),
}

#[derive(Debug, Clone)]
pub(crate) enum ExcItem {
    Scalar(String),
    List(Vec<String>),
}

#[derive(Debug, Clone)]
pub(crate) struct ExceptionDef {
    pub name: String,
    pub fields: Option<ExcFields>,
    pub comps: Option<ExcFields>,
    pub values: Vec<Vec<ExcItem>>,
    pub loc: Loc,
}

#[derive(Debug, Clone)]
pub(crate) struct RuleDef {
    pub name: String,
    pub desc: String,
    pub condition: String,
    pub cond_loc: Loc,
    pub output: String,
    pub output_loc: Loc,
    pub priority: Priority,
    pub source: String,
    pub tags: Vec<String>,
    pub enabled: bool,
    pub exceptions: Vec<ExceptionDef>,
    pub skip_if_unknown_filter: bool,
    /// A correlation step's condition: evaluated, never alerts on its own.
    pub hidden: bool,
    pub loc: Loc,
}

/// How a `list` or `macro` item relates to an earlier one of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A plain definition: new, or replacing an earlier one.
    Define,
    /// `append: true` or `override: {...: append}`.
    Append,
    /// `override: {...: replace}`: must replace an existing item.
    Replace,
}

/// Accumulates rule files in order, then compiles them into an [`Engine`].
#[derive(Default)]
pub struct Loader {
    lists: Vec<ListDef>,
    list_idx: FxHashMap<String, usize>,
    pub(crate) macros: Vec<MacroDef>,
    pub(crate) macro_idx: FxHashMap<String, usize>,
    pub(crate) rules: Vec<RuleDef>,
    rule_idx: FxHashMap<String, usize>,
    counter: usize,
    pub(crate) diags: Vec<Diagnostic>,
    /// Files in load order, to sort diagnostics by position.
    files: Vec<Arc<str>>,
    /// Sigma field mapping, parsed on first use.
    sigma_mapping: Option<Vec<(String, String)>>,
    pub(crate) correlations: Vec<crate::correlate::CorrDef>,
}

type Res<T> = Result<T, (Pos, String)>;

fn scalar(node: &Node, key: &str) -> Res<String> {
    match node {
        Node::Scalar { value, .. } => Ok(value.clone()),
        other => Err((other.pos(), format!("`{key}` must be a string, not {}", other.kind()))),
    }
}

fn boolean(node: &Node, key: &str) -> Res<bool> {
    match node.as_str() {
        Some("true" | "True" | "TRUE") => Ok(true),
        Some("false" | "False" | "FALSE") => Ok(false),
        _ => Err((node.pos(), format!("`{key}` must be true or false"))),
    }
}

fn strings(node: &Node, key: &str) -> Res<Vec<String>> {
    match node {
        Node::Seq { items, .. } => items.iter().map(|i| scalar(i, key)).collect(),
        n if n.is_null() => Ok(Vec::new()),
        other => Err((other.pos(), format!("`{key}` must be a list, not {}", other.kind()))),
    }
}

fn parse_version(s: &str) -> Option<(u64, u64, u64)> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some((0, n, 0));
    }
    let mut it = s.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next().flatten().unwrap_or(0), it.next().flatten().unwrap_or(0)))
}

fn fmt_version(v: (u64, u64, u64)) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

const RULE_OVERRIDABLE: &[&str] = &[
    "condition",
    "output",
    "desc",
    "priority",
    "tags",
    "exceptions",
    "enabled",
    "warn_evttypes",
    "skip-if-unknown-filter",
    "capture",
    "capture_duration",
];
const RULE_APPENDABLE: &[&str] = &["condition", "output", "desc", "tags", "exceptions"];
const RULE_KEYS: &[&str] = &[
    "rule",
    "desc",
    "condition",
    "output",
    "priority",
    "source",
    "tags",
    "enabled",
    "exceptions",
    "warn_evttypes",
    "skip-if-unknown-filter",
    "append",
    "override",
    "capture",
    "capture_duration",
];

impl Loader {
    pub fn new() -> Self {
        Loader::default()
    }

    fn diag(
        &mut self,
        severity: Severity,
        file: &Arc<str>,
        pos: Pos,
        item: Option<String>,
        message: impl Into<String>,
    ) {
        self.diags.push(Diagnostic {
            severity,
            file: file.clone(),
            line: pos.line,
            col: pos.col,
            item,
            message: message.into(),
        });
    }

    /// Adds one rule file. Problems become diagnostics; nothing here fails.
    pub fn add_file(&mut self, name: &str, text: &str) {
        let file: Arc<str> = name.into();
        self.files.push(file.clone());
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let docs = match yaml::parse(text) {
            Ok(d) => d,
            Err(e) => {
                self.diag(Severity::Error, &file, e.pos, None, format!("invalid YAML: {}", e.message));
                return;
            }
        };
        for doc in docs {
            match doc {
                Node::Map { .. } if doc.get("detection").is_some() => {
                    self.counter += 1;
                    self.sigma(&file, &doc);
                }
                Node::Seq { items, .. } => {
                    for item in &items {
                        self.counter += 1;
                        self.item(&file, item);
                    }
                }
                n if n.is_null() => {}
                other => self.diag(
                    Severity::Error,
                    &file,
                    other.pos(),
                    None,
                    format!("a rules file must be a list of items, not {}", other.kind()),
                ),
            }
        }
    }

    fn item(&mut self, file: &Arc<str>, item: &Node) {
        let Node::Map { entries, pos } = item else {
            self.diag(
                Severity::Error,
                file,
                item.pos(),
                None,
                format!("expected an item (rule, macro, list, ...), found {}", item.kind()),
            );
            return;
        };
        let key = entries.first().and_then(|(k, _)| k.as_str()).unwrap_or_default();
        let kind = ["rule", "macro", "list", "correlation", "required_engine_version", "required_plugin_versions"]
            .into_iter()
            .find(|k| item.get(k).is_some())
            .unwrap_or(key);
        let result = match kind {
            "rule" => self.rule(file, item),
            "correlation" => self.correlation(file, item),
            "macro" => self.macro_item(file, item),
            "list" => self.list(file, item),
            "required_engine_version" => self.engine_version(file, item),
            "required_plugin_versions" => self.plugin_versions(file, item),
            other => {
                self.diag(Severity::Warning, file, *pos, None, format!("unknown item `{other}` ignored (expected rule, macro, list, correlation, required_engine_version or required_plugin_versions)"));
                Ok(())
            }
        };
        if let Err((p, msg)) = result {
            let name = item.get(kind).and_then(Node::as_str).map(|n| format!("{kind} `{n}`"));
            self.diag(Severity::Error, file, p, name, msg);
        }
    }

    /// A Sigma rule, translated to a Falco rule (see [`crate::sigma`]).
    fn sigma(&mut self, file: &Arc<str>, doc: &Node) {
        if self.sigma_mapping.is_none() {
            self.sigma_mapping = Some(crate::sigma::parse_mapping(crate::sigma::DEFAULT_MAPPING).unwrap_or_default());
        }
        let mapping = self.sigma_mapping.clone().unwrap_or_default();
        let title = doc.get("title").and_then(Node::as_str).map(|t| format!("sigma rule `{t}`"));
        let det_pos = doc.get("detection").map_or(doc.pos(), Node::pos);
        match crate::sigma::translate(doc, &mapping) {
            Err(e) => self.diag(Severity::Error, file, det_pos, title, e.to_string()),
            Ok(t) => {
                for w in &t.warnings {
                    self.diag(Severity::Warning, file, det_pos, title.clone(), format!("can never match: {w}"));
                }
                let mut name = t.title.clone();
                if self.rule_idx.contains_key(&name) {
                    let id = doc.get("id").and_then(Node::as_str).unwrap_or("?");
                    name = format!("{name} ({id})");
                }
                let loc = Loc { file: file.clone(), pos: doc.pos() };
                let def = RuleDef {
                    name: name.clone(),
                    desc: t.desc,
                    condition: t.condition,
                    cond_loc: Loc { file: file.clone(), pos: det_pos },
                    output: t.output,
                    output_loc: loc.clone(),
                    priority: t.priority,
                    source: K8S_AUDIT.to_owned(),
                    tags: t.tags,
                    enabled: true,
                    exceptions: Vec::new(),
                    skip_if_unknown_filter: false,
                    hidden: false,
                    loc,
                };
                self.rule_idx.insert(name, self.rules.len());
                self.rules.push(def);
            }
        }
    }

    fn engine_version(&mut self, file: &Arc<str>, item: &Node) -> Res<()> {
        let node = item.get("required_engine_version").ok_or((item.pos(), "missing value".to_owned()))?;
        let text = scalar(node, "required_engine_version")?;
        let v = parse_version(&text).ok_or((node.pos(), format!("cannot parse engine version `{text}`")))?;
        if v.0 != ENGINE_VERSION.0 || v > ENGINE_VERSION {
            self.diag(
                Severity::Warning,
                file,
                node.pos(),
                None,
                format!(
                    "rules require engine version {}, kustody implements {}; loading anyway",
                    fmt_version(v),
                    fmt_version(ENGINE_VERSION)
                ),
            );
        }
        Ok(())
    }

    fn plugin_versions(&mut self, file: &Arc<str>, item: &Node) -> Res<()> {
        let node = item.get("required_plugin_versions").ok_or((item.pos(), "missing value".to_owned()))?;
        let Node::Seq { items, .. } = node else {
            return Err((node.pos(), "`required_plugin_versions` must be a list".into()));
        };
        for req in items {
            let mut candidates = vec![req];
            if let Some(Node::Seq { items: alts, .. }) = req.get("alternatives") {
                candidates.extend(alts.iter());
            }
            let mut wanted = Vec::new();
            let mut satisfied = false;
            for c in candidates {
                let name = c
                    .get("name")
                    .map(|n| scalar(n, "name"))
                    .transpose()?
                    .ok_or((c.pos(), "plugin requirement without `name`".to_owned()))?;
                let ver_text =
                    c.get("version").map(|n| scalar(n, "version")).transpose()?.unwrap_or_else(|| "0.0.0".into());
                let ver =
                    parse_version(&ver_text).ok_or((c.pos(), format!("cannot parse plugin version `{ver_text}`")))?;
                if PLUGINS.iter().any(|(n, have)| *n == name && have.0 == ver.0 && *have >= ver) {
                    satisfied = true;
                }
                wanted.push(format!("{name} {ver_text}"));
            }
            if !satisfied {
                let have: Vec<String> = PLUGINS.iter().map(|(n, v)| format!("{n} {}", fmt_version(*v))).collect();
                self.diag(
                    Severity::Warning,
                    file,
                    req.pos(),
                    None,
                    format!(
                        "rules require plugin {}; kustody implements the fields of {}",
                        wanted.join(" or "),
                        have.join(", ")
                    ),
                );
            }
        }
        Ok(())
    }

    fn list(&mut self, file: &Arc<str>, item: &Node) -> Res<()> {
        let name_node = item.get("list").ok_or((item.pos(), "missing name".to_owned()))?;
        let name = scalar(name_node, "list")?;
        let items_node = item.get("items").ok_or((item.pos(), "list without `items`".to_owned()))?;
        let items = strings(items_node, "items")?;
        let mode = self.mode(file, item, &name, "list", &["items"], &["items"])?;
        match self.list_idx.get(&name).copied() {
            Some(i) if mode == Mode::Append => {
                if let Some(l) = self.lists.get_mut(i) {
                    l.items.extend(items);
                    l.visibility = self.counter;
                }
            }
            Some(i) => {
                // A redefinition, or `override: {items: replace}`, replaces the items.
                if let Some(l) = self.lists.get_mut(i) {
                    l.items = items;
                    l.visibility = self.counter;
                }
            }
            None if mode != Mode::Define => {
                return Err((
                    name_node.pos(),
                    format!("list `{name}` is overridden or appended to but was never defined"),
                ))
            }
            None => {
                self.list_idx.insert(name.clone(), self.lists.len());
                self.lists.push(ListDef {
                    loc: Loc { file: file.clone(), pos: name_node.pos() },
                    name,
                    items,
                    index: self.counter,
                    visibility: self.counter,
                });
            }
        }
        Ok(())
    }

    fn macro_item(&mut self, file: &Arc<str>, item: &Node) -> Res<()> {
        let name_node = item.get("macro").ok_or((item.pos(), "missing name".to_owned()))?;
        let name = scalar(name_node, "macro")?;
        let cond_node = item.get("condition").ok_or((item.pos(), "macro without `condition`".to_owned()))?;
        let cond = scalar(cond_node, "condition")?;
        let mode = self.mode(file, item, &name, "macro", &["condition"], &["condition"])?;
        let cond_loc = Loc { file: file.clone(), pos: cond_node.text_start() };
        match self.macro_idx.get(&name).copied() {
            Some(i) => {
                if let Some(m) = self.macros.get_mut(i) {
                    if mode == Mode::Append {
                        m.cond = format!("{} {}", m.cond, cond);
                    } else {
                        m.cond = cond;
                        m.cond_loc = cond_loc;
                    }
                    m.visibility = self.counter;
                }
            }
            None if mode != Mode::Define => {
                return Err((
                    name_node.pos(),
                    format!("macro `{name}` is overridden or appended to but was never defined"),
                ))
            }
            None => {
                self.macro_idx.insert(name.clone(), self.macros.len());
                self.macros.push(MacroDef {
                    name,
                    cond,
                    cond_loc,
                    index: self.counter,
                    visibility: self.counter,
                    ast: None,
                });
            }
        }
        Ok(())
    }

    fn rule(&mut self, file: &Arc<str>, item: &Node) -> Res<()> {
        let name_node = item.get("rule").ok_or((item.pos(), "missing name".to_owned()))?;
        let name = scalar(name_node, "rule")?;
        let label = Some(format!("rule `{name}`"));
        if let Node::Map { entries, .. } = item {
            for (k, _) in entries {
                if let Some(k) = k.as_str().filter(|k| !RULE_KEYS.contains(k)) {
                    self.diag(Severity::Warning, file, item.pos(), label.clone(), format!("unknown key `{k}` ignored"));
                }
            }
        }
        let append = item.get("append").map(|n| boolean(n, "append")).transpose()?.unwrap_or(false);
        let existing = self.rule_idx.get(&name).copied();
        if let Some(ov) = item.get("override") {
            if append {
                return Err((ov.pos(), "`append` and `override` cannot be used together".into()));
            }
            let i = existing.ok_or((name_node.pos(), format!("no rule `{name}` exists to override")))?;
            return self.override_rule(file, item, ov, i);
        }
        if append {
            self.diag(
                Severity::Warning,
                file,
                item.pos(),
                label,
                "`append: true` is deprecated; use `override: {condition: append}`",
            );
            let i = existing.ok_or((name_node.pos(), format!("no rule `{name}` exists to append to")))?;
            if let Some(c) = item.get("condition") {
                let c = scalar(c, "condition")?;
                if let Some(r) = self.rules.get_mut(i) {
                    r.condition = format!("{} {}", r.condition, c);
                }
            }
            if let Some(e) = item.get("exceptions") {
                let exc = exceptions(file, e)?;
                self.append_exceptions(i, exc)?;
            }
            return Ok(());
        }
        let defines = ["condition", "output", "desc", "priority"].iter().any(|k| item.get(k).is_some());
        if !defines {
            let Some(en) = item.get("enabled") else {
                return Err((item.pos(), "rule has no condition, output, desc or priority".into()));
            };
            let i = existing.ok_or((name_node.pos(), format!("rule has `enabled` but no rule `{name}` exists yet")))?;
            self.diag(
                Severity::Warning,
                file,
                item.pos(),
                label,
                "changing `enabled` without `override` is deprecated; use `override: {enabled: replace}`",
            );
            let v = boolean(en, "enabled")?;
            if let Some(r) = self.rules.get_mut(i) {
                r.enabled = v;
            }
            return Ok(());
        }
        let def = self.full_rule(file, item, &name)?;
        match existing {
            Some(i) => {
                if let Some(slot) = self.rules.get_mut(i) {
                    if slot.source != def.source {
                        return Err((
                            name_node.pos(),
                            format!(
                                "rule re-defined with a different source (`{}`, was `{}`)",
                                def.source, slot.source
                            ),
                        ));
                    }
                    *slot = def;
                }
            }
            None => {
                self.rule_idx.insert(name, self.rules.len());
                self.rules.push(def);
            }
        }
        Ok(())
    }

    fn full_rule(&mut self, file: &Arc<str>, item: &Node, name: &str) -> Res<RuleDef> {
        let need = |key: &str| item.get(key).ok_or((item.pos(), format!("missing required key `{key}`")));
        let cond_node = need("condition")?;
        let output_node = need("output")?;
        let desc = scalar(need("desc")?, "desc")?;
        let prio_node = need("priority")?;
        let prio_text = scalar(prio_node, "priority")?;
        let priority = prio_text.parse::<Priority>().map_err(|e| (prio_node.pos(), e.to_string()))?;
        let source = item.get("source").map(|n| scalar(n, "source")).transpose()?.unwrap_or_else(|| "syscall".into());
        let tags = item.get("tags").map(|n| strings(n, "tags")).transpose()?.unwrap_or_default();
        let enabled = item.get("enabled").map(|n| boolean(n, "enabled")).transpose()?.unwrap_or(true);
        let skip = item
            .get("skip-if-unknown-filter")
            .map(|n| boolean(n, "skip-if-unknown-filter"))
            .transpose()?
            .unwrap_or(false);
        let exceptions = item.get("exceptions").map(|e| exceptions(file, e)).transpose()?.unwrap_or_default();
        for e in &exceptions {
            if e.fields.is_none() {
                return Err((e.loc.pos, format!("exception `{}` has no `fields`", e.name)));
            }
        }
        Ok(RuleDef {
            name: name.to_owned(),
            desc: desc.trim().to_owned(),
            condition: scalar(cond_node, "condition")?,
            cond_loc: Loc { file: file.clone(), pos: cond_node.text_start() },
            output: scalar(output_node, "output")?,
            output_loc: Loc { file: file.clone(), pos: output_node.text_start() },
            priority,
            source,
            tags,
            enabled,
            exceptions,
            skip_if_unknown_filter: skip,
            hidden: false,
            loc: Loc { file: file.clone(), pos: item.pos() },
        })
    }

    /// Compiles everything loaded so far.
    pub fn finish(mut self, opts: &EngineOptions) -> (Engine, Vec<Diagnostic>) {
        // Lists: expand references to earlier lists.
        let mut expanded: FxHashMap<String, Vec<String>> = FxHashMap::default();
        for i in 0..self.lists.len() {
            let mut visiting = Vec::new();
            self.expand_list(i, &mut expanded, &mut visiting);
        }
        // Macros: parse every condition, reporting syntax errors even for unused macros.
        for i in 0..self.macros.len() {
            let Some(m) = self.macros.get(i) else {
                continue;
            };
            match cond::parse(&m.cond) {
                Ok(ast) => {
                    if let Some(m) = self.macros.get_mut(i) {
                        m.ast = Some(ast);
                    }
                }
                Err(e) => {
                    let (pos, snippet) = locate(&m.cond, m.cond_loc.pos, e.offset);
                    let d = Diagnostic {
                        severity: Severity::Error,
                        file: m.cond_loc.file.clone(),
                        line: pos.line,
                        col: pos.col,
                        item: Some(format!("macro `{}`", m.name)),
                        message: format!("{}{snippet}", e.message),
                    };
                    self.diags.push(d);
                }
            }
        }
        for l in &self.lists {
            if expanded.get(&l.name).is_some_and(|v| v.len() >= MAX_LIST_ITEMS) {
                let d = Diagnostic {
                    severity: Severity::Error,
                    file: l.loc.file.clone(),
                    line: l.loc.pos.line,
                    col: l.loc.pos.col,
                    item: Some(format!("list `{}`", l.name)),
                    message: format!("expands to more than {MAX_LIST_ITEMS} items; truncated"),
                };
                self.diags.push(d);
            }
        }
        let ctx = crate::engine::LoadedSet { lists: expanded, loader: &self };
        let (engine, diags) = Engine::build(&ctx, opts);
        let mut all = std::mem::take(&mut self.diags);
        all.extend(diags);
        let order = |f: &Arc<str>| self.files.iter().position(|x| x == f).unwrap_or(usize::MAX);
        all.sort_by_key(|d| (order(&d.file), d.line, d.col));
        (engine, all)
    }

    fn expand_list(
        &self,
        i: usize,
        done: &mut FxHashMap<String, Vec<String>>,
        visiting: &mut Vec<usize>,
    ) -> Vec<String> {
        let Some(l) = self.lists.get(i) else {
            return Vec::new();
        };
        if let Some(v) = done.get(&l.name) {
            return v.clone();
        }
        if visiting.contains(&i) {
            return l.items.clone();
        }
        visiting.push(i);
        let mut out = Vec::new();
        for item in &l.items {
            match self.list_idx.get(item).copied().filter(|&j| j != i) {
                Some(j) if self.lists.get(j).is_some_and(|r| r.index < l.visibility) => {
                    let inner = self.expand_list(j, done, visiting);
                    // Lists of lists can double at every level: stop at a sane size.
                    let room = MAX_LIST_ITEMS.saturating_sub(out.len());
                    out.extend(inner.into_iter().take(room));
                }
                _ if out.len() < MAX_LIST_ITEMS => out.push(item.clone()),
                _ => {}
            }
        }
        visiting.pop();
        done.insert(l.name.clone(), out.clone());
        out
    }
}

/// Maps a byte offset in a scalar's text to a position, and quotes the text around it.
pub(crate) fn locate(text: &str, start: Pos, offset: usize) -> (Pos, String) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let newlines = before.matches('\n').count() as u32;
    let pos = match before.rfind('\n') {
        None => Pos { line: start.line, col: start.col + before.chars().count() as u32 },
        Some(nl) => Pos {
            line: start.line + newlines,
            col: start.col + before.get(nl + 1..).map_or(0, |s| s.chars().count()) as u32,
        },
    };
    let from = text.get(..offset).map_or(0, |b| b.char_indices().rev().nth(20).map_or(0, |(i, _)| i));
    let to = text.get(offset..).map_or(text.len(), |a| offset + a.char_indices().nth(20).map_or(a.len(), |(i, _)| i));
    let near = text.get(from..to).unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
    let snippet = if near.is_empty() { String::new() } else { format!(" (near `{near}`)") };
    (pos, snippet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_points_into_text() {
        let (p, s) = locate("a and\nb = c", Pos { line: 3, col: 5 }, 8);
        assert_eq!(p, Pos { line: 4, col: 7 });
        assert!(s.contains("b = c"));
    }
}
