//! The Falco condition language: tokens and a recursive-descent parser producing an [`Ast`].
//!
//! Precedence, loosest first: `or`, `and`, `not`. A bare identifier with no operator is a macro
//! reference. List names inside `( ... )` are kept as bare words here and expanded when the
//! condition is compiled.

/// A byte span inside the condition text.
pub type Span = (usize, usize);

#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    And(Vec<Ast>),
    Or(Vec<Ast>),
    Not(Box<Ast>),
    Macro { name: String, span: Span },
    Exists { lhs: FieldExpr },
    Cmp { lhs: FieldExpr, op: Op, rhs: Rhs, span: Span },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldExpr {
    /// Transformers applied, outermost first: `tolower(b64(x))` is `[ToLower, B64]`.
    pub transformers: Vec<Transformer>,
    pub name: String,
    pub arg: Option<String>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transformer {
    ToLower,
    ToUpper,
    B64,
    Basename,
    Len,
    /// kustody extension: the value as an integer (not extractable when it is not one), so
    /// `< <= > >=` compare numbers. Sigma's `gt`/`lt` modifiers use it.
    Num,
}

impl Transformer {
    fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "tolower" => Transformer::ToLower,
            "toupper" => Transformer::ToUpper,
            "b64" => Transformer::B64,
            "basename" => Transformer::Basename,
            "len" => Transformer::Len,
            "num" => Transformer::Num,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Transformer::ToLower => "tolower",
            Transformer::ToUpper => "toupper",
            Transformer::B64 => "b64",
            Transformer::Basename => "basename",
            Transformer::Len => "len",
            Transformer::Num => "num",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    IContains,
    BContains,
    StartsWith,
    BStartsWith,
    EndsWith,
    Glob,
    IGlob,
    PMatch,
    In,
    Intersects,
    Regex,
    /// kustody extension: the value is an IP address inside one of the listed networks
    /// (`10.0.0.0/8`, `fd00::/8`); on a list field, any element. Sigma's `cidr` modifier uses it.
    Cidr,
}

impl Op {
    fn from_word(s: &str) -> Option<Self> {
        Some(match s {
            "contains" => Op::Contains,
            "icontains" => Op::IContains,
            "bcontains" => Op::BContains,
            "startswith" => Op::StartsWith,
            "bstartswith" => Op::BStartsWith,
            "endswith" => Op::EndsWith,
            "glob" => Op::Glob,
            "iglob" => Op::IGlob,
            "pmatch" => Op::PMatch,
            "in" => Op::In,
            "intersects" => Op::Intersects,
            "regex" => Op::Regex,
            "cidr" => Op::Cidr,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Contains => "contains",
            Op::IContains => "icontains",
            Op::BContains => "bcontains",
            Op::StartsWith => "startswith",
            Op::BStartsWith => "bstartswith",
            Op::EndsWith => "endswith",
            Op::Glob => "glob",
            Op::IGlob => "iglob",
            Op::PMatch => "pmatch",
            Op::In => "in",
            Op::Intersects => "intersects",
            Op::Regex => "regex",
            Op::Cidr => "cidr",
        }
    }
    /// Operators whose right-hand side is a parenthesised list.
    pub fn takes_list(self) -> bool {
        matches!(self, Op::In | Op::Intersects | Op::PMatch | Op::Cidr)
    }
}

/// One item of a `( ... )` value list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListItem {
    pub value: String,
    /// Bare words may name a list and are expanded at compile time; quoted strings never are.
    pub bare: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rhs {
    Value(String),
    List(Vec<ListItem>),
    Field(FieldExpr),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Comma,
    Cmp(Op),
    Word(String),
    Str(String),
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

fn is_word_byte(b: u8) -> bool {
    !b.is_ascii_whitespace() && !matches!(b, b'(' | b')' | b',' | b'=' | b'<' | b'>' | b'!' | b'"' | b'\'')
}

impl<'a> Lexer<'a> {
    fn peek_byte(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek_byte().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// Next token with its span, or `None` at the end.
    fn next(&mut self) -> Result<Option<(Tok, Span)>, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let Some(b) = self.peek_byte() else {
            return Ok(None);
        };
        let bytes = self.src.as_bytes();
        let two = bytes.get(start + 1).copied();
        let (tok, len) = match (b, two) {
            (b'(', _) => (Tok::LParen, 1),
            (b')', _) => (Tok::RParen, 1),
            (b',', _) => (Tok::Comma, 1),
            (b'=', Some(b'=')) => (Tok::Cmp(Op::Eq), 2),
            (b'=', _) => (Tok::Cmp(Op::Eq), 1),
            (b'!', Some(b'=')) => (Tok::Cmp(Op::Ne), 2),
            (b'<', Some(b'=')) => (Tok::Cmp(Op::Le), 2),
            (b'<', _) => (Tok::Cmp(Op::Lt), 1),
            (b'>', Some(b'=')) => (Tok::Cmp(Op::Ge), 2),
            (b'>', _) => (Tok::Cmp(Op::Gt), 1),
            (b'"' | b'\'', _) => return self.string(b).map(Some),
            (b'!', _) => {
                return Err(ParseError { offset: start, message: "unexpected `!` (use `not` or `!=`)".into() })
            }
            _ => {
                let mut end = start;
                let mut depth = 0usize;
                // A word runs until a delimiter; `[...]` arguments may hold any character but `]`.
                while let Some(&c) = bytes.get(end) {
                    if depth > 0 {
                        if c == b']' {
                            depth -= 1;
                        }
                        end += 1;
                        continue;
                    }
                    if c == b'[' {
                        depth += 1;
                        end += 1;
                        continue;
                    }
                    if !is_word_byte(c) {
                        break;
                    }
                    end += 1;
                }
                if depth > 0 {
                    return Err(ParseError { offset: start, message: "unterminated `[` in field argument".into() });
                }
                let word = self.src.get(start..end).unwrap_or_default().to_owned();
                (Tok::Word(word), end - start)
            }
        };
        self.pos = start + len;
        Ok(Some((tok, (start, self.pos))))
    }

    fn string(&mut self, quote: u8) -> Result<(Tok, Span), ParseError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let mut out = Vec::new();
        let mut i = start + 1;
        loop {
            match bytes.get(i) {
                None => return Err(ParseError { offset: start, message: "unterminated string".into() }),
                Some(&c) if c == quote => break,
                Some(b'\\') => {
                    match bytes.get(i + 1) {
                        Some(&c @ (b'"' | b'\'' | b'\\')) => out.push(c),
                        Some(b'n') => out.push(b'\n'),
                        Some(b't') => out.push(b'\t'),
                        Some(&c) => {
                            out.push(b'\\');
                            out.push(c);
                        }
                        None => return Err(ParseError { offset: start, message: "unterminated string".into() }),
                    }
                    i += 2;
                }
                Some(&c) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        self.pos = i + 1;
        let s = String::from_utf8(out)
            .map_err(|_| ParseError { offset: start, message: "invalid UTF-8 in string".into() })?;
        Ok((Tok::Str(s), (start, self.pos)))
    }
}

/// Parses a condition into its syntax tree.
pub fn parse(src: &str) -> Result<Ast, ParseError> {
    let mut lexer = Lexer { src, pos: 0 };
    let mut toks = Vec::new();
    while let Some(t) = lexer.next()? {
        toks.push(t);
    }
    let mut p = Parser { toks, i: 0, end: src.len(), depth: 0 };
    if p.toks.is_empty() {
        return Err(ParseError { offset: 0, message: "empty condition".into() });
    }
    let ast = p.or_expr()?;
    if let Some((tok, span)) = p.toks.get(p.i) {
        return Err(ParseError {
            offset: span.0,
            message: format!("unexpected {} after a complete expression", describe(tok)),
        });
    }
    Ok(ast)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Comma => "`,`".into(),
        Tok::Cmp(op) => format!("`{}`", op.name()),
        Tok::Word(w) => format!("`{w}`"),
        Tok::Str(s) => format!("string \"{s}\""),
    }
}

struct Parser {
    toks: Vec<(Tok, Span)>,
    i: usize,
    end: usize,
    depth: usize,
}

/// Nesting deeper than this is refused rather than risking the stack on hostile input.
const MAX_DEPTH: usize = 200;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|(t, _)| t)
    }
    fn offset(&self) -> usize {
        self.toks.get(self.i).map_or(self.end, |(_, s)| s.0)
    }
    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { offset: self.offset(), message: message.into() })
    }
    fn bump(&mut self) -> Option<(Tok, Span)> {
        let t = self.toks.get(self.i).cloned();
        self.i += 1;
        t
    }
    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }

    fn or_expr(&mut self) -> Result<Ast, ParseError> {
        let mut items = vec![self.and_expr()?];
        while self.is_word("or") {
            self.i += 1;
            items.push(self.and_expr()?);
        }
        Ok(if items.len() == 1 { items.pop().unwrap_or(Ast::And(Vec::new())) } else { Ast::Or(items) })
    }

    fn and_expr(&mut self) -> Result<Ast, ParseError> {
        let mut items = vec![self.not_expr()?];
        while self.is_word("and") {
            self.i += 1;
            items.push(self.not_expr()?);
        }
        Ok(if items.len() == 1 { items.pop().unwrap_or(Ast::And(Vec::new())) } else { Ast::And(items) })
    }

    fn not_expr(&mut self) -> Result<Ast, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err("condition is nested too deeply");
        }
        let r = if self.is_word("not") {
            self.i += 1;
            self.not_expr().map(|a| Ast::Not(Box::new(a)))
        } else {
            self.primary()
        };
        self.depth -= 1;
        r
    }

    fn primary(&mut self) -> Result<Ast, ParseError> {
        match self.peek() {
            Some(Tok::LParen) => {
                self.i += 1;
                let inner = self.or_expr()?;
                match self.bump() {
                    Some((Tok::RParen, _)) => Ok(inner),
                    _ => {
                        self.i = self.i.saturating_sub(1);
                        self.err("expected `)`")
                    }
                }
            }
            Some(Tok::Word(w)) if matches!(w.as_str(), "and" | "or") => self.err(format!("unexpected `{w}`")),
            Some(Tok::Word(_)) => self.check(),
            Some(t) => {
                let d = describe(t);
                self.err(format!("expected a field, macro or `(`, found {d}"))
            }
            None => self.err("unexpected end of condition"),
        }
    }

    /// `field op value`, `field exists`, or a macro name.
    fn check(&mut self) -> Result<Ast, ParseError> {
        let start = self.offset();
        let lhs = self.field_expr()?;
        let op = match self.peek() {
            Some(Tok::Cmp(op)) => Some(*op),
            Some(Tok::Word(w)) if w == "exists" => {
                self.i += 1;
                return Ok(Ast::Exists { lhs });
            }
            Some(Tok::Word(w)) => Op::from_word(w),
            _ => None,
        };
        let Some(op) = op else {
            let is_macro_name = lhs.transformers.is_empty()
                && lhs.arg.is_none()
                && lhs.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if is_macro_name {
                return Ok(Ast::Macro { name: lhs.name, span: lhs.span });
            }
            return match self.peek() {
                Some(t) => {
                    let d = describe(t);
                    self.err(format!("expected an operator after `{}`, found {d}", lhs.name))
                }
                None => self.err(format!("expected an operator after `{}`", lhs.name)),
            };
        };
        self.i += 1;
        let rhs = if op.takes_list() && matches!(self.peek(), Some(Tok::LParen)) {
            Rhs::List(self.list()?)
        } else if op.takes_list() {
            return self.err(format!("`{}` needs a list in parentheses", op.name()));
        } else {
            self.value()?
        };
        let end = self.toks.get(self.i.saturating_sub(1)).map_or(self.end, |(_, s)| s.1);
        Ok(Ast::Cmp { lhs, op, rhs, span: (start, end) })
    }

    fn field_expr(&mut self) -> Result<FieldExpr, ParseError> {
        let start = self.offset();
        let mut transformers = Vec::new();
        loop {
            let Some((Tok::Word(w), span)) = self.toks.get(self.i).cloned() else {
                return self.err("expected a field name");
            };
            if matches!(self.toks.get(self.i + 1), Some((Tok::LParen, _))) {
                if let Some(t) = Transformer::from_name(&w) {
                    transformers.push(t);
                    self.i += 2;
                    continue;
                }
                if w == "val" {
                    return self.err("`val()` is only allowed on the right-hand side");
                }
                return self.err(format!("unknown transformer `{w}`"));
            }
            self.i += 1;
            let (name, arg) = split_arg(&w);
            for _ in &transformers {
                match self.bump() {
                    Some((Tok::RParen, _)) => {}
                    _ => {
                        self.i = self.i.saturating_sub(1);
                        return self.err("expected `)` closing a transformer");
                    }
                }
            }
            let end = self.toks.get(self.i.saturating_sub(1)).map_or(span.1, |(_, s)| s.1);
            return Ok(FieldExpr { transformers, name, arg, span: (start, end) });
        }
    }

    fn value(&mut self) -> Result<Rhs, ParseError> {
        match self.bump() {
            Some((Tok::Str(s), _)) => Ok(Rhs::Value(s)),
            Some((Tok::Word(w), _)) if w == "val" && matches!(self.peek(), Some(Tok::LParen)) => {
                self.i += 1;
                let f = self.field_expr()?;
                match self.bump() {
                    Some((Tok::RParen, _)) => Ok(Rhs::Field(f)),
                    _ => {
                        self.i = self.i.saturating_sub(1);
                        self.err("expected `)` closing `val(`")
                    }
                }
            }
            Some((Tok::Word(w), _)) if matches!(w.as_str(), "and" | "or" | "not") => {
                self.i -= 1;
                self.err(format!("expected a value, found `{w}`"))
            }
            Some((Tok::Word(w), _)) => Ok(Rhs::Value(w)),
            // Bare values may contain `=`, `<`, `>` or `!` (e.g. `a=b`): the lexer splits those,
            // so only words and strings are accepted here.
            Some((t, _)) => {
                self.i -= 1;
                self.err(format!("expected a value, found {}", describe(&t)))
            }
            None => self.err("expected a value at the end of the condition"),
        }
    }

    fn list(&mut self) -> Result<Vec<ListItem>, ParseError> {
        self.i += 1; // (
        let mut items = Vec::new();
        if matches!(self.peek(), Some(Tok::RParen)) {
            self.i += 1;
            return Ok(items);
        }
        loop {
            match self.bump() {
                Some((Tok::Word(w), _)) => items.push(ListItem { value: w, bare: true }),
                Some((Tok::Str(s), _)) => items.push(ListItem { value: s, bare: false }),
                Some((t, _)) => {
                    self.i -= 1;
                    return self.err(format!("expected a list value, found {}", describe(&t)));
                }
                None => return self.err("unterminated list"),
            }
            match self.bump() {
                Some((Tok::Comma, _)) => continue,
                Some((Tok::RParen, _)) => return Ok(items),
                Some((t, _)) => {
                    self.i -= 1;
                    return self.err(format!("expected `,` or `)` in list, found {}", describe(&t)));
                }
                None => return self.err("unterminated list"),
            }
        }
    }
}

