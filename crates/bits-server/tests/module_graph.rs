//! The module import graph of `bits-server`, and a check that its arrows point one way.
//!
//! Each top-level module (`config`, `engine`, `store`, …) is a node; module A has an arrow to B
//! when a file of A (A's own file or any of its submodules' files) names `crate::B…` (or reaches
//! B through `super::`, or through a re-export at the crate root). Submodules count as their
//! parent, so a parent and its own submodules may use each other freely: that is the one
//! allowed exception. The same holds one level down: inside `store`, `s3` (with its own
//! submodules) and `fs` are nodes, and `s3` naming `super::fs::…` is an arrow between them. Test-only code (`#[cfg(test)]` items and the files of `#[cfg(test)] mod`)
//! is left out: a test may build its fixtures from any module without that becoming an arrow of
//! the shipped code. Comments and string literals are skipped, so a doc link is not an arrow.
//!
//! See the graph: `cargo test -p bits-server --test module_graph -- --nocapture`.
//! The test fails on any cycle, between top-level modules or between the submodules of one
//! parent, and names the files and lines that make each arrow of the cycle, so the fix starts
//! from the right line. A name a parent re-exports from one child to another is not seen.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// Splits Rust source into identifiers and punctuation, dropping comments, string, byte-string,
/// raw-string and char literals and lifetimes. Each token keeps its line number.
fn lex(src: &str) -> Vec<(Tok, usize)> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0usize, 1usize);
    let skip_to = |i: &mut usize, line: &mut usize, end: usize| {
        *line += b[*i..end.min(b.len())]
            .iter()
            .filter(|&&c| c == b'\n')
            .count();
        *i = end;
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            _ if c.is_ascii_whitespace() => i += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Block comments nest in Rust.
                let (mut depth, mut j) = (0usize, i);
                while j < b.len() {
                    if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        j += 2;
                    } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                        depth -= 1;
                        j += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        j += 1;
                    }
                }
                skip_to(&mut i, &mut line, j);
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                skip_to(&mut i, &mut line, j + 1);
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
                if b.get(i + 1) == Some(&b'\\') {
                    // Past the escaped character, which may itself be a quote ('\'').
                    let mut j = i + 3;
                    while j < b.len() && b[j] != b'\'' {
                        j += 1;
                    }
                    i = j + 1;
                } else if b.get(i + 2) == Some(&b'\'') {
                    i += 3;
                } else if let Some(len) = std::str::from_utf8(&b[i + 1..])
                    .ok()
                    .and_then(|s| s.chars().next())
                    .filter(|ch| !ch.is_ascii())
                    .map(|ch| ch.len_utf8())
                    .filter(|len| b.get(i + 1 + len) == Some(&b'\''))
                {
                    i += len + 2;
                } else {
                    i += 1;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                }
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                let start = i;
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &src[start..i];
                // Raw strings r"..", r#".."#, and byte strings b"..", br#".."#.
                if matches!(word, "r" | "br" | "b" | "rb")
                    && matches!(b.get(i), Some(b'"') | Some(b'#'))
                {
                    let raw = word.contains('r');
                    let mut hashes = 0;
                    while raw && b.get(i + hashes) == Some(&b'#') {
                        hashes += 1;
                    }
                    if b.get(i + hashes) == Some(&b'"') {
                        let mut j = i + hashes + 1;
                        loop {
                            if j >= b.len() {
                                break;
                            }
                            if !raw && b[j] == b'\\' {
                                j += 2;
                                continue;
                            }
                            if b[j] == b'"' && b[j + 1..].iter().take(hashes).all(|&h| h == b'#') {
                                j += 1 + hashes;
                                break;
                            }
                            j += 1;
                        }
                        skip_to(&mut i, &mut line, j);
                        continue;
                    }
                }
                if word == "b" && b.get(i) == Some(&b'\'') {
                    // A byte literal b'x' or b'\n'.
                    let mut j = i + 1;
                    while j < b.len() && b[j] != b'\'' {
                        j += if b[j] == b'\\' { 2 } else { 1 };
                    }
                    i = j + 1;
                    continue;
                }
                out.push((Tok::Ident(word.to_string()), line));
            }
            _ if c.is_ascii_digit() => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                out.push((Tok::Path, line));
                i += 2;
            }
            _ => {
                // Non-ASCII characters only occur in comments and literals, skipped above.
                out.push((Tok::Punct(c as char), line));
                i += 1;
            }
        }
    }
    out
}

