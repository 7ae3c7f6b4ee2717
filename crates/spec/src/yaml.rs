//! A YAML reader that keeps positions and refuses hostile input.
//!
//! serde-style deserialisation loses where a value came from and stops at the first error; the
//! stack validator needs both. This module turns saphyr-parser's event stream into a small tree of
//! [`Node`]s, each with the position of its first character, and enforces [`Limits`] while doing
//! so: input size, nesting depth, and alias expansion (billion-laughs documents are refused
//! before anything is expanded).
//!
//! ## What is accepted
//! - One document. Comments, `---`/`...` markers and a UTF-8 byte-order mark are fine; a second
//!   document is refused, since a stack file is one stack.
//! - Anchors and aliases, including the `<<` merge key (`<<: *defaults` or
//!   `<<: [*a, *b]`): merged keys come first, explicit keys override them, and among several
//!   merged mappings the earlier one wins (the YAML 1.1 merge rule).
//! - The `!!str` tag on a scalar (it makes the scalar a string, like quoting it). Every other tag
//!   is refused: the schema is fixed, so a tag could only be a mistake or a surprise.
//!
//! ## How the tree is built
//! Events are folded into the tree with an explicit stack, never by recursion, so no input can
//! exhaust the call stack here; the depth limit then bounds the recursion of everyone who walks
//! the tree afterwards (including `Drop` and `Clone`).

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, ScanError, Span, Tag};

use crate::diag::{Diagnostic, Pos};

/// The largest stack file berth accepts, in bytes (8 MiB): the one number behind both
/// [`Limits::default`]'s `max_bytes` (what `berth validate` and the server's parse refuse) and
/// the API's request-body limit (`berth-server` allows this plus room for the JSON envelope),
/// so a file that validates can always be sent, and a larger one is refused naming this limit.
pub const MAX_STACK_FILE_BYTES: usize = 8 * 1024 * 1024;

/// Bounds that keep memory and time proportional to honest input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted input, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of sequences and mappings.
    pub max_depth: usize,
    /// Most nodes the tree may hold once aliases are expanded.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: MAX_STACK_FILE_BYTES,
            max_depth: 64,
            max_nodes: 1_000_000,
        }
    }
}

/// One YAML value with the position of its first character.
///
/// For a block mapping that is its first key, for a flow collection its opening bracket, for a
/// quoted scalar its opening quote; anchors and tags written before a value are skipped. A node
/// that came from an alias carries the alias's position (where the value is used), while the
/// nodes inside it keep the positions where they were written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the value starts in the file, so every later error can name a line and column.
    pub pos: Pos,
    /// What the value is.
    pub kind: NodeKind,
}

/// The shape of a [`Node`]: scalars stay text, so the decoder can decide types per field and
/// report a wrongly typed value where it was written.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar as written. `plain` is false for quoted and block scalars, which are always
    /// strings; a plain scalar may be a number, bool or null.
    Scalar {
        /// The scalar's text after YAML unescaping and folding.
        value: String,
        /// True only for the plain (unquoted) style: only such a scalar may be read as a
        /// number, a bool or null.
        plain: bool,
    },
    /// A sequence's items in source order.
    Seq(Vec<Node>),
    /// Keys in source order (duplicates are reported by [`parse`]).
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The scalar's text, or `None` for a collection: a shorthand for key handling.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// Parses one YAML document. An empty document yields `Ok(None)`.
///
/// Checks happen in the order that keeps the cost of hostile input lowest: size first (before
/// anything is read), then UTF-8, then the structure as it streams by (depth, node budget, alias
/// expansion, duplicate keys). The first problem found is returned; YAML errors cannot be
/// recovered from reliably, so there is no point collecting more.
pub fn parse(source: &[u8], limits: &Limits) -> Result<Option<Node>, Diagnostic> {
    if source.len() > limits.max_bytes {
        return Err(Diagnostic::at(
            Pos { line: 1, col: 1 },
            format!(
                "file is {}; stack files are limited to {}",
                human_size(source.len(), false),
                human_size(limits.max_bytes, true)
            ),
        ));
    }
    let text = match std::str::from_utf8(source) {
        Ok(text) => text,
        Err(e) => return Err(not_utf8(source, e.valid_up_to())),
    };
    // saphyr skips a byte-order mark without counting it; strip it here so that the character
    // indices in its markers line up with `text`.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    Builder::new(text, limits).run()
}

/// A size for a message, with one decimal; `whole` drops a `.0` (limits read better as `8 MiB`,
/// a file's size as measured `50.0 MiB`).
// `usize::is_multiple_of` needs Rust 1.87; the workspace declares `rust-version = "1.85"`.
#[allow(clippy::manual_is_multiple_of)]
fn human_size(bytes: usize, whole: bool) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB {
        if whole && bytes % MIB == 0 {
            format!("{} MiB", bytes / MIB)
        } else {
            format!("{:.1} MiB", bytes as f64 / MIB as f64)
        }
    } else if bytes >= KIB {
        if whole && bytes % KIB == 0 {
            format!("{} KiB", bytes / KIB)
        } else {
            format!("{:.1} KiB", bytes as f64 / KIB as f64)
        }
    } else {
        format!("{bytes} bytes")
    }
}

