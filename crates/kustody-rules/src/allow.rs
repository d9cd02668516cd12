//! Allow-lists that hold in real clusters: who may do what without a finding.
//!
//! Falco's own answer to noise is an exact-name list per rule (`user_known_*`), which misses
//! every Helm release (`my-release-kube-prometheus-stack-operator`) and every operator installed
//! into a namespace other than its chart's default. An allow entry here names identities by
//! glob, the rules it quiets, and the exact actions the identity is expected to take:
//!
//! ```yaml
//! - allow: prometheus-operator
//!   desc: reads and writes the secrets it renders Prometheus and Alertmanager configs into
//!   identities: ["system:serviceaccount:*:*prometheus-operator", "system:serviceaccount:*:*kube-prometheus-stack-operator"]
//!   rules: [kustody Secret Read by Unexpected Service Account, kustody Secrets Listed*]
//!   resources: [secrets, configmaps]     # resource, or resource/subresource; globs
//!   verbs: [get, list, watch]            # empty or absent: any verb
//!   namespaces: ["*"]                    # the target's namespace; absent: any (cluster-scoped too)
//!   names: ["prometheus-*"]              # the target's name; absent: any
//!   max_priority: WARNING                # never quiet a rule above this (default: WARNING)
//! ```
//!
//! A match is quiet only when every given dimension holds. `identities` and `rules` are
//! required: an entry never quiets everything, and a CRITICAL rule is never quieted unless the
//! entry says `max_priority: CRITICAL` on purpose. A later entry with the same name replaces an
//! earlier one; an entry with only `enabled: false` switches a catalogue entry off.
//!
//! Every quieted match is counted by the entry's name ([`AllowList::suppression`] returns it),
//! so the summary shows what was not reported and why: nothing disappears unseen.
//!
//! **Trust:** a glob on a service-account name trusts whoever can create service accounts with
//! such a name. Entries are therefore narrow in what they quiet (the operator's documented
//! resources and verbs), and creating a service account and binding it a role is itself
//! visible to the RBAC rules.

use std::sync::Arc;

use kustody_model::yaml::{self, Node, Pos};
use kustody_model::{Event, Priority};

use crate::diag::{Diagnostic, Severity};
use crate::fnmatch::Pattern;

/// One allow entry, compiled.
#[derive(Debug, Clone)]
pub struct AllowEntry {
    pub name: String,
    pub desc: String,
    pub enabled: bool,
    pub identities: Vec<String>,
    pub rules: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
    pub namespaces: Option<Vec<String>>,
    pub names: Option<Vec<String>>,
    pub max_priority: Priority,
    pub file: Arc<str>,
    pub line: u32,
    identity_pats: Vec<Pattern>,
    rule_pats: Vec<Pattern>,
    resource_pats: Vec<Pattern>,
    namespace_pats: Option<Vec<Pattern>>,
    name_pats: Option<Vec<Pattern>>,
}

/// What a rule looks like to the allow-list.
#[derive(Debug, Clone, Copy)]
pub struct RuleRef<'a> {
    pub name: &'a str,
    pub priority: Priority,
}

/// The loaded allow entries, in file order.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    entries: Vec<AllowEntry>,
}

const KEYS: &[&str] =
    &["allow", "desc", "enabled", "identities", "rules", "resources", "verbs", "namespaces", "names", "max_priority"];

type Res<T> = Result<T, (Pos, String)>;

impl AllowList {
    /// Loads allow files in order (the built-in catalogue first, then the user's). Never
    /// aborts on one bad entry: it is skipped with a diagnostic naming file:line:column.
    pub fn load(files: &[(String, String)]) -> (AllowList, Vec<Diagnostic>) {
        let mut list = AllowList::default();
        let mut diags = Vec::new();
        for (name, text) in files {
            let file: Arc<str> = Arc::from(name.as_str());
            let docs = match yaml::parse(text) {
                Ok(d) => d,
                Err(e) => {
                    diags.push(diag(&file, e.pos, None, e.to_string()));
                    continue;
                }
            };
            for doc in docs {
                let items = match doc {
                    Node::Seq { items, .. } => items,
                    n if n.is_null() => continue,
                    other => {
                        diags.push(diag(&file, other.pos(), None, "an allow file is a list of `allow` entries".into()));
                        continue;
                    }
                };
                for item in &items {
                    let label = item.get("allow").and_then(Node::as_str).map(|n| format!("allow `{n}`"));
                    if let Err((pos, msg)) = list.entry(&file, item, &mut diags) {
                        diags.push(diag(&file, pos, label, msg));
                    }
                }
            }
        }
        (list, diags)
    }

