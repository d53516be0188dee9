//! A small SOQL parser: the subset the fulfillment rules (and their tests) use.
//!
//! ```text
//! query   := SELECT item (',' item)* FROM name [WHERE expr] [ORDER BY key (',' key)*] [LIMIT n]
//! item    := path | '(' query ')'                 -- a child relationship subquery
//! expr    := and (OR and)*
//! and     := unary (AND unary)*
//! unary   := NOT unary | '(' expr ')' | cond
//! cond    := path op literal | path [NOT] IN '(' literal (',' literal)* ')' | path LIKE 'pattern'
//! op      := '=' | '!=' | '<>' | '<' | '<=' | '>' | '>='
//! literal := 'string' | number | date | TRUE | FALSE | NULL
//! key     := path [ASC | DESC] [NULLS (FIRST | LAST)]
//! ```
//!
//! Keywords are case-insensitive. Errors are Salesforce's `MALFORMED_QUERY` naming the token
//! that was not expected.
//!
//! The parser, the evaluator and dropping a parsed query recurse once per level of nesting
//! (subqueries, parentheses, `NOT`) and once per `AND`/`OR` operand, so both are bounded
//! (`MAX_NESTING`, `MAX_CONDITIONS`): a query past them is `MALFORMED_QUERY`, not a stack
//! overflow (docs/fuzzing.md, "Findings").

use crate::error::CallError;

/// A parsed query (or child subquery).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Query {
    pub items: Vec<SelectItem>,
    pub from: String,
    pub filter: Option<Expr>,
    pub order: Vec<OrderKey>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SelectItem {
    /// `Name` or `Product2.WH_Product_ID__c`, split at the dots.
    Field(Vec<String>),
    /// `(SELECT ... FROM OrderItems ...)`
    Child(Query),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OrderKey {
    pub path: Vec<String>,
    pub desc: bool,
    pub nulls_last: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Str(String),
    Num(f64),
    /// A date or datetime literal (`2026-01-31`, `2026-01-31T10:00:00Z`), compared as text.
    Date(String),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(Vec<String>, CmpOp, Literal),
    In(Vec<String>, bool, Vec<Literal>),
    Like(Vec<String>, String),
}

/// Words that cannot name an sObject in FROM. `ORDER` and `GROUP` are missing on purpose: `Order`
/// is an sObject, and the grammar tells the two apart by position.
const NOT_SOBJECT_NAMES: &[&str] = &[
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "LIMIT", "TRUE", "FALSE", "NULL",
];

const KEYWORDS: &[&str] = &[
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ORDER", "BY", "ASC", "DESC",
    "NULLS", "FIRST", "LAST", "LIMIT", "OFFSET", "GROUP", "HAVING", "TRUE", "FALSE", "NULL",
];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    /// Numbers and date literals, as written.
    Num(String),
    LParen,
    RParen,
    Comma,
    Op(CmpOp),
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Ident(s) | Tok::Num(s) => s.clone(),
            Tok::Str(s) => format!("'{s}'"),
            Tok::LParen => "(".into(),
            Tok::RParen => ")".into(),
            Tok::Comma => ",".into(),
            Tok::Op(op) => match op {
                CmpOp::Eq => "=",
                CmpOp::Ne => "!=",
                CmpOp::Lt => "<",
                CmpOp::Le => "<=",
                CmpOp::Gt => ">",
                CmpOp::Ge => ">=",
            }
            .into(),
        }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, Tok::Ident(s) if s.eq_ignore_ascii_case(keyword))
    }
}

/// Subqueries, parentheses and `NOT`s nested in each other, at most.
const MAX_NESTING: usize = 32;

/// Conditions in one query, at most. Salesforce limits a `WHERE` clause to 4,000 characters,
/// which holds far fewer.
const MAX_CONDITIONS: usize = 1_000;

fn malformed(message: impl Into<String>) -> CallError {
    CallError::rejected("MALFORMED_QUERY", message)
}

