//! The shape of `src/`, checked from the source text: the file-level import graph has no
//! cycle, the leaves import nothing above them, and no file passes 700 lines of code.
//!
//! An edge A -> B is drawn when file A names a path (in a `use`, or inline in code) that
//! resolves to module file B: `crate::x::y::Z` goes to the longest prefix that is a file
//! (`src/x/y.rs`, else `src/x/y/mod.rs`, else `src/x.rs` or `src/x/mod.rs`, else `src/lib.rs`);
//! `super::` and `self::` resolve from A's module (and the inline module, such as `mod tests`,
//! the path sits in); a first segment naming a child module (`pub use builder::X` in a
//! `mod.rs`) goes to that child. A `mod foo;` declaration is not an edge, and neither is a path
//! in a comment or a string. `src/bin/wharf/` is a crate of its own and is checked as a
//! graph of its own. Std only: no syn, no cargo metadata.
//!
//! Run `cargo test --test layout -- --nocapture` to see the layers, with `--ignored` for the
//! checks that wait for the core's reshape; `WHARF_LAYOUT_ROOT=../other` checks another tree.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// The leaves, lowest rank first. A file matching a pattern (a file, or a folder ending in
/// `/`) may import only files that match a pattern of the same or a lower rank.
const LEAVES: &[(&str, u8)] = &[
    ("src/storage/", 0),
    ("src/failpoint.rs", 0),
    ("src/limits.rs", 0),
    ("src/clock.rs", 0),
    ("src/crc.rs", 0),
    ("src/error.rs", 1),
    ("src/record.rs", 2),
];

/// The most lines a file may have before its test module (its first `#[cfg(test)]` that
/// opens an inline `mod .. {`).
const MAX_CODE_LINES: usize = 700;

/// Subsystem folders: no cycle among a folder's own files either, and no file of the library
/// imports through the crate root (`crate::Wharf`: `lib.rs` only re-exports).
const RESHAPED: &[&str] = &[
    "src/bridge/",
    "src/checkpoint/",
    "src/log/",
    "src/queue/",
    "src/salvage/",
    "src/storage/",
    "src/store/",
    "src/verify/",
    "src/worker/",
];

// ---------------------------------------------------------------------------------------------
// Reading the source text.