    fn entry(&mut self, file: &Arc<str>, item: &Node, diags: &mut Vec<Diagnostic>) -> Res<()> {
        let Node::Map { entries, .. } = item else {
            return Err((item.pos(), format!("an allow entry is a mapping, not {}", item.kind())));
        };
        let name_node = item.get("allow").ok_or((item.pos(), "missing `allow` (the entry's name)".to_owned()))?;
        let name = scalar(name_node, "allow")?;
        for (k, _) in entries {
            if let Some(k) = k.as_str().filter(|k| !KEYS.contains(k)) {
                diags.push(Diagnostic {
                    severity: Severity::Warning,
                    file: file.clone(),
                    line: item.pos().line,
                    col: item.pos().col,
                    item: Some(format!("allow `{name}`")),
                    message: format!("unknown key `{k}` ignored"),
                });
            }
        }
        let enabled = match item.get("enabled").map(Node::as_str) {
            None => true,
            Some(Some("true")) => true,
            Some(Some("false")) => false,
            Some(_) => return Err((item.pos(), "`enabled` must be true or false".into())),
        };
        let existing = self.entries.iter().position(|e| e.name == name);
        // `- allow: NAME` + `enabled: false` alone switches an earlier entry off
        if item.get("identities").is_none() && item.get("rules").is_none() {
            return match existing.and_then(|i| self.entries.get_mut(i)) {
                Some(e) => {
                    e.enabled = enabled;
                    Ok(())
                }
                None => Err((item.pos(), format!("no earlier allow entry `{name}` to switch, and no `identities`"))),
            };
        }
        let need = |key: &str| item.get(key).ok_or((item.pos(), format!("missing required key `{key}`")));
        let identities = strings(need("identities")?, "identities")?;
        let rules = strings(need("rules")?, "rules")?;
        if identities.is_empty() {
            return Err((
                item.pos(),
                "`identities` needs at least one pattern (an entry never allows everyone)".into(),
            ));
        }
        if rules.is_empty() {
            return Err((item.pos(), "`rules` needs at least one rule name or pattern".into()));
        }
        if identities.iter().any(|i| i.chars().all(|c| c == '*')) {
            return Err((item.pos(), "an identity pattern of only `*` would allow everyone".into()));
        }
        let opt = |key: &str| item.get(key).map(|n| strings(n, key)).transpose();
        let max_priority = match item.get("max_priority") {
            None => Priority::Warning,
            Some(n) => scalar(n, "max_priority")?.parse::<Priority>().map_err(|e| (n.pos(), e.to_string()))?,
        };
        let pats = |v: &[String], fold: bool| v.iter().map(|p| Pattern::new(p, fold)).collect::<Vec<_>>();
        let resources = opt("resources")?.unwrap_or_default();
        let verbs = opt("verbs")?.unwrap_or_default();
        let namespaces = opt("namespaces")?;
        let names = opt("names")?;
        let entry = AllowEntry {
            desc: item.get("desc").and_then(Node::as_str).unwrap_or("").trim().to_owned(),
            enabled,
            identity_pats: pats(&identities, false),
            rule_pats: pats(&rules, false),
            resource_pats: pats(&resources, false),
            namespace_pats: namespaces.as_deref().map(|n| pats(n, false)),
            name_pats: names.as_deref().map(|n| pats(n, false)),
            identities,
            rules,
            resources,
            verbs,
            namespaces,
            names,
            max_priority,
            file: file.clone(),
            line: item.pos().line,
            name,
        };
        match existing.and_then(|i| self.entries.get_mut(i)) {
            Some(e) => *e = entry,
            None => self.entries.push(entry),
        }
        Ok(())
    }

    /// All entries, enabled or not.
    pub fn entries(&self) -> &[AllowEntry] {
        &self.entries
    }