fn tokenize(soql: &str) -> Result<Vec<Tok>, CallError> {
    let chars: Vec<char> = soql.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                tokens.push(Tok::RParen);
                i += 1;
            }
            ',' => {
                tokens.push(Tok::Comma);
                i += 1;
            }
            '=' => {
                tokens.push(Tok::Op(CmpOp::Eq));
                i += 1;
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                tokens.push(Tok::Op(CmpOp::Ne));
                i += 2;
            }
            '<' | '>' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('<', Some('>')) => (CmpOp::Ne, 2),
                    ('<', Some('=')) => (CmpOp::Le, 2),
                    ('<', _) => (CmpOp::Lt, 1),
                    ('>', Some('=')) => (CmpOp::Ge, 2),
                    _ => (CmpOp::Gt, 1),
                };
                tokens.push(Tok::Op(op));
                i += len;
            }
            '\'' => {
                let mut value = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(malformed("unterminated string literal")),
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            let escaped = match chars.get(i + 1) {
                                Some('n') => '\n',
                                Some('r') => '\r',
                                Some('t') => '\t',
                                Some('b') => '\u{8}',
                                Some('f') => '\u{c}',
                                Some(&e @ ('\'' | '"' | '\\' | '%' | '_')) => e,
                                Some(other) => {
                                    return Err(malformed(format!(
                                        "invalid escape sequence: '\\{other}'"
                                    )));
                                }
                                None => return Err(malformed("unterminated string literal")),
                            };
                            // LIKE needs to tell an escaped wildcard from a real one.
                            if matches!(escaped, '%' | '_') {
                                value.push('\\');
                            }
                            value.push(escaped);
                            i += 2;
                        }
                        Some(&other) => {
                            value.push(other);
                            i += 1;
                        }
                    }
                }
                tokens.push(Tok::Str(value));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '+')
                }) {
                    i += 1;
                }
                tokens.push(Tok::Num(chars[start..i].iter().collect()));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
                {
                    i += 1;
                }
                tokens.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            other => return Err(malformed(format!("unexpected token: '{other}'"))),
        }
    }
    Ok(tokens)
}

/// Parses one SOQL statement.
pub(crate) fn parse(soql: &str) -> Result<Query, CallError> {
    let tokens = tokenize(soql)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        depth: 0,
        conditions: 0,
    };
    let query = parser.query()?;
    match parser.peek() {
        None => Ok(query),
        Some(tok) => Err(unexpected(tok)),
    }
}

fn unexpected(tok: &Tok) -> CallError {
    malformed(format!("unexpected token: '{}'", tok.text()))
}

struct Parser {
    tokens: Vec<Tok>,
    at: usize,
    /// Levels of nesting open at `at`.
    depth: usize,
    /// Conditions read so far.
    conditions: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Result<Tok, CallError> {
        let tok = self
            .tokens
            .get(self.at)
            .cloned()
            .ok_or_else(|| malformed("unexpected end of query"))?;
        self.at += 1;
        Ok(tok)
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        self.peek().is_some_and(|t| t.is_keyword(keyword))
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.peek_keyword(keyword);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), CallError> {
        let tok = self.next()?;
        if tok.is_keyword(keyword) {
            Ok(())
        } else {
            Err(unexpected(&tok))
        }
    }

    fn expect(&mut self, want: &Tok) -> Result<(), CallError> {
        let tok = self.next()?;
        if &tok == want {
            Ok(())
        } else {
            Err(unexpected(&tok))
        }
    }

    /// Runs `parse` one level of nesting deeper, refused past [`MAX_NESTING`].
    fn nested<T>(
        &mut self,
        parse: impl FnOnce(&mut Self) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        if self.depth >= MAX_NESTING {
            return Err(malformed(format!(
                "the query nests subqueries, parentheses or NOT deeper than {MAX_NESTING} levels"
            )));
        }
        self.depth += 1;
        let parsed = parse(self);
        self.depth -= 1;
        parsed
    }

