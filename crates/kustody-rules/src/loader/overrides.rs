//! How a later item changes an earlier one of the same name: `override: {key: append|replace}`
//! and the deprecated `append: true`, for lists and macros ([`Mode`]) and for rules (including
//! appended exceptions).

use std::sync::Arc;

use super::*;

impl Loader {
    /// Reads `append` / `override` for a macro or list.
    pub(super) fn mode(
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

    pub(super) fn override_rule(&mut self, file: &Arc<str>, item: &Node, ov: &Node, i: usize) -> Res<()> {
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

    pub(super) fn append_exceptions(&mut self, i: usize, new: Vec<ExceptionDef>) -> Res<()> {
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
}
