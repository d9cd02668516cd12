//! Rule `exceptions`: read from YAML, and turned into the condition text Falco appends to the
//! rule's condition (`and not (...)`).

use std::sync::Arc;

use super::*;

pub(super) fn exceptions(file: &Arc<str>, node: &Node) -> Res<Vec<ExceptionDef>> {
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

/// Why an exception cannot become condition text. Every variant names the exception.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExceptionError {
    #[error("exception `{0}` has no `fields`")]
    NoFields(String),
    #[error("exception `{0}`: `comps` must be a single operator when `fields` is")]
    CompsNotSingle(String),
    #[error("exception `{name}`: with a single field, `comps` must be in, intersects or pmatch, not `{comp}`")]
    SingleFieldOperator { name: String, comp: String },
    #[error("exception `{0}`: values must be scalars when `fields` is a single field")]
    ListValueForSingleField(String),
    #[error("exception `{name}`: {fields} fields but {comps} comps")]
    CompsCount { name: String, fields: usize, comps: usize },
    #[error("exception `{name}`: a value has {items} items for {fields} fields")]
    ValueArity { name: String, items: usize, fields: usize },
}

/// The condition text one exception adds (`and not <this>`), in Falco's shape.
pub(crate) fn exception_text(e: &ExceptionDef) -> Result<Option<String>, ExceptionError> {
    if e.values.is_empty() {
        return Ok(None);
    }
    match &e.fields {
        Some(ExcFields::Single(field)) => {
            let comp = match &e.comps {
                None => "in".to_owned(),
                Some(ExcFields::Single(c)) => c.trim().to_owned(),
                Some(ExcFields::Multi(_)) => return Err(ExceptionError::CompsNotSingle(e.name.clone())),
            };
            if !is_list_op(&comp) {
                return Err(ExceptionError::SingleFieldOperator { name: e.name.clone(), comp });
            }
            let mut vals = Vec::new();
            for tuple in &e.values {
                for v in tuple {
                    match v {
                        ExcItem::Scalar(s) => vals.push(quote(s)),
                        ExcItem::List(_) => return Err(ExceptionError::ListValueForSingleField(e.name.clone())),
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
                return Err(ExceptionError::CompsCount {
                    name: e.name.clone(),
                    fields: fields.len(),
                    comps: comps.len(),
                });
            }
            let mut tuples = Vec::new();
            for tuple in &e.values {
                if tuple.len() != fields.len() {
                    return Err(ExceptionError::ValueArity {
                        name: e.name.clone(),
                        items: tuple.len(),
                        fields: fields.len(),
                    });
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
        None => Err(ExceptionError::NoFields(e.name.clone())),
    }
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
        assert_eq!(exception_text(&e), Err(ExceptionError::SingleFieldOperator { name: "e".into(), comp: "=".into() }));
    }
}
