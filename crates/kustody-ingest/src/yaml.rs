//! Audit events written as YAML (`kubectl get -o yaml` style exports, test fixtures).

use kustody_model::yaml::Node;

/// A line that can only start a YAML document: `---`, or a `key:` mapping entry.
pub fn looks_like_yaml(line: &[u8]) -> bool {
    if line == b"---" || line.starts_with(b"--- ") {
        return true;
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let key = line.get(..colon).unwrap_or_default();
    let after = line.get(colon + 1);
    !key.is_empty()
        && key.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
        && matches!(after, None | Some(b' ' | b'\t'))
}

pub struct Doc<'a> {
    pub text: &'a str,
    /// 1-based line of `text`'s first line within the input.
    pub start_line: u64,
    pub offset: usize,
}

/// Splits on `---` separator lines, keeping each document's position, so one broken document
/// does not take the others with it.
pub fn split_documents(text: &str) -> Vec<Doc<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u64;
    let mut pos = 0usize;
    for (line_no, line) in (1u64..).zip(text.split_inclusive('\n')) {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") || t == "..." {
            push_doc(&mut docs, text, start, pos, start_line);
            start = pos + line.len();
            start_line = line_no + 1;
        }
        pos += line.len();
    }
    push_doc(&mut docs, text, start, text.len(), start_line);
    docs
}

fn push_doc<'a>(docs: &mut Vec<Doc<'a>>, text: &'a str, start: usize, end: usize, start_line: u64) {
    let Some(body) = text.get(start..end) else {
        return;
    };
    if body.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return;
    }
    docs.push(Doc { text: body, start_line, offset: start });
}

/// One event of a YAML document: its JSON text and the line (within the document) it starts on.
pub struct YamlEvent {
    pub json: String,
    pub line: u64,
}

pub struct YamlError {
    pub line: u64,
    pub message: String,
}

/// The events of one YAML document: a single Event, an EventList or a list of Events.
pub fn events(text: &str) -> Result<Vec<YamlEvent>, YamlError> {
    let docs =
        kustody_model::yaml::parse(text).map_err(|e| YamlError { line: u64::from(e.pos.line), message: e.message })?;
    let mut out = Vec::new();
    for doc in &docs {
        let items: Vec<&Node> = match doc {
            Node::Seq { items, .. } => items.iter().collect(),
            Node::Map { .. } if doc.get("kind").and_then(Node::as_str) == Some("EventList") => match doc.get("items") {
                Some(Node::Seq { items, .. }) => items.iter().collect(),
                _ => Vec::new(),
            },
            other => vec![other],
        };
        out.extend(
            items.into_iter().map(|n| YamlEvent {
                json: kustody_model::yaml::to_json(n).to_string(),
                line: u64::from(n.pos().line),
            }),
        );
    }
    Ok(out)
}