/// The diagnostic for invalid UTF-8: the line and column of the first bad byte, counted over
/// the valid prefix, plus the byte offset (editors can jump to either).
fn not_utf8(source: &[u8], valid_up_to: usize) -> Diagnostic {
    let prefix = source.get(..valid_up_to).unwrap_or_default();
    // The prefix is valid UTF-8 by construction; fall back to an empty string rather than panic.
    let prefix = std::str::from_utf8(prefix).unwrap_or_default();
    let line = prefix.matches('\n').count() + 1;
    let line_start = prefix.rfind('\n').map_or(0, |i| i + 1);
    let col = prefix.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    Diagnostic::at(
        Pos { line, col },
        format!("the file is not UTF-8 (invalid byte at offset {valid_up_to})"),
    )
}

/// A saphyr marker (1-based line, 0-based column) as our 1-based [`Pos`].
fn pos_of(mark: &Marker) -> Pos {
    Pos {
        line: mark.line().max(1),
        col: mark.col() + 1,
    }
}

/// A tag as the user wrote it, for messages (`!!int`, `!foo`).
fn tag_text(tag: &Tag) -> String {
    if tag.is_yaml_core_schema() {
        format!("!!{}", tag.suffix)
    } else {
        format!("{}{}", tag.handle, tag.suffix)
    }
}

/// Whether a tag is `!!str`, the one tag accepted (on scalars only).
fn is_str_tag(tag: &Tag) -> bool {
    tag.is_yaml_core_schema() && tag.suffix == "str"
}

/// The merge key: a plain `<<` (a quoted `"<<"` is an ordinary key).
fn is_merge_key(key: &Node) -> bool {
    matches!(&key.kind, NodeKind::Scalar { value, plain: true } if value == "<<")
}

/// Converts saphyr's character indices into byte offsets of the text.
///
/// Only needed off the hot path (positions after anchors/tags, alias names, error refinement),
/// and lookups come in roughly increasing order, so a cursor that walks from the last answer keeps
/// the total cost linear.
struct Locator<'s> {
    text: &'s str,
    ascii: bool,
    char_idx: usize,
    byte_idx: usize,
}

impl<'s> Locator<'s> {
    fn new(text: &'s str) -> Self {
        Locator {
            text,
            ascii: text.is_ascii(),
            char_idx: 0,
            byte_idx: 0,
        }
    }

    /// The byte offset of character `target`, clamped to the end of the text.
    fn byte_of(&mut self, target: usize) -> usize {
        if self.ascii {
            return target.min(self.text.len());
        }
        if target < self.char_idx {
            let back = self.char_idx - target;
            let before = self.text.get(..self.byte_idx).unwrap_or_default();
            match before.char_indices().rev().nth(back - 1) {
                Some((b, _)) => {
                    self.char_idx = target;
                    self.byte_idx = b;
                }
                None => {
                    self.char_idx = 0;
                    self.byte_idx = 0;
                }
            }
            return self.byte_idx;
        }
        let ahead = target - self.char_idx;
        let rest = self.text.get(self.byte_idx..).unwrap_or_default();
        match rest.char_indices().nth(ahead) {
            Some((b, _)) => {
                self.char_idx = target;
                self.byte_idx += b;
            }
            None => {
                self.char_idx += rest.chars().count();
                self.byte_idx = self.text.len();
            }
        }
        self.byte_idx
    }
}

/// A value that has been completely read, with what the limits need to know about it.
struct Built {
    node: Node,
    /// Nodes in the subtree, itself included.
    size: usize,
    /// Collection levels in the subtree: 0 for a scalar, 1 + the deepest child otherwise.
    height: usize,
    /// saphyr's anchor id, 0 for none.
    anchor: usize,
}

/// An anchored value kept for later aliases.
struct Anchored {
    node: Node,
    size: usize,
    height: usize,
}

/// A mapping being read.
#[derive(Default)]
struct MapBuilder {
    /// Explicit entries in source order.
    entries: Vec<(Node, Node)>,
    /// Every key written in this mapping (including `<<`), for duplicate detection.
    seen: HashMap<String, Pos>,
    /// A key waiting for its value.
    key: Option<Node>,
    /// Entries pulled in by `<<`, first occurrence of each key wins.
    merged: Vec<(Node, Node)>,
    merged_keys: HashSet<String>,
}

impl MapBuilder {
    /// Adds the entries of one merged mapping; keys already merged keep their earlier value.
    fn merge_from(&mut self, entries: Vec<(Node, Node)>) {
        for (k, v) in entries {
            let Some(name) = k.as_scalar() else { continue };
            if self.merged_keys.insert(name.to_owned()) {
                self.merged.push((k, v));
            }
        }
    }

    /// The final entries: merged keys not overridden, then the explicit ones.
    fn finish(self) -> Vec<(Node, Node)> {
        if self.merged.is_empty() {
            return self.entries;
        }
        let explicit: HashSet<&str> = self
            .entries
            .iter()
            .filter_map(|(k, _)| k.as_scalar())
            .collect();
        let mut out: Vec<(Node, Node)> = self
            .merged
            .into_iter()
            .filter(|(k, _)| k.as_scalar().is_some_and(|name| !explicit.contains(name)))
            .collect();
        out.extend(self.entries);
        out
    }
}

enum FrameKind {
    Seq(Vec<Node>),
    Map(MapBuilder),
}

/// An open collection on the builder's stack.
struct Frame {
    pos: Pos,
    anchor: usize,
    size: usize,
    height: usize,
    kind: FrameKind,
}

/// Folds events into a tree while enforcing the limits.
struct Builder<'s> {
    text: &'s str,
    limits: Limits,
    locator: Locator<'s>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    /// Nodes in the tree so far, aliases expanded.
    nodes: usize,
    /// Nodes held in the anchor table (copies kept for later aliases).
    stored: usize,
    root: Option<Node>,
    /// Where the last event delivered by saphyr ended, to refine scanner errors.
    last_end: Marker,
}

