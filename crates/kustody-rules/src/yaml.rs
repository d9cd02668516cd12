//! A YAML tree that remembers where every node starts, so diagnostics can name file:line:column.
//!
//! yaml-rust2's own `Yaml` type drops positions; its event parser keeps them, so this builds a
//! small tree from marked events.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

#[derive(Debug, Clone)]
pub enum Node {
    Scalar {
        value: String,
        style: TScalarStyle,
        pos: Pos,
    },
    Seq {
        items: Vec<Node>,
        pos: Pos,
    },
    Map {
        entries: Vec<(Node, Node)>,
        pos: Pos,
    },
}

impl Node {
    pub fn pos(&self) -> Pos {
        match self {
            Node::Scalar { pos, .. } | Node::Seq { pos, .. } | Node::Map { pos, .. } => *pos,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// A plain (unquoted) scalar that YAML would read as null.
    pub fn is_null(&self) -> bool {
        matches!(self, Node::Scalar { value, style: TScalarStyle::Plain, .. } if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// For a mapping, the value of `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map { entries, .. } => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Node::Scalar { .. } => "a scalar",
            Node::Seq { .. } => "a sequence",
            Node::Map { .. } => "a mapping",
        }
    }

    /// Where the text of a scalar starts: the first character after a quote or block indicator
    /// is approximated by the node position (+1 column for quoted scalars).
    pub fn text_start(&self) -> Pos {
        match self {
            Node::Scalar {
                style: TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted,
                pos,
                ..
            } => Pos {
                line: pos.line,
                col: pos.col + 1,
            },
            Node::Scalar {
                style: TScalarStyle::Literal | TScalarStyle::Folded,
                pos,
                ..
            } => Pos {
                line: pos.line + 1,
                col: pos.col,
            },
            other => other.pos(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

enum Frame {
    Seq(Vec<Node>, Pos, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Pos, usize),
}

#[derive(Default)]
struct Builder {
    docs: Vec<Node>,
    stack: Vec<Frame>,
    anchors: Vec<(usize, Node)>,
}

fn pos(m: &Marker) -> Pos {
    // yaml-rust2 markers: 1-based line, 0-based column.
    Pos {
        line: u32::try_from(m.line()).unwrap_or(u32::MAX),
        col: u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
    }
}

impl Builder {
    fn push(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq(items, ..)) => items.push(node),
            Some(Frame::Map(entries, key, ..)) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let p = pos(&mark);
        match ev {
            Event::Scalar(value, style, anchor, _) => self.push(
                Node::Scalar {
                    value,
                    style,
                    pos: p,
                },
                anchor,
            ),
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(Vec::new(), p, anchor)),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map(Vec::new(), None, p, anchor))
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(frame) = self.stack.pop() {
                    let (node, anchor) = match frame {
                        Frame::Seq(items, pos, a) => (Node::Seq { items, pos }, a),
                        Frame::Map(entries, _, pos, a) => (Node::Map { entries, pos }, a),
                    };
                    self.push(node, anchor);
                }
            }
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == id)
                    .map(|(_, n)| n.clone())
                    .unwrap_or(Node::Scalar {
                        value: String::new(),
                        style: TScalarStyle::Plain,
                        pos: p,
                    });
                self.push(node, 0);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// Parses every YAML document in `text`.
pub fn parse(text: &str) -> Result<Vec<Node>, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| YamlError {
        pos: pos(e.marker()),
        message: e.info().to_owned(),
    })?;
    Ok(builder.docs)
}

/// Converts a node to JSON: plain scalars become numbers, booleans or null where YAML 1.2's core
/// schema says so; quoted scalars stay strings.
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Node::Scalar {
            value,
            style: TScalarStyle::Plain,
            ..
        } => match value.as_str() {
            "" | "~" | "null" | "Null" | "NULL" => Value::Null,
            "true" | "True" | "TRUE" => Value::Bool(true),
            "false" | "False" | "FALSE" => Value::Bool(false),
            v => v
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| {
                    v.parse::<f64>()
                        .map_err(|_| ())
                        .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number).ok_or(()))
                })
                .unwrap_or_else(|_| Value::String(v.to_owned())),
        },
        Node::Scalar { value, .. } => Value::String(value.clone()),
        Node::Seq { items, .. } => Value::Array(items.iter().map(to_json).collect()),
        Node::Map { entries, .. } => {
            let mut m = serde_json::Map::new();
            for (k, v) in entries {
                if let Some(k) = k.as_str() {
                    m.insert(k.to_owned(), to_json(v));
                }
            }
            Value::Object(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let docs = parse("- rule: a\n  condition: >\n    x = y\n").unwrap();
        let Node::Seq { items, pos } = &docs[0] else {
            panic!()
        };
        assert_eq!(*pos, Pos { line: 1, col: 1 });
        let item = &items[0];
        assert_eq!(item.get("rule").unwrap().pos(), Pos { line: 1, col: 9 });
        assert_eq!(item.get("condition").unwrap().as_str(), Some("x = y\n"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("- rule: [a\n").unwrap_err();
        assert!(err.pos.line >= 1);
    }
}