    /// The entry that quiets this match, if any (its index into [`AllowList::entries`]).
    pub fn suppression(&self, rule: RuleRef<'_>, ev: &Event<'_>) -> Option<usize> {
        let user = ev.user().and_then(|u| u.username.as_deref())?;
        self.entries.iter().position(|e| e.applies_to(rule) && e.quiets(user, ev))
    }

    /// For each rule, the entries that may quiet it (enabled, naming it, at its priority): the
    /// per-match check then looks at those only. Rule names are matched once, here.
    pub fn index(&self, rules: &[RuleRef<'_>]) -> Vec<Vec<usize>> {
        rules
            .iter()
            .map(|r| self.entries.iter().enumerate().filter(|(_, e)| e.applies_to(*r)).map(|(i, _)| i).collect())
            .collect()
    }

    /// [`AllowList::suppression`] among the entries [`AllowList::index`] gave for the rule.
    pub fn suppression_among(&self, entries: &[usize], ev: &Event<'_>) -> Option<usize> {
        if entries.is_empty() {
            return None;
        }
        let user = ev.user().and_then(|u| u.username.as_deref())?;
        entries.iter().copied().find(|&i| self.entries.get(i).is_some_and(|e| e.quiets(user, ev)))
    }
}

impl AllowEntry {
    fn applies_to(&self, rule: RuleRef<'_>) -> bool {
        let above = rule.priority.at_least(self.max_priority) && rule.priority != self.max_priority;
        self.enabled && !above && self.rule_pats.iter().any(|p| p.matches(rule.name))
    }