/// What one file says about the graph.
#[derive(Default)]
struct FileUses {
    /// Paths it names from the crate root (`crate::a::b`, or `super::…` resolved), with the
    /// line.
    uses: Vec<(Vec<String>, usize)>,
    /// Submodules declared `#[cfg(test)] mod name;` (their files are test-only).
    test_mods: Vec<Vec<String>>,
    /// `pub use` at this file's top (for the crate root: re-exported name → module).
    reexports: Vec<(String, String)>,
}

fn ident(t: Option<&(Tok, usize)>) -> Option<&str> {
    match t {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

fn punct(t: Option<&(Tok, usize)>, c: char) -> bool {
    matches!(t, Some((Tok::Punct(p), _)) if *p == c)
}

/// Every path a use tree starting at `toks[i]` names, below `prefix`: `a::b` for `a::b`,
/// `a::x` and `b` for `{a::x, b}`, `a` for `a::{self}` or `a::*`. In an expression
/// (`a::f(..)`, `a::T::<U>`) the path ends where the `::` chain does.
fn tree_paths(toks: &[(Tok, usize)], i: usize, prefix: &[String]) -> Vec<(Vec<String>, usize)> {
    let mut out = Vec::new();
    walk_tree(toks, i, prefix, &mut out);
    out
}

/// Adds the paths of the tree at `toks[i]` to `out`; returns the index after the tree.
fn walk_tree(
    toks: &[(Tok, usize)],
    i: usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, usize)>,
) -> usize {
    let line = toks.get(i).map_or(0, |t| t.1);
    match toks.get(i).map(|t| &t.0) {
        Some(Tok::Ident(s)) if s == "self" => {
            out.push((prefix.to_vec(), line));
            i + 1
        }
        Some(Tok::Ident(s)) => {
            let mut p = prefix.to_vec();
            p.push(s.clone());
            let more = toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Path)
                && matches!(
                    toks.get(i + 2).map(|t| &t.0),
                    Some(Tok::Ident(_)) | Some(Tok::Punct('{'))
                );
            if more {
                walk_tree(toks, i + 2, &p, out)
            } else {
                out.push((p, line));
                i + 1
            }
        }
        Some(Tok::Punct('*')) => {
            out.push((prefix.to_vec(), line));
            i + 1
        }
        Some(Tok::Punct('{')) => {
            let mut j = i + 1;
            loop {
                match toks.get(j).map(|t| &t.0) {
                    None => return j,
                    Some(Tok::Punct('}')) => return j + 1,
                    Some(Tok::Punct(',')) => j += 1,
                    Some(Tok::Ident(_)) | Some(Tok::Punct('*')) | Some(Tok::Punct('{')) => {
                        j = walk_tree(toks, j, prefix, out);
                        // Past a rename (`as x`) to the next `,` or the closing `}`.
                        while let Some(t) = toks.get(j).map(|t| &t.0) {
                            if matches!(t, Tok::Punct(',') | Tok::Punct('}')) {
                                break;
                            }
                            j += 1;
                        }
                    }
                    Some(_) => j += 1,
                }
            }
        }
        _ => i,
    }
}

/// Index of the bracket closing the one at `open`.
fn closing(toks: &[(Tok, usize)], open: usize) -> usize {
    let mut depth = 0i32;
    for (j, (t, _)) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    toks.len() - 1
}

