//! `correlation` items (a kustody extension; see [`crate::correlate`]): read and checked here,
//! compiled with the rules in [`Loader::finish`].

use std::sync::Arc;

use super::*;

impl Loader {
    /// A `correlation` item (kustody extension; see [`crate::correlate`]). Long because it
    /// checks each key of the item in turn, in the order the diagnostics should come.
    pub(super) fn correlation(&mut self, file: &Arc<str>, item: &Node) -> Res<()> {
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
}