impl<'s> Builder<'s> {
    fn new(text: &'s str, limits: &Limits) -> Self {
        Builder {
            text,
            limits: *limits,
            locator: Locator::new(text),
            stack: Vec::new(),
            anchors: HashMap::new(),
            nodes: 0,
            stored: 0,
            root: None,
            last_end: Marker::new(0, 1, 0),
        }
    }

    fn run(mut self) -> Result<Option<Node>, Diagnostic> {
        let mut parser = Parser::new_from_str(self.text);
        let mut documents = 0usize;
        while let Some(item) = parser.next_event() {
            let (event, span) = match item {
                Ok(ok) => ok,
                Err(e) => return Err(self.scan_error(&e)),
            };
            self.last_end = span.end;
            match event {
                Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
                Event::StreamEnd => break,
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        return Err(Diagnostic::at(
                            pos_of(&span.start),
                            "a stack file holds one YAML document; a second one starts here",
                        ));
                    }
                }
                Event::Alias(id) => self.alias(id, &span)?,
                Event::Scalar(value, style, anchor, tag) => {
                    let pos = self.value_pos(&span, anchor != 0 || tag.is_some());
                    let plain = match tag.as_deref() {
                        None => style == ScalarStyle::Plain,
                        Some(t) if is_str_tag(t) => false,
                        Some(t) => return Err(tag_error(pos_of(&span.start), t)),
                    };
                    self.count_node(pos)?;
                    let node = Node {
                        pos,
                        kind: NodeKind::Scalar {
                            value: value.into_owned(),
                            plain,
                        },
                    };
                    self.push(Built {
                        node,
                        size: 1,
                        height: 0,
                        anchor,
                    })?;
                }
                Event::SequenceStart(anchor, tag) => {
                    let kind = FrameKind::Seq(Vec::new());
                    self.open(&span, anchor, tag.as_deref(), kind)?;
                }
                Event::MappingStart(anchor, tag) => {
                    let kind = FrameKind::Map(MapBuilder::default());
                    self.open(&span, anchor, tag.as_deref(), kind)?;
                }
                Event::SequenceEnd | Event::MappingEnd => self.close(&span)?,
            }
        }
        Ok(self.root.filter(|root| {
            !matches!(&root.kind, NodeKind::Scalar { value, plain: true } if value.is_empty())
        }))
    }

    /// Counts one new node against the budget.
    fn count_node(&mut self, pos: Pos) -> Result<(), Diagnostic> {
        if self.nodes >= self.limits.max_nodes {
            return Err(Diagnostic::at(
                pos,
                format!("the document has more than {} nodes", self.limits.max_nodes),
            ));
        }
        self.nodes += 1;
        Ok(())
    }

    fn depth_error(&self, pos: Pos) -> Diagnostic {
        Diagnostic::at(
            pos,
            format!(
                "nesting is deeper than {} levels (sequences and mappings inside each other)",
                self.limits.max_depth
            ),
        )
    }

    fn open(
        &mut self,
        span: &Span,
        anchor: usize,
        tag: Option<&Tag>,
        kind: FrameKind,
    ) -> Result<(), Diagnostic> {
        let pos = self.value_pos(span, anchor != 0 || tag.is_some());
        if let Some(t) = tag {
            return Err(tag_error(pos_of(&span.start), t));
        }
        if self.stack.len() >= self.limits.max_depth {
            return Err(self.depth_error(pos));
        }
        self.count_node(pos)?;
        self.stack.push(Frame {
            pos,
            anchor,
            size: 1,
            height: 1,
            kind,
        });
        Ok(())
    }

    fn close(&mut self, span: &Span) -> Result<(), Diagnostic> {
        let Some(frame) = self.stack.pop() else {
            // saphyr balances start and end events; refuse rather than panic if it ever did not.
            return Err(Diagnostic::at(
                pos_of(&span.start),
                "YAML syntax error: unbalanced end of a collection",
            ));
        };
        let kind = match frame.kind {
            FrameKind::Seq(items) => NodeKind::Seq(items),
            FrameKind::Map(map) => {
                if let Some(key) = &map.key {
                    // saphyr always pairs keys with values (an empty value is an empty scalar).
                    return Err(Diagnostic::at(
                        key.pos,
                        "YAML syntax error: a mapping key without a value",
                    ));
                }
                NodeKind::Map(map.finish())
            }
        };
        self.push(Built {
            node: Node {
                pos: frame.pos,
                kind,
            },
            size: frame.size,
            height: frame.height,
            anchor: frame.anchor,
        })
    }

    fn alias(&mut self, id: usize, span: &Span) -> Result<(), Diagnostic> {
        let pos = pos_of(&span.start);
        let Some(anchored) = self.anchors.get(&id) else {
            let name = self.alias_name(&span.start);
            return Err(Diagnostic::at(
                pos,
                format!("alias `{name}` refers to the value it is part of"),
            ));
        };
        // Budget first, copy second: a billion-laughs document is refused before it costs
        // anything.
        if anchored.size > self.limits.max_nodes.saturating_sub(self.nodes) {
            return Err(Diagnostic::at(
                pos,
                format!(
                    "alias expansion would exceed {} nodes (billion-laughs protection)",
                    self.limits.max_nodes
                ),
            ));
        }
        if self.stack.len() + anchored.height > self.limits.max_depth {
            let name = self.alias_name(&span.start);
            return Err(Diagnostic::at(
                pos,
                format!(
                    "alias `{name}` would nest deeper than {} levels",
                    self.limits.max_depth
                ),
            ));
        }
        let (size, height) = (anchored.size, anchored.height);
        let mut node = anchored.node.clone();
        node.pos = pos;
        self.nodes += size;
        self.push(Built {
            node,
            size,
            height,
            anchor: 0,
        })
    }

    /// Attaches a finished value to the open collection (or makes it the document).
    fn push(&mut self, built: Built) -> Result<(), Diagnostic> {
        let Built {
            node,
            size,
            height,
            anchor,
        } = built;
        if anchor != 0 {
            // Copies kept for aliases cost memory too; nested anchors could otherwise multiply it.
            if size > self.limits.max_nodes.saturating_sub(self.stored) {
                return Err(Diagnostic::at(
                    node.pos,
                    format!(
                        "anchors would hold more than {} nodes (billion-laughs protection)",
                        self.limits.max_nodes
                    ),
                ));
            }
            self.stored += size;
            self.anchors.insert(
                anchor,
                Anchored {
                    node: node.clone(),
                    size,
                    height,
                },
            );
        }
        let Some(frame) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        frame.size = frame.size.saturating_add(size);
        frame.height = frame.height.max(height + 1);
        match &mut frame.kind {
            FrameKind::Seq(items) => items.push(node),
            FrameKind::Map(map) => match map.key.take() {
                None => {
                    let Some(name) = node.as_scalar() else {
                        return Err(Diagnostic::at(
                            node.pos,
                            "mapping keys must be scalars, not sequences or mappings",
                        ));
                    };
                    if let Some(first) = map.seen.get(name) {
                        return Err(Diagnostic::at(
                            node.pos,
                            format!("duplicate key `{name}` (first at line {})", first.line),
                        ));
                    }
                    map.seen.insert(name.to_owned(), node.pos);
                    map.key = Some(node);
                }
                Some(key) if is_merge_key(&key) => match node.kind {
                    NodeKind::Map(entries) => map.merge_from(entries),
                    NodeKind::Seq(items) => {
                        for item in items {
                            match item.kind {
                                NodeKind::Map(entries) => map.merge_from(entries),
                                _ => return Err(merge_error(item.pos)),
                            }
                        }
                    }
                    NodeKind::Scalar { .. } => return Err(merge_error(node.pos)),
                },
                Some(key) => map.entries.push((key, node)),
            },
        }
        Ok(())
    }

    /// The position of a value's first character: saphyr's spans for values with properties
    /// start at the anchor or tag, so skip those (and the blanks and comments after them), as
    /// long as that stays inside the event's span.
    fn value_pos(&mut self, span: &Span, has_properties: bool) -> Pos {
        let start = pos_of(&span.start);
        if !has_properties {
            return start;
        }
        let begin = self.locator.byte_of(span.start.index());
        let rest = self.text.get(begin..).unwrap_or_default();
        let (mut line, mut col, mut idx) = (start.line, start.col, span.start.index());
        let mut chars = rest.chars().peekable();
        loop {
            match chars.peek().copied() {
                Some('&' | '!') => {
                    // An anchor or a tag: up to the next blank.
                    while let Some(&c) = chars.peek() {
                        if matches!(c, ' ' | '\t' | '\n' | '\r') {
                            break;
                        }
                        chars.next();
                        col += 1;
                        idx += 1;
                    }
                }
                Some(' ' | '\t') => {
                    chars.next();
                    col += 1;
                    idx += 1;
                }
                Some('\n') => {
                    chars.next();
                    line += 1;
                    col = 1;
                    idx += 1;
                }
                Some('\r') => {
                    chars.next();
                    idx += 1;
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                        idx += 1;
                    }
                    line += 1;
                    col = 1;
                }
                Some('#') => {
                    while let Some(&c) = chars.peek() {
                        if matches!(c, '\n' | '\r') {
                            break;
                        }
                        chars.next();
                        col += 1;
                        idx += 1;
                    }
                }
                _ => break,
            }
        }
        if idx <= span.end.index() && idx > span.start.index() {
            Pos { line, col }
        } else {
            start
        }
    }

    /// The alias as written (`*name`), read back from the source for messages.
    fn alias_name(&mut self, mark: &Marker) -> String {
        let begin = self.locator.byte_of(mark.index());
        let rest = self.text.get(begin..).unwrap_or_default();
        let name: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | '[' | ']' | '{' | '}'))
            .take(100)
            .collect();
        if name.is_empty() {
            "*".to_owned()
        } else {
            name
        }
    }

    /// Turns a saphyr error into a diagnostic, rewording the ones we can say better.
    fn scan_error(&mut self, e: &ScanError) -> Diagnostic {
        let pos = pos_of(e.marker());
        match e.info() {
            // saphyr counts flow levels in a u8 and scans ahead through nested brackets before
            // it delivers their events, so deep flow nesting surfaces as this error rather than
            // as an event past our limit. It is certain the limit was crossed (when the limit
            // is below 256); find where.
            "recursion limit exceeded" => match self.flow_crossing() {
                Some(at) => self.depth_error(at),
                None => Diagnostic::at(
                    pos,
                    "nesting is deeper than the YAML parser's limit of 255 flow levels",
                ),
            },
            "while parsing node, found unknown anchor" => {
                let name = self.alias_name(e.marker());
                let anchor = name.strip_prefix('*').unwrap_or(&name);
                Diagnostic::at(
                    pos,
                    format!("unknown alias `{name}` (no anchor `&{anchor}` before it)"),
                )
            }
            info => Diagnostic::at(pos, format!("YAML syntax error: {info}")),
        }
    }

    /// Where flow nesting crosses `max_depth`, scanning the bytes after the last delivered event.
    ///
    /// Approximate but only used to place an error that is already certain: it counts `[`/`{`
    /// minus `]`/`}` on top of the collections already open, skipping quoted scalars (a quote
    /// opens one only at the start of a scalar) and comments. Inside flow collections plain
    /// scalars cannot contain brackets, so the count is exact there. `None` if the count never
    /// crosses (then the caller falls back to saphyr's own position).
    fn flow_crossing(&mut self) -> Option<Pos> {
        let start = self.last_end;
        let begin = self.locator.byte_of(start.index());
        let rest = self.text.get(begin..)?;
        let mut depth = self.stack.len();
        let (mut line, mut col) = (start.line().max(1), start.col() + 1);
        let mut quote: Option<char> = None;
        let mut escaped = false;
        let mut comment = false;
        let mut prev = ' ';
        for c in rest.chars() {
            if c == '\n' {
                line += 1;
                col = 1;
                comment = false;
                prev = ' ';
                continue;
            }
            if comment {
                col += 1;
                continue;
            }
            match quote {
                Some('"') if escaped => escaped = false,
                Some('"') if c == '\\' => escaped = true,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '[' | '{' => {
                        depth += 1;
                        if depth > self.limits.max_depth {
                            return Some(Pos { line, col });
                        }
                    }
                    ']' | '}' => depth = depth.saturating_sub(1),
                    '#' if matches!(prev, ' ' | '\t') => comment = true,
                    '"' | '\'' if matches!(prev, ' ' | '\t' | '[' | '{' | ',' | ':') => {
                        quote = Some(c);
                    }
                    // `''` inside a single-quoted scalar: the quote closed and reopens.
                    '\'' if prev == '\'' => quote = Some(c),
                    _ => {}
                },
            }
            prev = c;
            col += 1;
        }
        None
    }
}