/// `ka.uri.param[command]` → (`ka.uri.param`, `command`).
fn split_arg(word: &str) -> (String, Option<String>) {
    match word.find('[') {
        Some(i) if word.ends_with(']') => {
            (word.get(..i).unwrap_or_default().to_owned(), word.get(i + 1..word.len() - 1).map(str::to_owned))
        }
        _ => (word.to_owned(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(name: &str, op: Op, v: &str) -> (String, Op, String) {
        (name.to_owned(), op, v.to_owned())
    }

    fn flat(a: &Ast) -> Vec<(String, Op, String)> {
        match a {
            Ast::And(v) | Ast::Or(v) => v.iter().flat_map(flat).collect(),
            Ast::Not(x) => flat(x),
            Ast::Cmp { lhs, op, rhs: Rhs::Value(v), .. } => vec![cmp(&lhs.name, *op, v)],
            _ => vec![],
        }
    }

    #[test]
    fn precedence_not_and_or() {
        let a = parse("a or b and not c").unwrap();
        let Ast::Or(items) = a else { panic!("{a:?}") };
        assert!(matches!(&items[0], Ast::Macro { name, .. } if name == "a"));
        let Ast::And(inner) = &items[1] else { panic!() };
        assert!(matches!(&inner[1], Ast::Not(_)));
    }

    #[test]
    fn bare_values_with_special_characters() {
        let a = parse("ka.user.name=system:anonymous and ka.uri startswith /healthz? and ka.verb != get").unwrap();
        assert_eq!(
            flat(&a),
            vec![
                cmp("ka.user.name", Op::Eq, "system:anonymous"),
                cmp("ka.uri", Op::StartsWith, "/healthz?"),
                cmp("ka.verb", Op::Ne, "get")
            ]
        );
    }

    #[test]
    fn field_arguments_and_lists() {
        let a = parse("jevt.value[/stage] in (k8s_audit_stages, \"x y\")").unwrap();
        let Ast::Cmp { lhs, op: Op::In, rhs: Rhs::List(items), .. } = a else { panic!() };
        assert_eq!(lhs.name, "jevt.value");
        assert_eq!(lhs.arg.as_deref(), Some("/stage"));
        assert_eq!(
            items,
            vec![
                ListItem { value: "k8s_audit_stages".into(), bare: true },
                ListItem { value: "x y".into(), bare: false }
            ]
        );
    }

    #[test]
    fn transformers_and_val() {
        let a = parse("tolower(b64(ka.user.name)) = val(ka.impuser.name)").unwrap();
        let Ast::Cmp { lhs, rhs: Rhs::Field(f), .. } = a else { panic!() };
        assert_eq!(lhs.transformers, vec![Transformer::ToLower, Transformer::B64]);
        assert_eq!(f.name, "ka.impuser.name");
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = parse("ka.verb = get and").unwrap_err();
        assert_eq!(e.offset, 17);
        let e = parse("ka.verb in get").unwrap_err();
        assert!(e.message.contains("needs a list"), "{e}");
        let e = parse("(ka.verb = get").unwrap_err();
        assert!(e.message.contains("expected `)`"), "{e}");
        let e = parse("ka.verb get").unwrap_err();
        assert!(e.message.contains("expected an operator"), "{e}");
        assert!(parse("").is_err());
        assert!(parse(&"(".repeat(10_000)).is_err());
    }
}