/// `src` with every comment, string literal and char literal blanked out (newlines kept, so
/// line numbers still hold). Lifetimes and labels (`'a`) are kept as they are.
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, s: &[char]| {
        for &ch in s {
            out.push(if ch == '\n' { '\n' } else { ' ' });
        }
    };
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let rest = &c[i..];
        if rest.starts_with(&['/', '/']) {
            let end = rest.iter().position(|&ch| ch == '\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(&['/', '*']) {
            // Block comments nest.
            let (mut depth, mut j) = (0usize, 0);
            while j < rest.len() {
                if rest[j..].starts_with(&['/', '*']) {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(&['*', '/']) {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j.min(rest.len())]);
            i += j.min(rest.len());
        } else if c[i] == '"' {
            // A raw string if `r` and `#`s come right before (`r"`, `r#"`, `br##"`...).
            let hashes = out.chars().rev().take_while(|&ch| ch == '#').count();
            let before: Vec<char> = out.chars().rev().skip(hashes).take(3).collect();
            let raw = before.first() == Some(&'r')
                && match before.get(1) {
                    None => true,
                    Some(&p) if p == 'b' || p == 'c' => !before.get(2).is_some_and(|&q| ident(q)),
                    Some(&p) => !ident(p),
                };
            let mut j = 1;
            if raw {
                let close: Vec<char> =
                    std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
                while j < rest.len() && !rest[j..].starts_with(&close) {
                    j += 1;
                }
                j = (j + close.len()).min(rest.len());
            } else {
                while j < rest.len() && rest[j] != '"' {
                    j += if rest[j] == '\\' { 2 } else { 1 };
                }
                j = (j + 1).min(rest.len());
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if c[i] == '\'' {
            // A char literal (`'x'`, `'\n'`, `'\''`, `'\u{..}'`), or else a lifetime or label.
            let end = if rest.get(1) == Some(&'\\') {
                rest.iter().skip(3).position(|&ch| ch == '\'').map(|p| p + 3)
            } else if rest.get(2) == Some(&'\'') {
                Some(2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    blank(&mut out, &rest[..=e]);
                    i += e + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// The tokens of stripped text, each with its line (from 1). `$crate` is read as `crate`;
/// numbers are dropped.
fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphabetic() || ch == '_' || (ch == '$' && c.get(i + 1) == Some(&'c')) {
            let start = if ch == '$' { i + 1 } else { i };
            let mut j = start;
            while j < c.len() && (c[j].is_alphanumeric() || c[j] == '_') {
                j += 1;
            }
            out.push((Tok::Ident(c[start..j].iter().collect()), line));
            i = j;
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Path, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

fn is_ident(t: Option<&(Tok, usize)>, s: &str) -> bool {
    matches!(t, Some((Tok::Ident(x), _)) if x == s)
}

/// Parses the use tree at `toks[*i]` into full paths below `prefix`, each with the name it
/// brings in: `a::{b, c::{d as e}}` gives `a::b` (`b`) and `a::c::d` (`e`); `a::*` gives `a`
/// (`*`); `a::{self}` gives `a` (`a`).
fn use_tree(
    toks: &[(Tok, usize)],
    i: &mut usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, String)>,
) {
    let mut glob = false;
    let mut path = prefix.to_vec();
    loop {
        match toks.get(*i).map(|t| &t.0) {
            Some(Tok::Path) => *i += 1,
            Some(Tok::Ident(s)) if s != "as" => {
                if s != "self" || path.is_empty() {
                    path.push(s.clone());
                }
                *i += 1;
                if toks.get(*i).map(|t| &t.0) != Some(&Tok::Path) {
                    break;
                }
            }
            Some(Tok::Punct('{')) => {
                *i += 1;
                while let Some((t, _)) = toks.get(*i) {
                    match t {
                        Tok::Punct('}') => {
                            *i += 1;
                            break;
                        }
                        Tok::Punct(',') => *i += 1,
                        _ => {
                            let before = *i;
                            use_tree(toks, i, &path, out);
                            if *i == before {
                                *i += 1; // something unexpected: skip it
                            }
                        }
                    }
                }
                return;
            }
            Some(Tok::Punct('*')) => {
                glob = true;
                *i += 1;
                break;
            }
            _ => break,
        }
    }
    let mut name = if glob { "*".to_owned() } else { path.last().cloned().unwrap_or_default() };
    if is_ident(toks.get(*i), "as") {
        if let Some((Tok::Ident(alias), _)) = toks.get(*i + 1) {
            name = alias.clone();
        }
        *i += 2;
    }
    if !path.is_empty() {
        out.push((path, name));
    }
}

/// A path a file names, where it names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    line: usize,
    /// The inline modules (`mod tests { .. }`) the path sits in, outermost first.
    inline: Vec<String>,
    path: Vec<String>,
    /// The name it is re-exported as, for a path of a `pub use` (a façade's re-export).
    reexport: Option<String>,
}

/// Every path of two or more segments a file names (in `use` items and inline), with the
/// inline modules each sits in. `mod foo;` names nothing.
fn named_paths(src: &str) -> Vec<Named> {
    let toks = tokens(&strip(src));
    let mut out = Vec::new();
    let mut inline: Vec<(String, usize)> = Vec::new(); // (name, brace depth inside it)
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let (t, line) = (&toks[i].0, toks[i].1);
        match t {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|&(_, d)| d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Tok::Ident(k) if k == "mod" => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Punct('{'), _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    depth += 1;
                    inline.push((name.clone(), depth));
                    i += 3;
                } else {
                    i += 1;
                }
            }
            Tok::Ident(k) if k == "use" => {
                // `pub use` or `pub(..) use`: a re-export.
                let public = is_ident(toks.get(i.wrapping_sub(1)), "pub")
                    || (toks.get(i.wrapping_sub(1)).map(|t| &t.0) == Some(&Tok::Punct(')'))
                        && (2..6).any(|k| {
                            is_ident(toks.get(i.wrapping_sub(k)), "pub")
                                && toks.get(i.wrapping_sub(k - 1)).map(|t| &t.0)
                                    == Some(&Tok::Punct('('))
                        }));
                i += 1;
                let mut paths = Vec::new();
                use_tree(&toks, &mut i, &[], &mut paths);
                let names: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
                for (path, name) in paths {
                    let reexport = public.then_some(name);
                    out.push(Named { line, inline: names.clone(), path, reexport });
                }
            }
            Tok::Ident(first) if toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Path) => {
                let after_path = i > 0 && toks[i - 1].0 == Tok::Path;
                let mut path = vec![first.clone()];
                let mut j = i + 1;
                while toks.get(j).map(|t| &t.0) == Some(&Tok::Path) {
                    match toks.get(j + 1) {
                        Some((Tok::Ident(s), _)) => {
                            path.push(s.clone());
                            j += 2;
                        }
                        _ => break,
                    }
                }
                if !after_path && path.len() > 1 {
                    let names = inline.iter().map(|(n, _)| n.clone()).collect();
                    out.push(Named { line, inline: names, path, reexport: None });
                }
                i = j.max(i + 1);
            }
            _ => i += 1,
        }
    }
    out
}

/// Lines before the test module: up to the first `#[cfg(test)]` that (after more attributes)
/// opens an inline module, else the whole file.
fn code_lines(src: &str) -> usize {
    let lines: Vec<&str> = src.lines().collect();
    for (n, l) in lines.iter().enumerate() {
        if l.trim() != "#[cfg(test)]" {
            continue;
        }
        let next = lines[n + 1..].iter().map(|l| l.trim()).find(|l| !l.starts_with("#["));
        let opens_mod = next.is_some_and(|l| {
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
            l.starts_with("mod ") && l.ends_with('{')
        });
        if opens_mod {
            return n;
        }
    }
    lines.len()
}

// ---------------------------------------------------------------------------------------------
// The graph.

/// One crate's files and the edges between them.
struct Graph {
    /// Module path (`["storage", "sim"]`) -> file (`src/storage/sim/mod.rs`).
    modules: BTreeMap<Vec<String>, String>,
    /// Its files' text.
    text: BTreeMap<String, String>,
    /// (from, to) -> the first place `from` names `to`: (line, path).
    edges: BTreeMap<(String, String), (usize, String)>,
    /// Module -> name -> the absolute path it re-exports (`pub use`): a façade's names.
    reexports: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>,
}

impl Graph {
    /// The crate rooted at `root_file` (`lib.rs` or `main.rs`) in `dir`, leaving out the
    /// folders in `skip`.
    fn read(repo: &Path, dir: &str, root_file: &str, skip: &[&str]) -> Graph {
        let mut files = Vec::new();
        walk(&repo.join(dir), &mut files);
        let mut modules = BTreeMap::new();
        let mut text = BTreeMap::new();
        for f in files {
            let rel =
                f.strip_prefix(repo).expect("below the repo").to_string_lossy().replace('\\', "/");
            if skip.iter().any(|s| rel.starts_with(s)) {
                continue;
            }
            let inner = rel.strip_prefix(&format!("{dir}/")).expect("below the crate");
            let mut segs: Vec<String> =
                inner.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
            if segs.last().is_some_and(|s| s == "mod") || inner == root_file {
                segs.pop();
            }
            text.insert(rel.clone(), fs::read_to_string(&f).expect("a readable source file"));
            modules.insert(segs, rel);
        }
        Graph::build(modules, text)
    }

    fn build(modules: BTreeMap<Vec<String>, String>, text: BTreeMap<String, String>) -> Graph {
        let mut g = Graph { modules, text, edges: BTreeMap::new(), reexports: BTreeMap::new() };
        let files: Vec<(Vec<String>, String)> =
            g.modules.iter().map(|(m, f)| (m.clone(), f.clone())).collect();
        // A façade's re-exports are names, not dependencies: an import through one is an
        // import of the file that defines the item.
        for (module, file) in &files {
            for n in named_paths(&g.text[file]) {
                let (Some(name), true) = (&n.reexport, n.inline.is_empty()) else { continue };
                if let Some(abs) = g.absolute(module, &[], &n.path) {
                    g.reexports.entry(module.clone()).or_default().insert(name.clone(), abs);
                }
            }
        }
        for (module, file) in files {
            for n in named_paths(&g.text[&file]) {
                // Re-exports, and test modules (which may use the whole crate), are no edges.
                if n.reexport.is_some() || n.inline.iter().any(|m| m == "tests") {
                    continue;
                }
                let Some(to) = g.resolve(&module, &n.inline, &n.path) else { continue };
                if to != file {
                    g.edges.entry((file.clone(), to)).or_insert((n.line, n.path.join("::")));
                }
            }
        }
        g
    }

    /// The absolute module path of a path named in `module` (inside `inline`), if it is one of
    /// this crate's.
    fn absolute(
        &self,
        module: &[String],
        inline: &[String],
        path: &[String],
    ) -> Option<Vec<String>> {
        let mut here: Vec<String> = module.iter().chain(inline).cloned().collect();
        let first = path.first()?.as_str();
        Some(match first {
            "crate" => path[1..].to_vec(),
            "super" | "self" => {
                let mut k = 0;
                if path[0] == "self" {
                    k = 1;
                }
                while path.get(k).is_some_and(|s| s == "super") {
                    here.pop()?;
                    k += 1;
                }
                here.extend(path[k..].iter().cloned());
                here
            }
            _ => {
                here.push(first.to_owned());
                if !self.modules.contains_key(&here) {
                    return None; // another crate, a type, a local module: no file of ours
                }
                here.extend(path[1..].iter().cloned());
                here
            }
        })
    }

    /// The file a path named in `module` (inside the inline modules `inline`) leads to: the
    /// longest prefix that is a file, followed through the re-exports of façades to the file
    /// that defines the item.
    fn resolve(&self, module: &[String], inline: &[String], path: &[String]) -> Option<String> {
        let mut abs = self.absolute(module, inline, path)?;
        for _ in 0..8 {
            let n = (0..=abs.len()).rev().find(|&n| self.modules.contains_key(&abs[..n]))?;
            let target = abs.get(n).and_then(|item| self.reexports.get(&abs[..n])?.get(item));
            match target {
                Some(t) if t[..] != abs[..=n] => {
                    abs = t.iter().chain(&abs[n + 1..]).cloned().collect();
                }
                _ => return self.modules.get(&abs[..n]).cloned(),
            }
        }
        None
    }

    /// The graph of the files `keep` keeps, and the edges between them.
    fn within(&self, keep: impl Fn(&str) -> bool) -> Graph {
        let modules =
            self.modules.iter().filter(|(_, f)| keep(f)).map(|(m, f)| (m.clone(), f.clone()));
        let text = self.text.iter().filter(|(f, _)| keep(f)).map(|(f, t)| (f.clone(), t.clone()));
        let edges = self.edges.iter().filter(|((a, b), _)| keep(a) && keep(b));
        Graph {
            modules: modules.collect(),
            text: text.collect(),
            edges: edges.map(|(k, v)| (k.clone(), v.clone())).collect(),
            reexports: self.reexports.clone(),
        }
    }

    fn files(&self) -> impl Iterator<Item = &String> {
        self.text.keys()
    }

    fn out<'a>(&'a self, f: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.edges.keys().filter(move |(a, _)| a == f).map(|(_, b)| b)
    }

    /// The strongly connected components (Tarjan), each sorted, in an order where a
    /// component comes after every component it imports.
    fn components(&self) -> Vec<Vec<String>> {
        struct T<'a> {
            g: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on: BTreeSet<&'a str>,
            out: Vec<Vec<String>>,
        }
        fn visit<'a>(t: &mut T<'a>, v: &'a str) {
            let n = t.index.len();
            t.index.insert(v, n);
            t.low.insert(v, n);
            t.stack.push(v);
            t.on.insert(v);
            for w in t.g.out(v) {
                if !t.index.contains_key(w.as_str()) {
                    visit(t, w);
                    let lw = t.low[w.as_str()];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w.as_str()) {
                    let iw = t.index[w.as_str()];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if t.low[v] == t.index[v] {
                let mut c = Vec::new();
                while let Some(w) = t.stack.pop() {
                    t.on.remove(w);
                    c.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                c.sort();
                t.out.push(c);
            }
        }
        let mut t = T {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on: BTreeSet::new(),
            out: Vec::new(),
        };
        for f in self.files() {
            if !t.index.contains_key(f.as_str()) {
                visit(&mut t, f);
            }
        }
        t.out
    }

    /// The cycles: components of more than one file, each with the edges inside it.
    fn cycles(&self) -> Vec<(Vec<String>, Vec<String>)> {
        let mut out = Vec::new();
        for c in self.components().into_iter().filter(|c| c.len() > 1) {
            let inside: BTreeSet<&String> = c.iter().collect();
            let edges = self
                .edges
                .iter()
                .filter(|((a, b), _)| inside.contains(a) && inside.contains(b))
                .map(|((a, b), (line, p))| format!("{a}:{line} -> {b} ({p})"))
                .collect();
            out.push((c, edges));
        }
        out
    }

    /// The layers of folders (top-level modules), lowest first: each line's folders import
    /// only folders of earlier lines (or each other, when joined by `+`: a folder-level cycle).
    fn layers(&self) -> String {
        let folder = |f: &str| -> String {
            let m = self.modules.iter().find(|(_, v)| v.as_str() == f).map(|(k, _)| k.clone());
            match m.as_deref() {
                Some([first, ..]) => first.clone(),
                _ => Path::new(f).file_name().map_or(f.into(), |n| n.to_string_lossy().into()),
            }
        };
        let mut fedges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in self.files() {
            fedges.entry(folder(f)).or_default();
        }
        for (a, b) in self.edges.keys() {
            let (fa, fb) = (folder(a), folder(b));
            if fa != fb {
                fedges.entry(fa).or_default().insert(fb);
            }
        }
        // The folder graph as a Graph of its own, to reuse Tarjan.
        let mut fg = Graph {
            modules: BTreeMap::new(),
            text: BTreeMap::new(),
            edges: BTreeMap::new(),
            reexports: BTreeMap::new(),
        };
        for (a, bs) in &fedges {
            fg.text.insert(a.clone(), String::new());
            for b in bs {
                fg.edges.insert((a.clone(), b.clone()), (0, String::new()));
            }
        }
        let comps = fg.components();
        let mut level: BTreeMap<&String, usize> = BTreeMap::new();
        let mut by_level: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for c in &comps {
            let l = c
                .iter()
                .flat_map(|a| fedges[a].iter())
                .filter(|b| !c.contains(b))
                .map(|b| level.get(b).map_or(0, |l| l + 1))
                .max()
                .unwrap_or(0);
            for a in c {
                level.insert(a, l);
            }
            by_level.entry(l).or_default().push(c.join("+"));
        }
        let mut s = String::new();
        for (l, names) in by_level {
            let _ = writeln!(s, "  layer {l}: {}", names.join(", "));
        }
        s
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// This checkout, or the one `WHARF_LAYOUT_ROOT` names (to check another branch's tree).
fn repo() -> PathBuf {
    std::env::var_os("WHARF_LAYOUT_ROOT")
        .map_or(PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// The library and the `wharf` command, each a graph of its own.
fn crates() -> Vec<(&'static str, Graph)> {
    let r = repo();
    let mut out = vec![("library (src/)", Graph::read(&r, "src", "lib.rs", &["src/bin/"]))];
    if r.join("src/bin/wharf/main.rs").exists() {
        out.push(("command (src/bin/wharf/)", Graph::read(&r, "src/bin/wharf", "main.rs", &[])));
    }
    out
}

fn report_layers(crates: &[(&str, Graph)]) -> String {
    let mut s = String::new();
    for (name, g) in crates {
        let _ = writeln!(
            s,
            "{name}: {} files, {} edges; layers, lowest first:",
            g.text.len(),
            g.edges.len()
        );
        s.push_str(&g.layers());
    }
    s
}

fn report_cycles(g: &Graph, keep: impl Fn(&[String]) -> bool) -> Vec<String> {
    g.cycles()
        .into_iter()
        .filter(|(c, _)| keep(c))
        .map(|(c, edges)| {
            format!("cycle of {} files: {}\n    {}", c.len(), c.join(", "), edges.join("\n    "))
        })
        .collect()
}

fn leaf_rank(file: &str) -> Option<u8> {
    LEAVES
        .iter()
        .find(|(p, _)| if p.ends_with('/') { file.starts_with(p) } else { file == *p })
        .map(|&(_, r)| r)
}

// ---------------------------------------------------------------------------------------------
// The checks.

#[test]
fn no_file_level_import_cycle() {
    let crates = crates();
    let found: Vec<String> = crates.iter().flat_map(|(_, g)| report_cycles(g, |_| true)).collect();
    assert!(found.is_empty(), "{}\n{}", found.join("\n"), report_layers(&crates));
}

#[test]
fn leaves_import_nothing_above_them() {
    let crates = crates();
    let g = &crates[0].1;
    let mut bad = Vec::new();
    for ((a, b), (line, path)) in &g.edges {
        let Some(ra) = leaf_rank(a) else { continue };
        if leaf_rank(b).is_none_or(|rb| rb > ra) {
            bad.push(format!("{a}:{line} -> {b} ({path})"));
        }
    }
    assert!(
        bad.is_empty(),
        "leaves importing above them:\n{}\n{}",
        bad.join("\n"),
        report_layers(&crates)
    );
}

#[test]
fn no_file_passes_700_lines_of_code() {
    let crates = crates();
    let big: Vec<String> = crates
        .iter()
        .flat_map(|(_, g)| g.text.iter())
        .map(|(f, t)| (f, code_lines(t)))
        .filter(|&(_, n)| n > MAX_CODE_LINES)
        .map(|(f, n)| format!("{f}: {n} lines before its tests"))
        .collect();
    assert!(big.is_empty(), "over {MAX_CODE_LINES} lines of code:\n{}", big.join("\n"));
}

/// The subsystem folders stay in shape (no cycle among their own files, no big file), no file
/// imports through the crate root, and the whole graph is readable.
#[test]
fn folders_stay_in_shape() {
    let crates = crates();
    println!("{}", report_layers(&crates));
    let g = &crates[0].1;
    assert!(g.text.contains_key("src/lib.rs") && g.edges.len() > 50, "{:?}", g.edges.len());
    let mut bad = Vec::new();
    for folder in RESHAPED {
        bad.extend(report_cycles(&g.within(|f| f.starts_with(folder)), |_| true));
    }
    let ours = |f: &str| RESHAPED.iter().any(|p| f.starts_with(p));
    for file in g.modules.values() {
        if file == "src/lib.rs" {
            continue;
        }
        for n in named_paths(&g.text[file]) {
            let test = n.inline.iter().any(|m| m == "tests");
            let root = n.path.first().is_some_and(|p| p == "crate")
                && n.path.get(1).is_some_and(|m| !g.modules.contains_key(&vec![m.clone()]));
            if root && !test && n.reexport.is_none() {
                let (line, path) = (n.line, n.path.join("::"));
                bad.push(format!("{file}:{line} imports through the crate root ({path})"));
            }
        }
    }
    for (f, t) in &g.text {
        if ours(f) && code_lines(t) > MAX_CODE_LINES {
            bad.push(format!("{f}: {} lines before its tests", code_lines(t)));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The parser, on small strings.

fn paths(src: &str) -> Vec<String> {
    named_paths(src).into_iter().map(|n| n.path.join("::")).collect()
}

#[test]
fn comments_and_strings_name_no_path() {
    let src = r###"
        // use crate::a::B;
        /// See [`crate::b::C`].
        /* crate::c::D /* nested crate::d::E */ still crate::e::F */
        const S: &str = "crate::f::G \" crate::g::H";
        const R: &str = r#"crate::h::I " crate::i::J"#;
        const C: char = '"'; const Q: char = '\''; fn f<'a>(x: &'a str) {}
        use crate::real::Thing;
    "###;
    assert_eq!(paths(src), ["crate::real::Thing"]);
}

#[test]
fn use_groups_nest_rename_and_glob() {
    let src = "use crate::{a::X, b::{Y, Z as W, self}, c::*};\nuse super::{mmap, traits::T};";
    assert_eq!(
        paths(src),
        [
            "crate::a::X",
            "crate::b::Y",
            "crate::b::Z",
            "crate::b",
            "crate::c",
            "super::mmap",
            "super::traits::T"
        ]
    );
}

#[test]
fn inline_paths_count_but_mod_declarations_do_not() {
    let src = "mod foo;\npub(crate) mod bar;\nfn f() { let x = crate::queue::Queue::new(); super::super::X::y(); Vec::<u8>::new(); }";
    assert_eq!(paths(src), ["crate::queue::Queue::new", "super::super::X::y"]);
    assert!(named_paths("pub(super) fn f() {}").is_empty());
}

#[test]
fn inline_modules_are_tracked() {
    let src = "use super::a::B;\n#[cfg(test)]\nmod tests {\n    use super::*;\n    fn f() { if true { } }\n}\nuse self::c::D;";
    let n = named_paths(src);
    let got: Vec<(String, Vec<String>)> =
        n.into_iter().map(|n| (n.path.join("::"), n.inline)).collect();
    assert_eq!(
        got,
        [
            ("super::a::B".into(), vec![]),
            ("super".into(), vec!["tests".to_string()]),
            ("self::c::D".into(), vec![]),
        ]
    );
}

/// A toy crate: the files and their text.
fn toy(files: &[(&str, &str)]) -> Graph {
    let mut modules = BTreeMap::new();
    let mut text = BTreeMap::new();
    for (f, t) in files {
        let inner = f.strip_prefix("src/").expect("under src/");
        let mut segs: Vec<String> =
            inner.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
        if segs.last().is_some_and(|s| s == "mod") || inner == "lib.rs" {
            segs.pop();
        }
        modules.insert(segs, (*f).to_owned());
        text.insert((*f).to_owned(), (*t).to_owned());
    }
    Graph::build(modules, text)
}

fn edges(g: &Graph) -> Vec<String> {
    g.edges.keys().map(|(a, b)| format!("{a} -> {b}")).collect()
}

#[test]
fn paths_resolve_to_the_longest_file_prefix() {
    let g = toy(&[
        ("src/lib.rs", "mod queue; mod store; pub use queue::Queue;"),
        ("src/queue/mod.rs", "mod push; pub(crate) use push::push;"),
        ("src/queue/push.rs", "use crate::store::Shared; use crate::queue::Queue; fn f() { crate::Thing::new(); }"),
        ("src/store.rs", "use crate::queue::push::Helper;\n#[cfg(test)]\nmod tests { use super::*; use super::super::queue::X; }"),
    ]);
    assert_eq!(
        edges(&g),
        [
            // Re-exports and test modules are no edges; `crate::queue::Queue` names nothing
            // the façade re-exports, so it stays the façade's.
            "src/queue/push.rs -> src/lib.rs",
            "src/queue/push.rs -> src/queue/mod.rs",
            "src/queue/push.rs -> src/store.rs",
            "src/store.rs -> src/queue/push.rs",
        ]
    );
    let cycles: Vec<Vec<String>> = g.cycles().into_iter().map(|(c, _)| c).collect();
    assert_eq!(cycles, [["src/queue/push.rs", "src/store.rs"]]);
}

#[test]
fn a_facade_with_sibling_imports_has_no_cycle() {
    let g = toy(&[
        ("src/lib.rs", "mod worker; pub use worker::Worker;"),
        (
            "src/worker/mod.rs",
            "mod builder; mod handle; pub use builder::B; pub use handle::Worker;",
        ),
        ("src/worker/builder.rs", "use super::handle::Worker;"),
        ("src/worker/handle.rs", "use crate::error::Error;"),
        ("src/error.rs", ""),
    ]);
    assert!(g.cycles().is_empty(), "{:?}", g.cycles());
    assert_eq!(g.layers(), "  layer 0: error, lib.rs\n  layer 1: worker\n");
}

#[test]
fn imports_through_a_facade_lead_to_the_file_that_defines_the_item() {
    let g = toy(&[
        ("src/lib.rs", "mod log; mod store; pub use store::Shared;"),
        ("src/log/mod.rs", "mod wal; mod commit; pub(crate) use self::wal::{Wal as W, Room};\npub(crate) use commit::*;"),
        ("src/log/wal.rs", ""),
        ("src/log/commit.rs", "use super::wal::Wal;"),
        ("src/store.rs", "use crate::log::{W, Room};\nfn f() { crate::log::W::new(); }"),
    ]);
    assert_eq!(
        edges(&g),
        ["src/log/commit.rs -> src/log/wal.rs", "src/store.rs -> src/log/wal.rs"]
    );
    assert!(g.cycles().is_empty());
}

#[test]
fn code_lines_stop_at_the_test_module() {
    assert_eq!(code_lines("a\nb\n#[cfg(test)]\nmod tests {\n}\n"), 2);
    assert_eq!(
        code_lines("#[cfg(test)]\npub(crate) mod faulty;\na\n#[cfg(test)]\n#[allow(x)]\nmod t {\n"),
        3
    );
    assert_eq!(code_lines("a\nb\nc"), 3);
}

#[test]
fn leaf_ranks_come_from_the_table() {
    assert_eq!(leaf_rank("src/storage/sim/fs.rs"), Some(0));
    assert_eq!(leaf_rank("src/record.rs"), Some(2));
    assert_eq!(leaf_rank("src/queue.rs"), None);
}