fn tag_error(pos: Pos, tag: &Tag) -> Diagnostic {
    Diagnostic::at(
        pos,
        format!(
            "tags are not supported (`{}`); quote the value if it is a string",
            tag_text(tag)
        ),
    )
}

fn merge_error(pos: Pos) -> Diagnostic {
    Diagnostic::at(
        pos,
        "`<<` merges a mapping or a list of mappings (for example `<<: *defaults`)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{timed, GENEROUS};

    fn p(src: &str) -> Result<Option<Node>, Diagnostic> {
        parse(src.as_bytes(), &Limits::default())
    }

    fn ok(src: &str) -> Node {
        match p(src) {
            Ok(Some(node)) => node,
            other => panic!("expected a document, got {other:?}"),
        }
    }

    fn err(src: &str) -> Diagnostic {
        match p(src) {
            Err(d) => d,
            Ok(n) => panic!("expected an error, got {n:?}"),
        }
    }

    fn at(line: usize, col: usize) -> Option<Pos> {
        Some(Pos { line, col })
    }

    fn pos(line: usize, col: usize) -> Pos {
        Pos { line, col }
    }

    /// The value under `key` in a mapping node.
    fn get<'a>(node: &'a Node, key: &str) -> &'a Node {
        match &node.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_scalar() == Some(key))
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no key {key} in {node:?}")),
            _ => panic!("not a mapping: {node:?}"),
        }
    }

    fn keys(node: &Node) -> Vec<&str> {
        match &node.kind {
            NodeKind::Map(entries) => entries.iter().filter_map(|(k, _)| k.as_scalar()).collect(),
            _ => panic!("not a mapping: {node:?}"),
        }
    }

    fn scalar(node: &Node) -> (&str, bool) {
        match &node.kind {
            NodeKind::Scalar { value, plain } => (value, *plain),
            _ => panic!("not a scalar: {node:?}"),
        }
    }

    fn items(node: &Node) -> &[Node] {
        match &node.kind {
            NodeKind::Seq(items) => items,
            _ => panic!("not a sequence: {node:?}"),
        }
    }

    #[test]
    fn scalar_positions_point_at_the_value() {
        let doc = ok("stack: shop\n# comment\nservices:\n  web:\n    replicas: abc\n");
        assert_eq!(
            doc.pos,
            pos(1, 1),
            "a block mapping starts at its first key"
        );
        let web = get(get(&doc, "services"), "web");
        assert_eq!(web.pos, pos(5, 5));
        let replicas = get(web, "replicas");
        assert_eq!(scalar(replicas), ("abc", true));
        assert_eq!(replicas.pos, pos(5, 15));
        let doc = ok("a: 1\nb: 2\nreplicas: abc\n");
        assert_eq!(get(&doc, "replicas").pos, pos(3, 11));
    }

    #[test]
    fn key_positions() {
        let doc = ok("a: 1\n  \nbb: 2\n");
        let NodeKind::Map(entries) = &doc.kind else {
            panic!("not a map")
        };
        assert_eq!(entries[0].0.pos, pos(1, 1));
        assert_eq!(entries[1].0.pos, pos(3, 1));
        assert_eq!(entries[1].1.pos, pos(3, 5));
    }

    #[test]
    fn sequence_and_flow_positions() {
        let doc = ok("s:\n  - one\n  - [a, {b: c}]\nf: {x: 1, y: [2, 3]}\n");
        let s = get(&doc, "s");
        assert_eq!(
            s.pos,
            pos(2, 3),
            "a block sequence starts at its first dash"
        );
        let s = items(s);
        assert_eq!(s[0].pos, pos(2, 5));
        assert_eq!(s[1].pos, pos(3, 5), "a flow sequence starts at its bracket");
        let inner = items(&s[1]);
        assert_eq!(inner[0].pos, pos(3, 6));
        assert_eq!(inner[1].pos, pos(3, 9));
        assert_eq!(get(&inner[1], "b").pos, pos(3, 13));
        let f = get(&doc, "f");
        assert_eq!(f.pos, pos(4, 4));
        assert_eq!(get(f, "x").pos, pos(4, 8));
        let y = get(f, "y");
        assert_eq!(y.pos, pos(4, 14));
        assert_eq!(items(y)[1].pos, pos(4, 18));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let doc = ok("é: ü\nn: «x»\n");
        assert_eq!(get(&doc, "é").pos, pos(1, 4));
        let doc = ok("a: {ünï: [x, ÿ]}\n");
        assert_eq!(items(get(get(&doc, "a"), "ünï"))[1].pos, pos(1, 14));
    }

    #[test]
    fn quoting_and_plain_flag() {
        let doc = ok(concat!(
            "a: plain\n",
            "b: 'single'\n",
            "c: \"double\\tx\"\n",
            "d: |\n  literal\n",
            "e: >\n  folded\n  text\n",
            "f: \"1\"\n",
            "g: !!str 1\n",
            "h:\n",
            "i: ''\n",
        ));
        assert_eq!(scalar(get(&doc, "a")), ("plain", true));
        assert_eq!(scalar(get(&doc, "b")), ("single", false));
        assert_eq!(
            get(&doc, "b").pos,
            pos(2, 4),
            "a quoted scalar starts at its quote"
        );
        assert_eq!(scalar(get(&doc, "c")), ("double\tx", false));
        assert_eq!(scalar(get(&doc, "d")), ("literal\n", false));
        assert_eq!(scalar(get(&doc, "e")), ("folded text\n", false));
        assert_eq!(scalar(get(&doc, "f")), ("1", false));
        assert_eq!(scalar(get(&doc, "g")), ("1", false));
        assert_eq!(get(&doc, "g").pos, pos(10, 10), "the tag is skipped");
        assert_eq!(
            scalar(get(&doc, "h")),
            ("", true),
            "an empty value is an empty plain"
        );
        assert_eq!(scalar(get(&doc, "i")), ("", false));
    }

    #[test]
    fn anchors_are_skipped_in_positions() {
        let doc = ok("a: &x 5\nb: &m\n  # note\n  k: v\nc: &s [1]\nd: *x\n");
        assert_eq!(get(&doc, "a").pos, pos(1, 7));
        assert_eq!(get(&doc, "b").pos, pos(4, 3));
        assert_eq!(get(&doc, "c").pos, pos(5, 7));
        let d = get(&doc, "d");
        assert_eq!(scalar(d), ("5", true));
        assert_eq!(d.pos, pos(6, 4), "an alias's value sits where it is used");
    }

    #[test]
    fn merge_keys() {
        let doc = ok(concat!(
            "defaults: &d\n  a: 1\n  b: 2\n",
            "more: &m {c: 3, a: 9}\n",
            "x:\n  <<: *d\n  b: 20\n  z: 0\n",
            "y:\n  <<: [*m, *d]\n  c: 30\n",
            "w: {<<: *d}\n",
            "q:\n  \"<<\": plain\n",
        ));
        let x = get(&doc, "x");
        assert_eq!(
            keys(x),
            ["a", "b", "z"],
            "merged keys first, explicit keys override"
        );
        assert_eq!(scalar(get(x, "a")), ("1", true));
        assert_eq!(scalar(get(x, "b")), ("20", true));
        assert_eq!(get(x, "b").pos, pos(7, 6));
        let y = get(&doc, "y");
        assert_eq!(keys(y), ["a", "b", "c"]);
        assert_eq!(
            scalar(get(y, "a")),
            ("9", true),
            "the earlier merged mapping wins"
        );
        assert_eq!(scalar(get(y, "c")), ("30", true));
        assert_eq!(keys(get(&doc, "w")), ["a", "b"]);
        assert_eq!(
            keys(get(&doc, "q")),
            ["<<"],
            "a quoted << is an ordinary key"
        );
    }

    #[test]
    fn merge_of_a_scalar_is_refused() {
        let d = err("a: &a 1\nb:\n  <<: *a\n");
        assert_eq!(d.pos, at(3, 7));
        assert!(d.message.contains("`<<` merges"), "{}", d.message);
        let d = err("b:\n  <<: [{x: 1}, 2]\n");
        assert_eq!(d.pos, at(2, 16));
    }

    #[test]
    fn duplicate_keys() {
        let d = err("a: 1\nb: 2\na: 3\n");
        assert_eq!(d.pos, at(3, 1));
        assert_eq!(d.message, "duplicate key `a` (first at line 1)");
        let d = err("s:\n  x: {k: 1, 'k': 2}\n");
        assert_eq!(d.pos, at(2, 13));
        assert!(d.message.contains("duplicate key `k`"));
        // The same key in different mappings is fine.
        ok("a: {k: 1}\nb: {k: 2}\n");
        // Two merge keys are duplicates too.
        let d = err("d: &d {a: 1}\nx:\n  <<: *d\n  <<: *d\n");
        assert_eq!(d.pos, at(4, 3));
    }

    #[test]
    fn non_scalar_keys_are_refused() {
        let d = err("[a, b]: 1\n");
        assert_eq!(d.pos, at(1, 1));
        assert!(d.message.contains("keys must be scalars"), "{}", d.message);
        let d = err("x:\n  ? {a: 1}\n  : v\n");
        assert_eq!(d.pos, at(2, 5));
    }

    #[test]
    fn empty_and_comment_only_files() {
        assert_eq!(p(""), Ok(None));
        assert_eq!(p("\n\n  \n"), Ok(None));
        assert_eq!(p("# only a comment\n   # another\n"), Ok(None));
        assert_eq!(p("---\n"), Ok(None));
        assert_eq!(p("---\n...\n"), Ok(None));
        assert_eq!(parse(b"\xef\xbb\xbf", &Limits::default()), Ok(None));
        // An explicit null is a value, though.
        assert!(matches!(p("~"), Ok(Some(_))));
        assert!(matches!(p("''"), Ok(Some(_))));
    }

    #[test]
    fn byte_order_mark_is_accepted() {
        let doc = parse(b"\xef\xbb\xbfa: 1\nb: x\n", &Limits::default());
        let Ok(Some(doc)) = doc else {
            panic!("{doc:?}")
        };
        assert_eq!(get(&doc, "b").pos, pos(2, 4));
    }

    #[test]
    fn non_utf8_is_refused_with_its_position() {
        let d = parse(b"a: 1\nbb: x\xffy\n", &Limits::default()).unwrap_err();
        assert_eq!(d.pos, at(2, 6));
        assert_eq!(
            d.message,
            "the file is not UTF-8 (invalid byte at offset 10)"
        );
        let d = parse(b"\xc3", &Limits::default()).unwrap_err();
        assert_eq!(d.pos, at(1, 1));
        // Latin-1 `é` after a multi-byte character: the column counts characters.
        let d = parse(
            "ü: "
                .as_bytes()
                .iter()
                .chain(b"caf\xe9")
                .copied()
                .collect::<Vec<_>>()
                .as_slice(),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(d.pos, at(1, 7));
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        // 50 MiB of something that would be very slow to parse if it were parsed.
        let big = vec![b'['; 50 * 1024 * 1024];
        let (d, took) = timed(|| parse(&big, &Limits::default()).unwrap_err());
        assert!(took < GENEROUS, "{took:?}");
        assert_eq!(d.pos, at(1, 1));
        assert_eq!(
            d.message,
            "file is 50.0 MiB; stack files are limited to 8 MiB"
        );
        // Exactly at the limit is accepted.
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(parse(b"a: 1234567", &limits).is_ok());
        assert!(parse(b"a: 12345678", &limits).is_err());
    }

    #[test]
    fn deep_flow_nesting_is_refused() {
        for open in ["[", "{a: ", "[{a: "] {
            let src = open.repeat(10_000);
            let (d, took) = timed(|| err(&src));
            assert!(took < GENEROUS, "{took:?}");
            assert!(d.message.contains("deeper than 64 levels"), "{}", d.message);
            // The 65th collection is where the limit is crossed (`[{a: ` opens two).
            let col = match open {
                "[{a: " => 32 * open.len() + 1,
                _ => 64 * open.len() + 1,
            };
            assert_eq!(d.pos, at(1, col), "{open}");
        }
        // Balanced, too, and across lines.
        let src = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(err(&src).pos, at(1, 65));
        let d = err(&"[\n".repeat(10_000));
        assert_eq!(d.pos, at(65, 1));
        // Under a block mapping: the mapping counts as a level.
        let d = err(&format!("a:\n  b: {}", "[".repeat(10_000)));
        assert_eq!(d.pos, at(2, 6 + 62));
        // Between our limit and saphyr's, the event stream catches it.
        let d = err(&"[".repeat(100));
        assert_eq!(d.pos, at(1, 65));
        // Brackets inside quotes do not count when locating the crossing.
        let d = err(&format!("['[[[[', {}", "[".repeat(300)));
        assert_eq!(d.pos, at(1, 10 + 63));
    }

    #[test]
    fn exactly_max_depth_is_accepted() {
        let src = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(ok(&src).pos == pos(1, 1));
        let src = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(err(&src).pos, at(1, 65));
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        let src = format!("{}x\n", "- ".repeat(10_000));
        let (d, took) = timed(|| err(&src));
        assert!(took < GENEROUS, "{took:?}");
        assert!(d.message.contains("deeper than 64 levels"), "{}", d.message);
        assert_eq!(d.pos, at(1, 129));
        // Indented mappings, 10,000 deep: 50 MB, so with a raised size limit.
        let mut src = String::new();
        for i in 0..10_000 {
            src.push_str(&" ".repeat(i));
            src.push_str("a:\n");
        }
        let limits = Limits {
            max_bytes: usize::MAX,
            ..Limits::default()
        };
        let d = parse(src.as_bytes(), &limits).unwrap_err();
        assert_eq!(d.pos, at(65, 65));
        assert!(d.message.contains("deeper than 64 levels"), "{}", d.message);
    }

    #[test]
    fn alias_cannot_exceed_depth() {
        let inner = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let src = format!("a: &a {inner}\nb: {}*a{}\n", "[".repeat(30), "]".repeat(30));
        let d = err(&src);
        assert_eq!(d.pos, at(2, 34));
        assert!(
            d.message.contains("alias `*a` would nest deeper"),
            "{}",
            d.message
        );
    }

    #[test]
    fn billion_laughs_is_refused_quickly() {
        let src = r#"
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"#;
        let (d, took) = timed(|| err(src));
        assert!(took < GENEROUS, "{took:?}");
        assert_eq!(
            d.message,
            "alias expansion would exceed 1000000 nodes (billion-laughs protection)"
        );
        // a..f hold 672,603 nodes and f alone 597,871: the first *f in g crosses the budget.
        assert_eq!(d.pos, at(8, 8));
        // A small budget: 14 nodes before b's items, 10 per *a, so the ninth *a crosses 100.
        let limits = Limits {
            max_nodes: 100,
            ..Limits::default()
        };
        let d = parse(src.as_bytes(), &limits).unwrap_err();
        assert_eq!(d.pos, at(3, 32));
    }

    #[test]
    fn node_budget_without_aliases() {
        let limits = Limits {
            max_nodes: 5,
            ..Limits::default()
        };
        assert!(parse(b"[1, 2, 3, 4]", &limits).is_ok());
        let d = parse(b"[1, 2, 3, 4, 5]", &limits).unwrap_err();
        assert_eq!(d.pos, at(1, 14));
        assert_eq!(d.message, "the document has more than 5 nodes");
    }

    #[test]
    fn unknown_and_self_referencing_aliases() {
        let d = err("a: 1\nb: *nope\n");
        assert_eq!(d.pos, at(2, 4));
        assert_eq!(
            d.message,
            "unknown alias `*nope` (no anchor `&nope` before it)"
        );
        // An alias before its anchor is unknown too.
        let d = err("a: *x\nb: &x 1\n");
        assert_eq!(d.pos, at(1, 4));
        let d = err("a: &x [1, *x]\n");
        assert_eq!(d.pos, at(1, 11));
        assert!(
            d.message.contains("`*x` refers to the value it is part of"),
            "{}",
            d.message
        );
    }

    #[test]
    fn redefined_anchor_uses_the_latest() {
        let doc = ok("a: &x 1\nb: &x 2\nc: *x\n");
        assert_eq!(scalar(get(&doc, "c")), ("2", true));
    }

    #[test]
    fn multiple_documents_are_refused() {
        let d = err("a: 1\n---\nb: 2\n");
        assert_eq!(d.pos, at(2, 1));
        assert_eq!(
            d.message,
            "a stack file holds one YAML document; a second one starts here"
        );
        let d = err("--- \na: 1\n...\nb: 2\n");
        assert_eq!(d.pos, at(4, 1));
        // A single explicit document is fine.
        assert!(ok("---\na: 1\n...\n").pos == pos(2, 1));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let d = err("stack: shop\nservices:\n  web: {a: 1\n");
        assert!(
            d.message.starts_with("YAML syntax error: "),
            "{}",
            d.message
        );
        assert_eq!(d.pos.map(|p| p.line), Some(4));
        let d = err("a: 1\n  b: 2\n");
        assert_eq!(d.pos, at(2, 4));
        assert!(
            d.message.starts_with("YAML syntax error: "),
            "{}",
            d.message
        );
        let d = err("a:\n  - x\n  y: 1\n");
        assert_eq!(d.pos, at(3, 3));
        let d = err("a: \"unterminated\n");
        assert!(
            d.message.starts_with("YAML syntax error: "),
            "{}",
            d.message
        );
        let d = err("a: 1\n\tb: 2\n");
        assert!(
            d.message.starts_with("YAML syntax error: "),
            "{}",
            d.message
        );
    }

    #[test]
    fn tags_other_than_str_are_refused() {
        let d = err("a: !!int 3\n");
        assert_eq!(d.pos, at(1, 4));
        assert_eq!(
            d.message,
            "tags are not supported (`!!int`); quote the value if it is a string"
        );
        let d = err("a: !local {x: 1}\n");
        assert!(d.message.contains("`!local`"), "{}", d.message);
        let d = err("a: !!str [x]\n");
        assert!(d.message.contains("`!!str`"), "{}", d.message);
    }

    #[test]
    fn locator_walks_both_ways() {
        let text = "aé€😀b";
        let mut l = Locator::new(text);
        assert_eq!(l.byte_of(4), 10);
        assert_eq!(l.byte_of(1), 1);
        assert_eq!(l.byte_of(3), 6);
        assert_eq!(l.byte_of(2), 3);
        assert_eq!(l.byte_of(0), 0);
        assert_eq!(l.byte_of(99), text.len());
        assert_eq!(l.byte_of(4), 10);
    }

    #[test]
    fn non_ascii_positions_after_anchors() {
        let doc = ok("ü: &ä ö
b: *ä
c: &€ [x]
d: {e: *€}
");
        assert_eq!(get(&doc, "ü").pos, pos(1, 7));
        assert_eq!(get(&doc, "c").pos, pos(3, 7));
        assert_eq!(get(get(&doc, "d"), "e").pos, pos(4, 8));
        let d = err("ü: 1
x: [*ö]
");
        assert_eq!(d.message, "unknown alias `*ö` (no anchor `&ö` before it)");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(8 * 1024 * 1024, true), "8 MiB");
        assert_eq!(human_size(50 * 1024 * 1024, false), "50.0 MiB");
        assert_eq!(human_size(1536, true), "1.5 KiB");
        assert_eq!(human_size(7, false), "7 bytes");
    }

    #[test]
    fn hostile_fragments_never_panic() {
        let fragments = [
            "",
            ":",
            "-",
            "?",
            "[",
            "]",
            "{",
            "}",
            "&",
            "*",
            "!",
            "|",
            ">",
            "'",
            "\"",
            "#",
            "%",
            "@",
            "`",
            ",",
            "\n",
            "\t",
            " ",
            "\r",
            "- ",
            ": ",
            "? ",
            "&a ",
            "*a",
            "!!",
            "---",
            "...",
            "%YAML 1.2\n",
            "<<: ",
            "\u{feff}",
            "é",
            "\\",
        ];
        for a in fragments {
            for b in fragments {
                for c in fragments {
                    let src = format!("{a}{b}{c}x{a}\n{b}{c}");
                    let _ = p(&src);
                }
            }
        }
    }
}
