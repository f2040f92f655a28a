//! The runtime's modules import each other without a circle (issue 13 and
//! `docs/design.md`, "The house"): the checkpoint protocol does not import
//! telemetry, the state backends do not import the operators, the metrics do
//! not import the job supervisor. A new import that closes a circle fails
//! here with the circle's modules and the imports between them.
//!
//! The graph is read from the sources: every `use crate::...` /
//! `use super::...` (with `{...}` groups) and every inline `crate::a::b`
//! path outside comments and `#[cfg(test)]` code, each resolved to the
//! longest module it names. A parent module and its submodules count as
//! separate nodes, but an edge from a module to its own submodules (the
//! parent declaring and re-exporting its children) is not an import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name (`checkpoint::storage`, `""` for the crate root) -> source.
fn modules(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                    parts.pop();
                }
                out.insert(parts.join("::"), std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    out
}

/// The source without `#[cfg(test)]` code (at the end of each file) and
/// without `//` comments.
fn code(src: &str) -> String {
    let src = src.split("#[cfg(test)]").next().unwrap_or("");
    src.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a use tree (`a::{b, c::{d}}`) into paths.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let mut depth = 0;
    let mut item = String::new();
    let mut items = Vec::new();
    for ch in tree.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if ch == ',' && depth == 0 {
            items.push(std::mem::take(&mut item));
        } else {
            item.push(ch);
        }
    }
    items.push(item);
    for it in items {
        let it = it.trim();
        if it.is_empty() {
            continue;
        }
        match it.find("::{") {
            Some(i) if it.ends_with('}') => {
                let mut p = prefix.to_vec();
                p.extend(segments(&it[..i]));
                expand(&p, &it[i + 3..it.len() - 1], out);
            }
            _ if it.starts_with('{') && it.ends_with('}') => {
                expand(prefix, &it[1..it.len() - 1], out)
            }
            _ => {
                let mut p = prefix.to_vec();
                p.extend(segments(it.split(" as ").next().unwrap_or(it)));
                out.push(p);
            }
        }
    }
}

fn segments(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// The paths a module's code names, each absolute (from the crate root).
fn paths(module: &str, code: &str) -> Vec<Vec<String>> {
    let me: Vec<String> = segments(module).collect();
    // In a file with inline modules, `super::` mostly means the file's own module.
    let inline_mods = code.lines().any(|l| {
        let t = l.trim_start();
        let t = t.strip_prefix("pub(crate) ").unwrap_or(t);
        let t = t.strip_prefix("pub ").unwrap_or(t);
        t.starts_with("mod ") && t.trim_end().ends_with('{')
    });
    let base = |kw: &str| -> Vec<String> {
        if kw == "crate" {
            Vec::new()
        } else if inline_mods {
            me.clone()
        } else {
            me[..me.len().saturating_sub(1)].to_vec()
        }
    };
    let mut out = Vec::new();
    // `use crate::...;` and `use super::...;`, possibly over several lines.
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let after = &rest[i + 4..];
        let boundary = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        let end = after.find(';').unwrap_or(after.len());
        let stmt = after[..end].trim();
        for kw in ["crate", "super"] {
            if boundary {
                if let Some(tree) = stmt.strip_prefix(kw).and_then(|s| s.strip_prefix("::")) {
                    expand(&base(kw), tree, &mut out);
                }
            }
        }
        rest = &after[end.min(after.len())..];
    }
    // Inline paths: `crate::a::b` and `super::a`.
    for kw in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(i) = rest.find(kw) {
            let boundary = i == 0 || {
                let c = rest.as_bytes()[i - 1];
                !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
            };
            let after = &rest[i + kw.len()..];
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(after.len());
            if boundary {
                let mut p = base(kw.trim_end_matches(':'));
                p.extend(segments(&after[..len]));
                out.push(p);
            }
            rest = &after[len..];
        }
    }
    out
}

