//! Diagnostics: what is wrong, and where, so `berth validate` can print `FILE:LINE:COL: message`.

use std::fmt;

/// A position in the source: 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// One problem with a stack file. `pos` is `None` for problems that come from outside the file
/// (a `--set` override, an unknown `--env`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    pub pos: Option<Pos>,
    pub message: String,
}

impl Diagnostic {
    pub fn at(pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            pos: Some(pos),
            message: message.into(),
        }
    }

    pub fn global(message: impl Into<String>) -> Self {
        Diagnostic {
            pos: None,
            message: message.into(),
        }
    }

    /// `FILE:LINE:COL: message`, or `FILE: message` when the problem has no position.
    pub fn display_in<'a>(&'a self, file: &'a str) -> impl fmt::Display + 'a {
        struct D<'a>(&'a Diagnostic, &'a str);
        impl fmt::Display for D<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.0.pos {
                    Some(p) => write!(f, "{}:{}:{}: {}", self.1, p.line, p.col, self.0.message),
                    None => write!(f, "{}: {}", self.1, self.0.message),
                }
            }
        }
        D(self, file)
    }
}

/// Every problem found in one run, sorted by position so output is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} error(s) in the stack file", .0.len())]
pub struct Diagnostics(pub Vec<Diagnostic>);
