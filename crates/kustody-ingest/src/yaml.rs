//! Audit events written as YAML (`kubectl get -o yaml` style exports, test fixtures).

use serde_json::{Map, Number, Value};
use yaml_rust2::{Yaml, YamlLoader};

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
        && key
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
        && matches!(after, None | Some(b' ' | b'\t'))
}

pub struct Doc<'a> {
    pub text: &'a str,
    /// 1-based line of the document's first line within the input.
    pub first_line: u64,
    pub offset: usize,
}

/// Splits on `---` separator lines, keeping each document's position.
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

fn push_doc<'a>(docs: &mut Vec<Doc<'a>>, text: &'a str, start: usize, end: usize, first_line: u64) {
    let Some(body) = text.get(start..end) else {
        return;
    };
    let is_filler = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
    let Some(skip) = body.lines().position(|l| !is_filler(l)) else {
        return;
    };
    docs.push(Doc {
        text: body,
        first_line: first_line + skip as u64,
        offset: start,
    });
}

pub struct YamlError {
    pub line: u64,
    pub message: String,
}

/// Parses one YAML document into JSON values.
pub fn to_json(text: &str) -> Result<Vec<Value>, YamlError> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| YamlError {
        line: e.marker().line() as u64,
        message: e.info().to_owned(),
    })?;
    Ok(docs.iter().map(convert).collect())
}

fn convert(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or_else(|| Value::String(s.clone()), Value::Number),
        Yaml::Integer(i) => Value::Number((*i).into()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(convert).collect()),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    _ => continue,
                };
                m.insert(key, convert(v));
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}
