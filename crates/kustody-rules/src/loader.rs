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

use std::sync::Arc;

use kustody_model::Priority;
use rustc_hash::FxHashMap;

use crate::cond::{self, Ast};
use crate::diag::{Diagnostic, Severity};
use crate::engine::{Engine, EngineOptions};
use crate::yaml::{self, Node, Pos};

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
            Err(e) => self.diag(Severity::Error, file, det_pos, title, e),
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

    /// Reads `append` / `override` for a macro or list.
    fn mode(
        &mut self,
        file: &Arc<str>,
        item: &Node,
        name: &str,
        kind: &str,
        keys: &[&str],
        appendable: &[&str],
    ) -> Res<Mode> {
        let append = item.get("append").map(|n| boolean(n, "append")).transpose()?.unwrap_or(false);
        let Some(ov) = item.get("override") else {
            if append {
                self.diag(
                    Severity::Warning,
                    file,
                    item.pos(),
                    Some(format!("{kind} `{name}`")),
                    "`append: true` is deprecated; use `override: {...: append}`",
                );
            }
            return Ok(if append { Mode::Append } else { Mode::Define });
        };
        if append {
            return Err((ov.pos(), "`append` and `override` cannot be used together".into()));
        }
        let Node::Map { entries, .. } = ov else {
            return Err((ov.pos(), "`override` must be a mapping of key: append|replace".into()));
        };
        let mut out = Mode::Replace;
        for (k, v) in entries {
            let key = scalar(k, "override")?;
            let how = scalar(v, &key)?;
            if !keys.contains(&key.as_str()) {
                return Err((k.pos(), format!("`{key}` cannot be overridden on a {kind}")));
            }
            match how.as_str() {
                "append" if appendable.contains(&key.as_str()) => out = Mode::Append,
                "replace" => {}
                _ => return Err((v.pos(), format!("`{key}` override must be `append` or `replace`, not `{how}`"))),
            }
        }
        Ok(out)
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

    /// A `correlation` item (kustody extension; see [`crate::correlate`]).
    fn correlation(&mut self, file: &Arc<str>, item: &Node) -> Res<()> {
        const KEYS: &[&str] = &[
            "correlation",
            "desc",
            "by",
            "window",
            "sequence",
            "steps",
            "count",
            "priority",
            "output",
            "tags",
            "enabled",
        ];
        let name_node = item.get("correlation").ok_or((item.pos(), "missing name".to_owned()))?;
        let name = scalar(name_node, "correlation")?;
        let label = Some(format!("correlation `{name}`"));
        if let Node::Map { entries, .. } = item {
            for (k, _) in entries {
                if let Some(k) = k.as_str().filter(|k| !KEYS.contains(k)) {
                    self.diag(Severity::Warning, file, item.pos(), label.clone(), format!("unknown key `{k}` ignored"));
                }
            }
        }
        if self.rule_idx.contains_key(&name) || self.correlations.iter().any(|c| c.name == name) {
            return Err((name_node.pos(), format!("a rule or correlation named `{name}` already exists")));
        }
        let need = |key: &str| item.get(key).ok_or((item.pos(), format!("missing required key `{key}`")));
        let desc = scalar(need("desc")?, "desc")?;
        let prio_node = need("priority")?;
        let priority =
            scalar(prio_node, "priority")?.parse::<Priority>().map_err(|e| (prio_node.pos(), e.to_string()))?;
        let output = scalar(need("output")?, "output")?;
        let window_node = need("window")?;
        let window = scalar(window_node, "window")?;
        let window_ns = crate::correlate::parse_window(&window)
            .ok_or((window_node.pos(), format!("invalid window `{window}` (a positive number with s, m, h or d)")))?;
        let by = item.get("by").map(|n| strings(n, "by")).transpose()?.unwrap_or_else(|| vec!["ka.user.name".into()]);
        if by.is_empty() {
            return Err((item.pos(), "`by` needs at least one field".into()));
        }
        for f in &by {
            if crate::fields::resolve(f, None).is_err() {
                return Err((item.get("by").map_or(item.pos(), Node::pos), format!("unknown field `{f}` in `by`")));
            }
        }
        // The output may use the grouping fields and %kustody.steps only: a finding spans events.
        let mut rest = output.clone();
        let mut by_sorted = by.clone();
        by_sorted.sort_by_key(|b| std::cmp::Reverse(b.len()));
        for f in by_sorted.iter().map(|f| format!("%{f}")).chain(["%kustody.steps".to_owned()]) {
            rest = rest.replace(&f, "");
        }
        if let Some(i) = rest.find('%').filter(|&i| rest.get(i + 1..).is_some_and(|r| r.contains('.'))) {
            let field: String =
                rest.get(i..).unwrap_or("").chars().take_while(|c| !c.is_whitespace() && *c != ')').collect();
            return Err((
                item.get("output").map_or(item.pos(), Node::text_start),
                format!("a correlation's output can use its `by` fields and %kustody.steps, not `{field}`"),
            ));
        }
        let tags = item.get("tags").map(|n| strings(n, "tags")).transpose()?.unwrap_or_default();
        let enabled = item.get("enabled").map(|n| boolean(n, "enabled")).transpose()?.unwrap_or(true);
        let count = item
            .get("count")
            .map(|n| {
                scalar(n, "count")
                    .and_then(|c| c.parse::<u32>().map_err(|_| (n.pos(), "`count` must be a positive integer".into())))
            })
            .transpose()?;
        // `sequence`: the steps in this order; `steps`: all of them, in any order.
        let (seq, ordered, key) = match (item.get("sequence"), item.get("steps")) {
            (Some(_), Some(s)) => {
                return Err((s.pos(), "give either `sequence` (in order) or `steps` (any order), not both".into()))
            }
            (Some(s), None) => (s, true, "sequence"),
            (None, Some(s)) => (s, false, "steps"),
            (None, None) => return Err((item.pos(), "missing required key `sequence` (or `steps`)".into())),
        };
        let Node::Seq { items: steps_nodes, .. } = seq else {
            return Err((seq.pos(), format!("`{key}` must be a list of steps")));
        };
        if steps_nodes.is_empty() || steps_nodes.len() > 16 {
            return Err((seq.pos(), format!("`{key}` needs 1 to 16 steps")));
        }
        if count.is_some() != (steps_nodes.len() == 1) && count.is_some() {
            return Err((seq.pos(), "a `count` threshold takes exactly one step".into()));
        }
        if count.is_none() && steps_nodes.len() < 2 {
            return Err((seq.pos(), format!("`{key}` needs at least two steps (or a `count` threshold)")));
        }
        let mut steps = Vec::new();
        for (i, st) in steps_nodes.iter().enumerate() {
            let names = match st {
                n if n.as_str().is_some() => vec![scalar(n, key)?],
                Node::Map { .. } => {
                    if let Some(r) = st.get("rule") {
                        vec![scalar(r, "rule")?]
                    } else if let Some(r) = st.get("rules") {
                        strings(r, "rules")?
                    } else if let Some(c) = st.get("condition") {
                        let hidden = format!("{name} / step {}", i + 1);
                        let def = RuleDef {
                            name: hidden.clone(),
                            desc: format!("step {} of correlation `{name}`", i + 1),
                            condition: scalar(c, "condition")?,
                            cond_loc: Loc { file: file.clone(), pos: c.text_start() },
                            output: "%ka.auditid".into(),
                            output_loc: Loc { file: file.clone(), pos: c.text_start() },
                            priority: Priority::Debug,
                            source: K8S_AUDIT.to_owned(),
                            tags: Vec::new(),
                            enabled,
                            exceptions: Vec::new(),
                            skip_if_unknown_filter: false,
                            hidden: true,
                            loc: Loc { file: file.clone(), pos: st.pos() },
                        };
                        self.rule_idx.insert(hidden.clone(), self.rules.len());
                        self.rules.push(def);
                        vec![hidden]
                    } else {
                        return Err((
                            st.pos(),
                            "a step is a rule name, or a map with `rule`, `rules` or `condition`".into(),
                        ));
                    }
                }
                other => return Err((other.pos(), format!("a step is a rule name or a map, not {}", other.kind()))),
            };
            if names.is_empty() {
                return Err((st.pos(), "a step needs at least one rule".into()));
            }
            steps.push(names);
        }
        self.correlations.push(crate::correlate::CorrDef {
            name,
            desc: desc.trim().to_owned(),
            by,
            window,
            window_ns,
            steps,
            ordered,
            count,
            priority,
            tags,
            output,
            enabled,
            loc: Loc { file: file.clone(), pos: item.pos() },
        });
        Ok(())
    }

    fn override_rule(&mut self, file: &Arc<str>, item: &Node, ov: &Node, i: usize) -> Res<()> {
        let Node::Map { entries, .. } = ov else {
            return Err((ov.pos(), "`override` must be a mapping of key: append|replace".into()));
        };
        let mut listed = Vec::new();
        for (k, v) in entries {
            let key = scalar(k, "override")?;
            let how = scalar(v, &key)?;
            let ok = match how.as_str() {
                "append" => RULE_APPENDABLE.contains(&key.as_str()),
                "replace" => RULE_OVERRIDABLE.contains(&key.as_str()),
                _ => false,
            };
            if !ok {
                return Err((v.pos(), format!("`{key}` cannot be overridden with `{how}`")));
            }
            let value = item
                .get(&key)
                .ok_or((k.pos(), format!("an override for `{key}` was specified but `{key}` is not defined")))?;
            listed.push(key.clone());
            let append = how == "append";
            match key.as_str() {
                "condition" | "output" | "desc" => {
                    let text = scalar(value, &key)?;
                    let loc = Loc { file: file.clone(), pos: value.text_start() };
                    let Some(r) = self.rules.get_mut(i) else {
                        continue;
                    };
                    let slot = match key.as_str() {
                        "condition" => &mut r.condition,
                        "output" => &mut r.output,
                        _ => &mut r.desc,
                    };
                    if append {
                        if !text.trim().is_empty() {
                            *slot = format!("{} {}", slot, text);
                        }
                    } else {
                        *slot = text;
                        match key.as_str() {
                            "condition" => r.cond_loc = loc,
                            "output" => r.output_loc = loc,
                            _ => {}
                        }
                    }
                }
                "priority" => {
                    let t = scalar(value, "priority")?;
                    let p = t.parse::<Priority>().map_err(|e| (value.pos(), e.to_string()))?;
                    if let Some(r) = self.rules.get_mut(i) {
                        r.priority = p;
                    }
                }
                "tags" => {
                    let tags = strings(value, "tags")?;
                    if let Some(r) = self.rules.get_mut(i) {
                        if append {
                            for t in tags {
                                if !r.tags.contains(&t) {
                                    r.tags.push(t);
                                }
                            }
                        } else {
                            r.tags = tags;
                        }
                    }
                }
                "enabled" => {
                    let v = boolean(value, "enabled")?;
                    if let Some(r) = self.rules.get_mut(i) {
                        r.enabled = v;
                    }
                }
                "skip-if-unknown-filter" => {
                    let v = boolean(value, &key)?;
                    if let Some(r) = self.rules.get_mut(i) {
                        r.skip_if_unknown_filter = v;
                    }
                }
                "exceptions" => {
                    let exc = exceptions(file, value)?;
                    if append {
                        self.append_exceptions(i, exc)?;
                    } else if let Some(r) = self.rules.get_mut(i) {
                        r.exceptions = exc;
                    }
                }
                _ => {} // accepted for compatibility, no effect on audit rules
            }
        }
        for key in RULE_OVERRIDABLE {
            if item.get(key).is_some() && !listed.iter().any(|l| l == key) {
                return Err((item.pos(), format!("unexpected key `{key}`: no corresponding entry under `override`")));
            }
        }
        Ok(())
    }

    fn append_exceptions(&mut self, i: usize, new: Vec<ExceptionDef>) -> Res<()> {
        let Some(r) = self.rules.get_mut(i) else {
            return Ok(());
        };
        for e in new {
            match r.exceptions.iter_mut().find(|x| x.name == e.name) {
                Some(existing) => {
                    if e.fields.is_some() || e.comps.is_some() {
                        return Err((
                            e.loc.pos,
                            format!(
                                "exception `{}` exists: an append may only add values, not fields or comps",
                                e.name
                            ),
                        ));
                    }
                    existing.values.extend(e.values);
                }
                None => {
                    if e.fields.is_none() || e.values.is_empty() {
                        return Err((e.loc.pos, format!("new exception `{}` needs `fields` and `values`", e.name)));
                    }
                    r.exceptions.push(e);
                }
            }
        }
        Ok(())
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

fn exceptions(file: &Arc<str>, node: &Node) -> Res<Vec<ExceptionDef>> {
    let Node::Seq { items, .. } = node else {
        if node.is_null() {
            return Ok(Vec::new());
        }
        return Err((node.pos(), "`exceptions` must be a list".into()));
    };
    items
        .iter()
        .map(|e| {
            let name = scalar(e.get("name").ok_or((e.pos(), "exception without `name`".to_owned()))?, "name")?;
            let fields_or = |key: &str| -> Res<Option<ExcFields>> {
                Ok(match e.get(key) {
                    None => None,
                    Some(n @ Node::Scalar { .. }) => Some(ExcFields::Single(scalar(n, key)?)),
                    Some(n) => Some(ExcFields::Multi(strings(n, key)?)),
                })
            };
            let values = match e.get("values") {
                None => Vec::new(),
                Some(Node::Seq { items, .. }) => items
                    .iter()
                    .map(|v| match v {
                        Node::Seq { items, .. } => items
                            .iter()
                            .map(|x| match x {
                                Node::Seq { .. } => strings(x, "values").map(ExcItem::List),
                                other => scalar(other, "values").map(ExcItem::Scalar),
                            })
                            .collect::<Res<Vec<_>>>(),
                        other => scalar(other, "values").map(|s| vec![ExcItem::Scalar(s)]),
                    })
                    .collect::<Res<Vec<_>>>()?,
                Some(n) if n.is_null() => Vec::new(),
                Some(n) => return Err((n.pos(), "exception `values` must be a list".into())),
            };
            Ok(ExceptionDef {
                name,
                fields: fields_or("fields")?,
                comps: fields_or("comps")?,
                values,
                loc: Loc { file: file.clone(), pos: e.pos() },
            })
        })
        .collect()
}

/// Text needing quotes inside a condition.
fn quote(v: &str) -> String {
    let needs = v.is_empty()
        || v.bytes().any(|b| {
            b.is_ascii_whitespace() || matches!(b, b'(' | b')' | b',' | b'=' | b'<' | b'>' | b'!' | b'"' | b'\'')
        });
    if needs {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        v.to_owned()
    }
}

fn is_list_op(c: &str) -> bool {
    matches!(c, "in" | "intersects" | "pmatch")
}

/// The condition text one exception adds (`and not <this>`), in Falco's shape.
pub(crate) fn exception_text(e: &ExceptionDef) -> Result<Option<String>, String> {
    if e.values.is_empty() {
        return Ok(None);
    }
    match &e.fields {
        Some(ExcFields::Single(field)) => {
            let comp = match &e.comps {
                None => "in".to_owned(),
                Some(ExcFields::Single(c)) => c.trim().to_owned(),
                Some(ExcFields::Multi(_)) => {
                    return Err(format!("exception `{}`: `comps` must be a single operator when `fields` is", e.name))
                }
            };
            if !is_list_op(&comp) {
                return Err(format!(
                    "exception `{}`: with a single field, `comps` must be in, intersects or pmatch, not `{comp}`",
                    e.name
                ));
            }
            let mut vals = Vec::new();
            for tuple in &e.values {
                for v in tuple {
                    match v {
                        ExcItem::Scalar(s) => vals.push(quote(s)),
                        ExcItem::List(_) => {
                            return Err(format!(
                                "exception `{}`: values must be scalars when `fields` is a single field",
                                e.name
                            ))
                        }
                    }
                }
            }
            Ok(Some(format!("({field} {comp} ({}))", vals.join(", "))))
        }
        Some(ExcFields::Multi(fields)) => {
            let comps: Vec<String> = match &e.comps {
                None => vec!["=".to_owned(); fields.len()],
                Some(ExcFields::Multi(c)) => c.iter().map(|s| s.trim().to_owned()).collect(),
                Some(ExcFields::Single(c)) => vec![c.trim().to_owned()],
            };
            if comps.len() != fields.len() {
                return Err(format!("exception `{}`: {} fields but {} comps", e.name, fields.len(), comps.len()));
            }
            let mut tuples = Vec::new();
            for tuple in &e.values {
                if tuple.len() != fields.len() {
                    return Err(format!(
                        "exception `{}`: a value has {} items for {} fields",
                        e.name,
                        tuple.len(),
                        fields.len()
                    ));
                }
                let parts: Vec<String> = fields
                    .iter()
                    .zip(&comps)
                    .zip(tuple)
                    .map(|((f, c), v)| {
                        let val = match v {
                            ExcItem::List(items) => {
                                format!("({})", items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", "))
                            }
                            ExcItem::Scalar(s) if is_list_op(c) && !s.starts_with('(') => {
                                format!("({})", quote(s))
                            }
                            ExcItem::Scalar(s) if is_list_op(c) => s.clone(),
                            ExcItem::Scalar(s) => quote(s),
                        };
                        format!("{f} {c} {val}")
                    })
                    .collect();
                tuples.push(format!("({})", parts.join(" and ")));
            }
            Ok(Some(format!("({})", tuples.join(" or "))))
        }
        None => Err(format!("exception `{}` has no `fields`", e.name)),
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

impl ExcFields {
    #[cfg(test)]
    fn single(s: &str) -> Self {
        ExcFields::Single(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exc(fields: ExcFields, comps: Option<ExcFields>, values: Vec<Vec<ExcItem>>) -> ExceptionDef {
        ExceptionDef {
            name: "e".into(),
            fields: Some(fields),
            comps,
            values,
            loc: Loc { file: "f".into(), pos: Pos::default() },
        }
    }

    #[test]
    fn exception_texts() {
        let e = exc(
            ExcFields::Multi(vec!["ka.user.name".into(), "ka.target.namespace".into()]),
            Some(ExcFields::Multi(vec!["endswith".into(), "in".into()])),
            vec![vec![ExcItem::Scalar("@robot.example".into()), ExcItem::List(vec!["a".into(), "b c".into()])]],
        );
        assert_eq!(
            exception_text(&e).unwrap().unwrap(),
            "((ka.user.name endswith @robot.example and ka.target.namespace in (a, \"b c\")))"
        );
        let e = exc(
            ExcFields::single("ka.verb"),
            None,
            vec![vec![ExcItem::Scalar("get".into())], vec![ExcItem::Scalar("list".into())]],
        );
        assert_eq!(exception_text(&e).unwrap().unwrap(), "(ka.verb in (get, list))");
        let e =
            exc(ExcFields::single("ka.verb"), Some(ExcFields::single("=")), vec![vec![ExcItem::Scalar("get".into())]]);
        assert!(exception_text(&e).is_err());
    }

    #[test]
    fn locate_points_into_text() {
        let (p, s) = locate("a and\nb = c", Pos { line: 3, col: 5 }, 8);
        assert_eq!(p, Pos { line: 4, col: 7 });
        assert!(s.contains("b = c"));
    }
}