    fn quiets(&self, user: &str, ev: &Event<'_>) -> bool {
        if !self.identity_pats.iter().any(|p| p.matches(user)) {
            return false;
        }
        let verb = ev.verb().unwrap_or("");
        if !self.verbs.is_empty() && !self.verbs.iter().any(|v| v == verb) {
            return false;
        }
        let obj = ev.object_ref();
        if !self.resource_pats.is_empty() {
            let resource = obj.and_then(|o| o.resource.as_deref()).unwrap_or("");
            let full = match obj.and_then(|o| o.subresource.as_deref()) {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_owned(),
            };
            if !self.resource_pats.iter().any(|p| p.matches(&full)) {
                return false;
            }
        }
        if let Some(ns) = &self.namespace_pats {
            let Some(target) = obj.and_then(|o| o.namespace.as_deref()) else { return false };
            if !ns.iter().any(|p| p.matches(target)) {
                return false;
            }
        }
        if let Some(names) = &self.name_pats {
            let Some(target) = obj.and_then(|o| o.name.as_deref()) else { return false };
            if !names.iter().any(|p| p.matches(target)) {
                return false;
            }
        }
        true
    }
}

/// A rule-name or identity pattern as allow entries compile it (fnmatch, case-sensitive).
pub fn glob(pattern: &str) -> Pattern {
    Pattern::new(pattern, false)
}

fn diag(file: &Arc<str>, pos: Pos, item: Option<String>, message: String) -> Diagnostic {
    Diagnostic { severity: Severity::Error, file: file.clone(), line: pos.line, col: pos.col, item, message }
}

fn scalar(node: &Node, key: &str) -> Res<String> {
    node.as_str().map(str::to_owned).ok_or((node.pos(), format!("`{key}` must be a string, not {}", node.kind())))
}

fn strings(node: &Node, key: &str) -> Res<Vec<String>> {
    match node {
        Node::Seq { items, .. } => items.iter().map(|i| scalar(i, key)).collect(),
        n if n.is_null() => Ok(Vec::new()),
        n if n.as_str().is_some() => Ok(vec![scalar(n, key)?]),
        other => Err((other.pos(), format!("`{key}` must be a list, not {}", other.kind()))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests fail by panicking")]
    use super::*;

    const CATALOGUE: &str = r#"
- allow: prometheus-operator
  desc: reads secrets
  identities: ["system:serviceaccount:*:*prometheus-operator", "system:serviceaccount:*:*kube-prometheus-stack-operator"]
  rules: [Secret Read*, Secrets Listed*]
  resources: [secrets]
  verbs: [get, list, watch]
- allow: webhooks
  identities: ["system:serviceaccount:*:*cainjector"]
  rules: [Admission Webhook Changed]
  resources: [validatingwebhookconfigurations, mutatingwebhookconfigurations]
  verbs: [update, patch]
  names: ["cert-manager-*"]
"#;

    fn ev(user: &str, verb: &str, resource: &str, ns: Option<&str>, name: &str) -> String {
        let ns = ns.map(|n| format!(r#","namespace":"{n}""#)).unwrap_or_default();
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"a","stage":"ResponseComplete","verb":"{verb}","user":{{"username":"{user}"}},"objectRef":{{"resource":"{resource}","name":"{name}"{ns}}}}}"#
        )
    }

    fn quiet(list: &AllowList, rule: &str, prio: Priority, text: &str) -> Option<String> {
        let e = Event::parse(text).unwrap();
        list.suppression(RuleRef { name: rule, priority: prio }, &e).map(|i| list.entries()[i].name.clone())
    }

    #[test]
    fn helm_release_prefixes_and_other_namespaces_are_allowed_for_the_expected_actions_only() {
        let (list, diags) = AllowList::load(&[("c.yaml".into(), CATALOGUE.into())]);
        assert!(diags.is_empty(), "{diags:?}");
        let helm = "system:serviceaccount:monitoring:my-release-kube-prometheus-stack-operator";
        let w = Priority::Warning;
        let read = ev(helm, "get", "secrets", Some("apps"), "x");
        assert_eq!(
            quiet(&list, "Secret Read by Unexpected Service Account", w, &read).as_deref(),
            Some("prometheus-operator")
        );
        let plain = ev("system:serviceaccount:obs:prometheus-operator", "list", "secrets", Some("obs"), "");
        assert!(quiet(&list, "Secrets Listed by Service Account or Cluster-wide", w, &plain).is_some());
        // not its verb, not its rule, not its identity, not below the cap
        assert!(quiet(
            &list,
            "Secret Read by Unexpected Service Account",
            w,
            &ev(helm, "delete", "secrets", None, "x")
        )
        .is_none());
        assert!(quiet(&list, "Exec by Service Account", w, &read).is_none());
        assert!(quiet(
            &list,
            "Secret Read by Unexpected Service Account",
            w,
            &ev("system:serviceaccount:apps:web", "get", "secrets", None, "x")
        )
        .is_none());
        assert!(quiet(&list, "Secret Read by Unexpected Service Account", Priority::Critical, &read).is_none());
        // names narrow it
        let inj = "system:serviceaccount:certs:cert-manager-cainjector";
        let hook = ev(inj, "patch", "validatingwebhookconfigurations", None, "cert-manager-webhook");
        assert!(quiet(&list, "Admission Webhook Changed", w, &hook).is_some());
        let other = ev(inj, "patch", "validatingwebhookconfigurations", None, "gatekeeper-validating");
        assert!(quiet(&list, "Admission Webhook Changed", w, &other).is_none());
    }

    #[test]
    fn user_files_switch_entries_off_and_bad_entries_are_diagnosed() {
        let off = "- allow: prometheus-operator\n  enabled: false\n";
        let (list, diags) = AllowList::load(&[("c.yaml".into(), CATALOGUE.into()), ("mine.yaml".into(), off.into())]);
        assert!(diags.is_empty(), "{diags:?}");
        let helm = "system:serviceaccount:monitoring:prometheus-operator";
        assert!(quiet(
            &list,
            "Secret Read by Unexpected Service Account",
            Priority::Warning,
            &ev(helm, "get", "secrets", None, "x")
        )
        .is_none());
        let bad = "- allow: everyone\n  identities: ['*']\n  rules: ['*']\n- allow: norules\n  identities: [a]\n  rules: []\n- allow: ghost\n  enabled: false\n- nope\n";
        let (list, diags) = AllowList::load(&[("bad.yaml".into(), bad.into())]);
        assert!(list.entries().is_empty());
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 4, "{text:#?}");
        assert!(text[0].starts_with("bad.yaml:1:") && text[0].contains("allow everyone"), "{text:?}");
        assert!(text[1].contains("at least one rule"), "{text:?}");
        assert!(text[2].contains("no earlier allow entry `ghost`"), "{text:?}");
        assert!(text[3].contains("mapping"), "{text:?}");
    }
}
