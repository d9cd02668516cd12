//! A YAML tree that remembers where every node starts, so diagnostics and bad records can name
//! file:line:column. Used for rule files and for audit events written as YAML.
//!
//! yaml-rust2's own `Yaml` type drops positions, and its loader recurses once per nesting level
//! and copies anchored nodes for every alias. This builder pulls the parser's events one by one
//! into an explicit stack, refuses nesting deeper than [`MAX_DEPTH`], and stops when aliases
//! would expand the tree past a budget proportional to the input (a "billion laughs" document
//! is a few hundred bytes).

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

#[derive(Debug, Clone)]
pub enum Node {
    Scalar { value: String, style: TScalarStyle, pos: Pos },
    Seq { items: Vec<Node>, pos: Pos },
    Map { entries: Vec<(Node, Node)>, pos: Pos },
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
            Node::Map { entries, .. } => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
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
            Node::Scalar { style: TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted, pos, .. } => {
                Pos { line: pos.line, col: pos.col + 1 }
            }
            Node::Scalar { style: TScalarStyle::Literal | TScalarStyle::Folded, pos, .. } => {
                Pos { line: pos.line + 1, col: pos.col }
            }
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

/// Deeper nesting is refused: no real rule file or audit event comes close.
pub const MAX_DEPTH: usize = 256;

enum Frame {
    Seq(Vec<Node>, Pos, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Pos, usize),
}

struct Builder {
    docs: Vec<Node>,
    stack: Vec<Frame>,
    anchors: Vec<(usize, Node)>,
    /// Nodes still allowed, alias expansions included.
    budget: usize,
}

fn size(n: &Node) -> usize {
    match n {
        Node::Scalar { .. } => 1,
        Node::Seq { items, .. } => 1 + items.iter().map(size).sum::<usize>(),
        Node::Map { entries, .. } => 1 + entries.iter().map(|(k, v)| size(k) + size(v)).sum::<usize>(),
    }
}

fn pos(m: &Marker) -> Pos {
    // yaml-rust2 markers: 1-based line, 0-based column.
    Pos { line: u32::try_from(m.line()).unwrap_or(u32::MAX), col: u32::try_from(m.col() + 1).unwrap_or(u32::MAX) }
}

impl Builder {
    fn event(&mut self, ev: Event, p: Pos) -> Result<(), YamlError> {
        let err = |message: String| YamlError { pos: p, message };
        match ev {
            Event::Scalar(value, style, anchor, _) => self.push(Node::Scalar { value, style, pos: p }, anchor, 1, p)?,
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(err(format!("nested more than {MAX_DEPTH} levels deep")));
                }
                self.stack.push(if matches!(ev, Event::SequenceStart(..)) {
                    Frame::Seq(Vec::new(), p, anchor)
                } else {
                    Frame::Map(Vec::new(), None, p, anchor)
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(frame) = self.stack.pop() {
                    let (node, anchor) = match frame {
                        Frame::Seq(items, pos, a) => (Node::Seq { items, pos }, a),
                        Frame::Map(entries, _, pos, a) => (Node::Map { entries, pos }, a),
                    };
                    self.push(node, anchor, 1, p)?;
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.iter().rev().find(|(a, _)| *a == id).map(|(_, n)| n.clone());
                let node = node.ok_or_else(|| err(format!("alias to unknown anchor {id}")))?;
                let n = size(&node);
                self.push(node, 0, n, p)?;
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart | Event::DocumentEnd => {}
        }
        Ok(())
    }

    /// Adds a finished node, charging `cost` nodes against the budget.
    fn push(&mut self, node: Node, anchor: usize, cost: usize, p: Pos) -> Result<(), YamlError> {
        self.budget = self.budget.checked_sub(cost).ok_or_else(|| YamlError {
            pos: p,
            message: "document expands to too many nodes (aliases repeating anchors?)".into(),
        })?;
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
        Ok(())
    }
}

/// Parses every YAML document in `text`.
pub fn parse(text: &str) -> Result<Vec<Node>, YamlError> {
    let mut builder =
        Builder { docs: Vec::new(), stack: Vec::new(), anchors: Vec::new(), budget: 10_000 + 4 * text.len() };
    let mut parser = Parser::new_from_str(text);
    loop {
        let (ev, mark) =
            parser.next_token().map_err(|e| YamlError { pos: pos(e.marker()), message: e.info().to_owned() })?;
        if matches!(ev, Event::StreamEnd) {
            break;
        }
        builder.event(ev, pos(&mark))?;
    }
    Ok(builder.docs)
}

/// Converts a node to JSON: plain scalars become numbers, booleans or null where YAML 1.2's core
/// schema says so; quoted scalars stay strings.
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Node::Scalar { value, style: TScalarStyle::Plain, .. } => match value.as_str() {
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
        let Node::Seq { items, pos } = &docs[0] else { panic!() };
        assert_eq!(*pos, Pos { line: 1, col: 1 });
        let item = &items[0];
        assert_eq!(item.get("rule").unwrap().pos(), Pos { line: 1, col: 9 });
        assert_eq!(item.get("condition").unwrap().as_str(), Some("x = y\n"));
    }

    #[test]
    fn hostile_documents_are_refused() {
        let deep = "- ".repeat(10_000) + "x\n";
        assert!(parse(&deep).unwrap_err().message.contains("nested more than"));
        let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = if i == 1 { "a".to_owned() } else { format!("a{}", i - 1) };
            laughs.push_str(&format!("a{i}: &a{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(parse(&laughs).unwrap_err().message.contains("too many nodes"));
        // Aliases within budget still work.
        let ok = parse("base: &b {x: 1}\nother: *b\n").unwrap();
        assert_eq!(ok[0].get("other").and_then(|o| o.get("x")).and_then(Node::as_str), Some("1"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("- rule: [a\n").unwrap_err();
        assert!(err.pos.line >= 1);
    }
}

/// Where and why a YAML node did not deserialize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedError {
    /// The node where it went wrong (for an unknown key, the key itself).
    pub pos: Pos,
    /// The path below the node given, as text (`.url`, `.headers.X-Api-Key`, `.to[1]`).
    pub path: String,
    pub message: String,
}

/// Deserializes `node` (through its JSON form) into `T`; an error points at the node and path
/// where it went wrong, so a configuration mistake is reported as `FILE:LINE:COL: key.path: why`.
pub fn deserialize<T: serde::de::DeserializeOwned>(node: &Node) -> Result<T, TypedError> {
    deserialize_value(to_json(node), node)
}

/// As [`deserialize`], for a JSON value made from `node` (possibly reshaped).
pub fn deserialize_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    node: &Node,
) -> Result<T, TypedError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let segments: Vec<_> = e.path().iter().cloned().collect();
        let message = e.into_inner().to_string();
        let (at, path) = locate(node, &segments);
        // `unknown field `x``: point at the key itself, in the mapping that holds it.
        let key_at = unknown_field(&message).and_then(|f| {
            let parent = match segments.split_last() {
                Some((serde_path_to_error::Segment::Map { key }, rest)) if key == f => locate(node, rest).0,
                _ => at,
            };
            key_node(parent, f)
        });
        TypedError { pos: key_at.unwrap_or(at).pos(), path, message }
    })
}

/// Walks `path` down from `node`; returns the deepest node found and the path as text.
fn locate<'n>(node: &'n Node, path: &[serde_path_to_error::Segment]) -> (&'n Node, String) {
    use serde_path_to_error::Segment;
    let mut at = node;
    let mut text = String::new();
    let mut found = true;
    for seg in path {
        match seg {
            Segment::Seq { index } => {
                text.push_str(&format!("[{index}]"));
                if let (true, Node::Seq { items, .. }) = (found, at) {
                    match items.get(*index) {
                        Some(n) => at = n,
                        None => found = false,
                    }
                }
            }
            Segment::Map { key } => {
                text.push('.');
                text.push_str(key);
                match at.get(key) {
                    Some(n) if found => at = n,
                    _ => found = false,
                }
            }
            // An externally tagged enum (`{quarantine: {…}}`): step into the variant's value.
            Segment::Enum { variant } => {
                if let (true, Some(n)) = (found, at.get(variant)) {
                    text.push('.');
                    text.push_str(variant);
                    at = n;
                }
            }
            Segment::Unknown => {}
        }
    }
    (at, text)
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(f, _)| f)
}

fn key_node<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    match node {
        Node::Map { entries, .. } => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(k, _)| k),
        _ => None,
    }
}