/// Module -> the modules it imports.
fn graph(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut g = BTreeMap::new();
    for (m, src) in mods {
        let mut deps = BTreeSet::new();
        for p in paths(m, &code(src)) {
            let target = (1..=p.len())
                .rev()
                .map(|k| p[..k].join("::"))
                .find(|c| mods.contains_key(c));
            let target = match target {
                Some(t) => t,
                // The root's re-exports of the error types.
                None if p.first().is_some_and(|s| {
                    matches!(
                        s.as_str(),
                        "Error" | "Result" | "KillError" | "SavepointError"
                    )
                }) =>
                {
                    "error".to_string()
                }
                None => continue,
            };
            let own_child =
                target.starts_with(&format!("{m}::")) || (m.is_empty() && !target.is_empty());
            if target != *m && !own_child {
                deps.insert(target);
            }
        }
        g.insert(m.clone(), deps);
    }
    g
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
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
        for w in &t.g[v] {
            let w = w.as_str();
            if !t.g.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(lw));
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn runtime_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime/src");
    graph(&modules(&root))
}

/// `g` with every module merged into its top-level module (a directory
/// such as `checkpoint/` is one node): the circle the rule forbids may also
/// run through two files of one directory.
fn top_level(g: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in g {
        let t = top(m);
        let entry = out.entry(t.clone()).or_default();
        entry.extend(deps.iter().map(|d| top(d)).filter(|d| *d != t));
    }
    out
}

#[test]
fn runtime_modules_import_each_other_without_a_circle() {
    assert_no_circle(&runtime_graph());
}

#[test]
fn runtime_directories_import_each_other_without_a_circle() {
    assert_no_circle(&top_level(&runtime_graph()));
}

fn assert_no_circle(g: &BTreeMap<String, BTreeSet<String>>) {
    let found = circles(g);
    let report: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .map(|m| {
                    let inside: Vec<&str> = g[m]
                        .iter()
                        .filter(|d| c.contains(d))
                        .map(String::as_str)
                        .collect();
                    format!("  {m} -> {}", inside.join(", "))
                })
                .collect();
            format!("circle {:?}:\n{}", c, edges.join("\n"))
        })
        .collect();
    assert!(found.is_empty(), "{}", report.join("\n"));
}

/// The protocol modules know nothing of telemetry, the backends nothing of
/// the operators, the metrics nothing of the job supervisor (they report
/// through observers and views instead).
#[test]
fn the_protocol_does_not_import_its_observers() {
    let g = runtime_graph();
    for (from, to) in [
        ("coordinator", "telemetry"),
        ("task", "telemetry"),
        ("task::runner", "telemetry"),
        ("task::upload", "telemetry"),
        ("job_shared", "telemetry"),
        ("metrics", "job"),
        ("state", "operator"),
        ("state::rocks", "operator"),
        ("checkpoint", "state"),
        ("exchange", "metrics"),
        ("graph", "metrics"),
    ] {
        assert!(g.contains_key(from), "no module {from}");
        assert!(!g[from].contains(to), "{from} imports {to}: {:?}", g[from]);
    }
}

/// The reader is not blind: it sees imports that exist.
#[test]
fn the_graph_sees_known_imports() {
    let g = runtime_graph();
    for (from, to) in [
        ("job", "deploy"),
        ("deploy", "task"),
        ("graph", "exchange"),
        ("task::runner", "exchange"),
        ("checkpoint", "snapshot"),
        ("restore", "graph"),
        ("exchange::local", "waits"),
        ("state", "checkpoint::storage"),
        ("telemetry", "metrics"),
    ] {
        assert!(
            g[from].contains(to),
            "{from} -> {to} not seen: {:?}",
            g[from]
        );
    }
    // A circle is found when there is one.
    let mut with_circle = g.clone();
    with_circle
        .get_mut("metrics")
        .unwrap()
        .insert("job".to_string());
    assert!(!circles(&with_circle).is_empty());
    // Through two files of one directory (observer -> checkpoint/mod.rs,
    // checkpoint/storage.rs -> observer): no circle between files, one
    // between directories.
    let mut across = g.clone();
    across
        .get_mut("checkpoint::storage")
        .unwrap()
        .insert("observer".to_string());
    assert!(circles(&across).is_empty());
    assert!(!circles(&top_level(&across)).is_empty());
}