/// Index just past the item starting at `i`: up to a `;` outside brackets, or the end of its
/// first top-level `{…}` block.
fn skip_item(toks: &[(Tok, usize)], mut i: usize) -> usize {
    let mut depth = 0i32;
    while let Some((t, _)) = toks.get(i) {
        match t {
            Tok::Punct('(') | Tok::Punct('[') => depth += 1,
            Tok::Punct(')') | Tok::Punct(']') => depth -= 1,
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            Tok::Punct(';') if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// Reads one file whose module path is `module` (empty for the crate root).
fn scan(module: &[String], src: &str) -> FileUses {
    let toks = lex(src);
    let mut out = FileUses::default();
    // Inline `mod name {` blocks: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut cfg_test = false;
    let mut i = 0;
    while i < toks.len() {
        let cur = || {
            let mut p = module.to_vec();
            p.extend(inline.iter().map(|(n, _)| n.clone()));
            p
        };
        match &toks[i].0 {
            Tok::Punct('#') => {
                // An attribute: `#[…]` or `#![…]`.
                let open = if punct(toks.get(i + 1), '!') {
                    i + 2
                } else {
                    i + 1
                };
                if punct(toks.get(open), '[') {
                    let end = closing(&toks, open) + 1;
                    let inner: Vec<&Tok> = toks[open + 1..end - 1].iter().map(|t| &t.0).collect();
                    let test = [
                        Tok::Ident("cfg".into()),
                        Tok::Punct('('),
                        Tok::Ident("test".into()),
                        Tok::Punct(')'),
                    ];
                    if inner.len() == 4 && inner.iter().zip(&test).all(|(a, b)| *a == b) {
                        cfg_test = true;
                    }
                    i = end;
                    continue;
                }
                i += 1;
            }
            _ if cfg_test => {
                cfg_test = false;
                // `#[cfg(test)] mod name;` makes that file test-only; any other item is skipped.
                let vis = usize::from(ident(toks.get(i)) == Some("pub"));
                if ident(toks.get(i + vis)) == Some("mod") && punct(toks.get(i + vis + 2), ';') {
                    let mut p = cur();
                    p.push(ident(toks.get(i + vis + 1)).unwrap_or_default().to_string());
                    out.test_mods.push(p);
                }
                i = skip_item(&toks, i);
            }
            Tok::Ident(kw)
                if kw == "mod"
                    && ident(toks.get(i + 1)).is_some()
                    && punct(toks.get(i + 2), '{') =>
            {
                depth += 1;
                inline.push((ident(toks.get(i + 1)).unwrap().to_string(), depth));
                i += 3;
            }
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Tok::Ident(kw)
                if (kw == "crate" || kw == "$crate")
                    && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Path) =>
            {
                out.uses.extend(tree_paths(&toks, i + 2, &[]));
                i += 2;
            }
            Tok::Ident(kw)
                if kw == "super" && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Path) =>
            {
                let mut ups = 0;
                let mut j = i;
                while ident(toks.get(j)) == Some("super")
                    && toks.get(j + 1).map(|t| &t.0) == Some(&Tok::Path)
                {
                    ups += 1;
                    j += 2;
                }
                let here = cur();
                let base = &here[..here.len().saturating_sub(ups)];
                out.uses.extend(tree_paths(&toks, j, base));
                i = j;
            }
            Tok::Ident(kw)
                if kw == "pub"
                    && module.is_empty()
                    && inline.is_empty()
                    && ident(toks.get(i + 1)) == Some("use") =>
            {
                // `pub use m::{A, B};` or `pub use m::A;` at the crate root.
                if let Some(m) = ident(toks.get(i + 2)) {
                    if toks.get(i + 3).map(|t| &t.0) == Some(&Tok::Path) {
                        let mut j = i + 4;
                        while let Some(n) = ident(toks.get(j)) {
                            if toks.get(j + 1).map(|t| &t.0) == Some(&Tok::Path) {
                                j += 2;
                            } else {
                                out.reexports.push((n.to_string(), m.to_string()));
                                break;
                            }
                        }
                        if punct(toks.get(j), '{') {
                            for (n, _) in tree_paths(&toks, j, &[]) {
                                out.reexports.push((n[0].clone(), m.to_string()));
                            }
                        }
                    }
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    out
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `["a", "b"]`; `src/lib.rs` → `[]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Arrow A → B with the places (file:line) that make it.
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// The arrows between the children of each parent module (`[]` is the crate root, whose
/// children are the top-level modules), and the children of each parent.
struct Graphs {
    arrows: BTreeMap<Vec<String>, Graph>,
    children: BTreeMap<Vec<String>, BTreeSet<String>>,
}

fn build_graphs(src: &Path) -> Graphs {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let scanned: Vec<(PathBuf, Vec<String>, FileUses)> = files
        .into_iter()
        .map(|f| {
            let m = module_path(src, &f);
            let text = std::fs::read_to_string(&f).unwrap();
            let uses = scan(&m, &text);
            (f, m, uses)
        })
        .collect();
    let test_only: Vec<Vec<String>> = scanned
        .iter()
        .flat_map(|(_, _, u)| u.test_mods.clone())
        .collect();
    let is_test = |m: &[String]| test_only.iter().any(|t| m.starts_with(t));
    let modules: BTreeSet<Vec<String>> = scanned
        .iter()
        .map(|(_, m, _)| m.clone())
        .filter(|m| !is_test(m))
        .collect();
    let mut children: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    for m in modules.iter().filter(|m| !m.is_empty()) {
        children
            .entry(m[..m.len() - 1].to_vec())
            .or_default()
            .insert(m[m.len() - 1].clone());
    }
    let reexports: BTreeMap<String, String> = scanned
        .iter()
        .filter(|(_, m, _)| m.is_empty())
        .flat_map(|(_, _, u)| u.reexports.clone())
        .collect();
    let mut arrows: BTreeMap<Vec<String>, Graph> = BTreeMap::new();
    for (file, from, u) in &scanned {
        if from.is_empty() || is_test(from) {
            continue;
        }
        for (path, line) in &u.uses {
            // The module a path names: its longest prefix that is a module, through the crate
            // root's re-exports (`crate::Engine` is `engine`).
            let mut path = path.clone();
            if let Some(m) = path.first().and_then(|h| reexports.get(h)) {
                path[0] = m.clone();
            }
            let Some(to) = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p))
            else {
                // A crate-root item (`open_engine`) or a name this reader cannot place.
                continue;
            };
            // A module and its ancestors or descendants: the allowed exception.
            if to.starts_with(from) || from.starts_with(&to) {
                continue;
            }
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            let at = format!("{}:{line}", file.strip_prefix(src).unwrap().display());
            arrows
                .entry(from[..common].to_vec())
                .or_default()
                .entry(from[common].clone())
                .or_default()
                .entry(to[common].clone())
                .or_default()
                .push(at);
        }
    }
    // A grouped import names one line once per item: each place once.
    for places in arrows
        .values_mut()
        .flat_map(|g| g.values_mut())
        .flat_map(|e| e.values_mut())
    {
        places.dedup();
    }
    Graphs { arrows, children }
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(tops: &BTreeSet<String>, graph: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in tops {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

/// The graph of one parent's children, bottom first: each module after everything it uses where the arrows allow.
fn render(parent: &str, tops: &BTreeSet<String>, graph: &Graph) -> String {
    let mut out = format!("{parent}: module graph (A -> what A uses):\n");
    let mut placed: Vec<&String> = Vec::new();
    let mut left: Vec<&String> = tops.iter().collect();
    while !left.is_empty() {
        // The next module whose arrows all point at placed modules; in a cycle, the first left.
        let pos = left
            .iter()
            .position(|m| {
                graph
                    .get(*m)
                    .is_none_or(|e| e.keys().all(|t| placed.contains(&t)))
            })
            .unwrap_or(0);
        placed.push(left.remove(pos));
    }
    for m in placed {
        let deps: Vec<&str> = graph
            .get(m)
            .map(|e| e.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let _ = writeln!(out, "  {m:<12} -> {}", deps.join(", "));
    }
    out
}

#[test]
fn module_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graphs = build_graphs(&src);
    let mut report = String::new();
    for (parent, children) in &graphs.children {
        let empty = Graph::new();
        let graph = graphs.arrows.get(parent).unwrap_or(&empty);
        if parent.is_empty() {
            println!("{}", render("bits-server", children, graph));
        } else if !graph.is_empty() {
            println!("{}", render(&parent.join("::"), children, graph));
        }
        for comp in cycles(children, graph) {
            let name = if parent.is_empty() {
                "top-level modules".to_string()
            } else {
                format!("the submodules of {}", parent.join("::"))
            };
            let _ = writeln!(report, "cycle between {name}: {}", comp.join(", "));
            let mut pairs = Vec::new();
            for a in &comp {
                for (b, places) in graph.get(a).into_iter().flatten() {
                    if comp.contains(b) {
                        let _ = writeln!(report, "    {a} -> {b}: {}", places.join(" "));
                        if a < b && graph.get(b).is_some_and(|e| e.contains_key(a)) {
                            pairs.push(format!("{a} <-> {b}"));
                        }
                    }
                }
            }
            if !pairs.is_empty() {
                let _ = writeln!(report, "  two-module cycles: {}", pairs.join(", "));
            }
        }
    }
    if report.is_empty() {
        println!("no cycle between modules (a parent and its own submodules excepted)");
        return;
    }
    println!("{report}");
    panic!("{report}");
}

#[test]
fn cycles_are_found_and_a_parent_with_its_submodules_is_not_one() {
    let mut g = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("e", "d")] {
        g.entry(a.into()).or_default().insert(b.into(), vec![]);
    }
    let tops: BTreeSet<String> = ["a", "b", "c", "d", "e"].map(String::from).into();
    assert_eq!(
        cycles(&tops, &g),
        [["a", "b", "c"].map(String::from).to_vec()]
    );
    let u = scan(
        &["store".into(), "s3".into()],
        "use super::fs::X; use crate::store::{self, s3::{a, b as c}, *}; crate::m::f::<T>(x);",
    );
    let paths: Vec<String> = u.uses.iter().map(|(p, _)| p.join("::")).collect();
    assert_eq!(
        paths,
        [
            "store::fs::X",
            "store",
            "store::s3::a",
            "store::s3::b",
            "store",
            "m::f"
        ]
    );
}

#[test]
fn the_reader_sees_paths_and_skips_comments_literals_and_tests() {
    let src = r##"
        //! Docs naming crate::a are not an arrow.
        use crate::{b::X, c, d::{e, f}};
        use super::g;
        /* crate::h in a /* nested */ comment */
        const S: &str = "crate::i";
        const R: &str = r#"crate::"j""#;
        const C: char = '"';
        fn f<'a>(x: &'a u8) -> crate::k::T { $crate::l::m() }
        #[cfg(test)]
        mod tests { use crate::n; }
        #[cfg(test)]
        mod testing;
        mod inner { use super::super::o; }
    "##;
    let u = scan(&["top".to_string()], src);
    let paths: Vec<String> = u.uses.iter().map(|(p, _)| p.join("::")).collect();
    assert_eq!(
        paths,
        ["b::X", "c", "d::e", "d::f", "g", "k::T", "l::m", "o"]
    );
    assert_eq!(
        u.test_mods,
        [vec!["top".to_string(), "testing".to_string()]]
    );
}