    fn query(&mut self) -> Result<Query, CallError> {
        self.expect_keyword("SELECT")?;
        let mut items = vec![self.item()?];
        while self.peek() == Some(&Tok::Comma) {
            self.at += 1;
            items.push(self.item()?);
        }
        self.expect_keyword("FROM")?;
        let from = self.name()?;
        let filter = if self.eat_keyword("WHERE") {
            Some(self.or_expr()?)
        } else {
            None
        };
        let mut order = Vec::new();
        if self.eat_keyword("ORDER") {
            self.expect_keyword("BY")?;
            loop {
                order.push(self.order_key()?);
                if self.peek() != Some(&Tok::Comma) {
                    break;
                }
                self.at += 1;
            }
        }
        let limit = if self.eat_keyword("LIMIT") {
            match self.next()? {
                Tok::Num(n) => Some(
                    n.parse::<usize>()
                        .map_err(|_| malformed(format!("unexpected token: '{n}'")))?,
                ),
                other => return Err(unexpected(&other)),
            }
        } else {
            None
        };
        Ok(Query {
            items,
            from,
            filter,
            order,
            limit,
        })
    }

    fn item(&mut self) -> Result<SelectItem, CallError> {
        if self.peek() == Some(&Tok::LParen) {
            self.at += 1;
            let sub = self.nested(Self::query)?;
            self.expect(&Tok::RParen)?;
            return Ok(SelectItem::Child(sub));
        }
        Ok(SelectItem::Field(self.path()?))
    }

    /// An sObject or relationship name.
    fn name(&mut self) -> Result<String, CallError> {
        match self.next()? {
            Tok::Ident(name)
                if !name.contains('.')
                    && !NOT_SOBJECT_NAMES
                        .iter()
                        .any(|k| k.eq_ignore_ascii_case(&name)) =>
            {
                Ok(name)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// A field path such as `Product2.WH_Product_ID__c`.
    fn path(&mut self) -> Result<Vec<String>, CallError> {
        match self.next()? {
            Tok::Ident(text) if !KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(&text)) => {
                let parts: Vec<String> = text.split('.').map(str::to_owned).collect();
                if parts.iter().any(|p| p.is_empty()) {
                    return Err(malformed(format!("unexpected token: '{text}'")));
                }
                Ok(parts)
            }
            other => Err(unexpected(&other)),
        }
    }

    fn order_key(&mut self) -> Result<OrderKey, CallError> {
        let path = self.path()?;
        let desc = if self.eat_keyword("DESC") {
            true
        } else {
            self.eat_keyword("ASC");
            false
        };
        // Salesforce puts nulls first when ascending and last when descending, unless told.
        let mut nulls_last = desc;
        if self.eat_keyword("NULLS") {
            let tok = self.next()?;
            nulls_last = if tok.is_keyword("LAST") {
                true
            } else if tok.is_keyword("FIRST") {
                false
            } else {
                return Err(unexpected(&tok));
            };
        }
        Ok(OrderKey {
            path,
            desc,
            nulls_last,
        })
    }

    fn or_expr(&mut self) -> Result<Expr, CallError> {
        let mut left = self.and_expr()?;
        while self.eat_keyword("OR") {
            let right = self.and_expr()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, CallError> {
        let mut left = self.unary()?;
        while self.eat_keyword("AND") {
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, CallError> {
        if self.eat_keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.nested(Self::unary)?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.at += 1;
            let inner = self.nested(Self::or_expr)?;
            self.expect(&Tok::RParen)?;
            return Ok(inner);
        }
        self.condition()
    }

    fn condition(&mut self) -> Result<Expr, CallError> {
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return Err(malformed(format!(
                "the query has more than {MAX_CONDITIONS} conditions"
            )));
        }
        let path = self.path()?;
        let tok = self.next()?;
        match tok {
            Tok::Op(op) => Ok(Expr::Cmp(path, op, self.literal()?)),
            t if t.is_keyword("LIKE") => match self.next()? {
                Tok::Str(pattern) => Ok(Expr::Like(path, pattern)),
                other => Err(unexpected(&other)),
            },
            t if t.is_keyword("IN") => Ok(Expr::In(path, false, self.literal_list()?)),
            t if t.is_keyword("NOT") => {
                self.expect_keyword("IN")?;
                Ok(Expr::In(path, true, self.literal_list()?))
            }
            other => Err(unexpected(&other)),
        }
    }

    fn literal_list(&mut self) -> Result<Vec<Literal>, CallError> {
        self.expect(&Tok::LParen)?;
        let mut values = vec![self.literal()?];
        loop {
            match self.next()? {
                Tok::Comma => values.push(self.literal()?),
                Tok::RParen => return Ok(values),
                other => return Err(unexpected(&other)),
            }
        }
    }

    fn literal(&mut self) -> Result<Literal, CallError> {
        match self.next()? {
            Tok::Str(s) => Ok(Literal::Str(unescape_wildcards(&s))),
            Tok::Num(n) => {
                if let Ok(value) = n.parse::<f64>() {
                    Ok(Literal::Num(value))
                } else if looks_like_date(&n) {
                    Ok(Literal::Date(n))
                } else {
                    Err(malformed(format!("unexpected token: '{n}'")))
                }
            }
            t if t.is_keyword("TRUE") => Ok(Literal::Bool(true)),
            t if t.is_keyword("FALSE") => Ok(Literal::Bool(false)),
            t if t.is_keyword("NULL") => Ok(Literal::Null),
            other => Err(unexpected(&other)),
        }
    }
}

/// Outside LIKE an escaped `%`/`_` is just the character.
fn unescape_wildcards(s: &str) -> String {
    s.replace("\\%", "%").replace("\\_", "_")
}

/// `YYYY-MM-DD`, optionally followed by a time.
fn looks_like_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
}

/// SOQL `LIKE`: `%` any run, `_` one character, case-insensitive; `\%`/`\_` are literal.
pub(crate) fn like_matches(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum P {
        Any,
        One,
        Char(char),
    }
    let mut parts = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        parts.push(match c {
            '%' => P::Any,
            '_' => P::One,
            '\\' => match chars.next() {
                Some(next) => P::Char(next),
                None => P::Char('\\'),
            },
            other => P::Char(other),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // matches[j]: the pattern prefix seen so far matches text[..j].
    let mut matches = vec![false; text.len() + 1];
    matches[0] = true;
    for part in parts {
        let mut next = vec![false; text.len() + 1];
        for j in 0..=text.len() {
            match part {
                P::Any => next[j] = matches[j] || (j > 0 && next[j - 1]),
                P::One => next[j] = j > 0 && matches[j - 1],
                P::Char(c) => {
                    next[j] =
                        j > 0 && matches[j - 1] && text[j - 1].to_lowercase().eq(c.to_lowercase());
                }
            }
        }
        matches = next;
    }
    matches[text.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each of these overflowed the stack (a crash, not an error) before nesting and conditions
    /// were bounded; found with the `soql` fuzz target's binary (docs/fuzzing.md, "Findings").
    #[test]
    fn deep_nesting_and_long_condition_chains_are_malformed_not_a_stack_overflow() {
        let deep_not = format!(
            "SELECT Id FROM Order WHERE {}Id = '1'",
            "NOT ".repeat(100_000)
        );
        let deep_parens = format!(
            "SELECT Id FROM Order WHERE {}Id = '1'{}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        );
        let deep_subqueries = format!(
            "SELECT {}Id FROM OrderItems{} FROM Order",
            "(SELECT ".repeat(30_000),
            ")".repeat(30_000)
        );
        let long_and = format!(
            "SELECT Id FROM Order WHERE {}Id = '1'",
            "Id = '1' AND ".repeat(400_000)
        );
        for (what, soql) in [
            ("NOT", deep_not),
            ("parentheses", deep_parens),
            ("subqueries", deep_subqueries),
            ("AND", long_and),
        ] {
            let err = parse(&soql).expect_err(what);
            assert_eq!(err.code, "MALFORMED_QUERY", "{what}: {err:?}");
            assert!(
                err.message.contains("deeper than") || err.message.contains("conditions"),
                "{what}: {}",
                err.message
            );
        }
        // At the limits, still a query.
        let not_32 = format!("SELECT Id FROM Order WHERE {}Id = '1'", "NOT ".repeat(32));
        assert!(parse(&not_32).is_ok());
        let not_33 = format!("SELECT Id FROM Order WHERE {}Id = '1'", "NOT ".repeat(33));
        assert!(parse(&not_33).is_err());
        let and_1000 = format!(
            "SELECT Id FROM Order WHERE {}Id = '1'",
            "Id = '1' AND ".repeat(999)
        );
        assert!(parse(&and_1000).is_ok());
    }

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn parses_the_provisioning_query() {
        let q = parse(
            "select Id, Status, Account.WHMCS_Client_ID__c, \
             (SELECT Id, Quantity, Product2.WH_Product_ID__c FROM OrderItems WHERE Quantity > 0 ORDER BY Id) \
             FROM Order WHERE Id = '801xx000003DIloAAG' AND Status IN ('Activated', 'Draft') LIMIT 1",
        )
        .unwrap();
        assert_eq!(q.from, "Order");
        assert_eq!(q.limit, Some(1));
        assert_eq!(q.items.len(), 4);
        assert_eq!(
            q.items[2],
            SelectItem::Field(path("Account.WHMCS_Client_ID__c"))
        );
        let SelectItem::Child(child) = &q.items[3] else {
            panic!("no child")
        };
        assert_eq!(child.from, "OrderItems");
        assert_eq!(child.order[0].path, path("Id"));
        assert_eq!(
            q.filter,
            Some(Expr::And(
                Box::new(Expr::Cmp(
                    path("Id"),
                    CmpOp::Eq,
                    Literal::Str("801xx000003DIloAAG".into())
                )),
                Box::new(Expr::In(
                    path("Status"),
                    false,
                    vec![
                        Literal::Str("Activated".into()),
                        Literal::Str("Draft".into())
                    ]
                )),
            ))
        );
    }

    #[test]
    fn parses_literals_and_escapes() {
        let q = parse(
            "SELECT Id FROM Account WHERE Name = 'O\\'Brien' AND X__c != null AND Y__c = -1.5 \
             AND Z__c = TRUE AND D__c >= 2026-01-31 AND (A__c = 1 OR NOT B__c <> 2)",
        )
        .unwrap();
        let text = format!("{:?}", q.filter);
        assert!(text.contains("O'Brien"), "{text}");
        assert!(text.contains("Num(-1.5)"));
        assert!(text.contains("Date(\"2026-01-31\")"));
        assert!(text.contains("Bool(true)"));
        assert!(text.contains("Or("));
    }

    #[test]
    fn rejects_malformed_queries() {
        for (soql, token) in [
            ("SELECT Id FORM Order", "FORM"),
            ("SELECT FROM Order", "FROM"),
            ("SELECT Id, FROM Order", "FROM"),
            ("SELECT Id FROM Order WHERE", "end of query"),
            ("SELECT Id FROM WHERE", "WHERE"),
            ("SELECT Id FROM Order ORDER Id", "Id"),
            ("SELECT Id FROM Order WHERE Id = ", "end of query"),
            ("SELECT Id FROM Order WHERE Id = 'x", "unterminated"),
            ("SELECT Id FROM Order LIMIT x", "x"),
            ("SELECT Id FROM Order extra", "extra"),
            ("SELECT Id FROM Order WHERE Id IN 'a'", "'a'"),
            ("SELECT Id FROM Order WHERE Id = 'a' ;", ";"),
            ("DELETE FROM Order", "DELETE"),
            ("SELECT a..b FROM Order", "a..b"),
        ] {
            let err = parse(soql).unwrap_err();
            assert_eq!(err.code, "MALFORMED_QUERY", "{soql}");
            assert!(err.message.contains(token), "{soql}: {}", err.message);
        }
    }

    #[test]
    fn like_patterns() {
        assert!(like_matches("Acme%", "acme corp"));
        assert!(like_matches("%corp", "Acme Corp"));
        assert!(like_matches("A_me", "Acme"));
        assert!(!like_matches("A_me", "Acmee"));
        assert!(like_matches("100\\%", "100%"));
        assert!(!like_matches("100\\%", "1000"));
        assert!(like_matches("%", ""));
    }
}
