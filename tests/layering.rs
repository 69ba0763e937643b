//! The layering guard: which room of `src/` may import which. Each room sits on a layer and
//! may import only rooms on lower layers, so the import graph has no circle and no arrow
//! that runs back up. A new room must be given a layer here; a new import that breaks the
//! order fails this test, naming the file. (In the style of rust-analyzer's `tidy.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Rooms from the bottom (the kernel's facts) to the top (the command line).
const LAYERS: &[&[&str]] = &[
    &["escape"],
    &["kernel"],
    &["baseline", "service", "supervise"],
    &["verdict"],
    // The protocol: plain data and leaf enums, knowing nothing of its server.
    &["audit", "ipc"],
    &["config"],
    &["registry", "tune"],
    &["engine"],
    &["handover", "runtime", "arming"],
    &["metrics", "doctor", "robustness"],
    &["daemon"],
    &["settings"],
    &["cli"],
];

/// Rooms only a few others may import, whatever their layer.
const ONLY_FROM: &[(&str, &[&str])] = &[
    // The composition of flags, file and defaults: only the command line uses it.
    ("settings", &["cli"]),
];

/// Rooms a room may not import although they sit below it.
const NEVER: &[(&str, &[&str])] = &[
    // The armer speaks its own terms; the daemon maps the wire to them (`daemon/wire.rs`).
    ("arming", &["ipc"]),
];

fn layer_of(room: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&room))
}

/// The room of a file under `src/`: its first path component, without `.rs`.
fn room_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source a build without tests compiles: line comments dropped, and everything from a
/// `#[cfg(test)]` module on (test modules sit at the end of a file).
fn non_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod ") || n.contains(" mod "))
        {
            break;
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The first names after each `crate::` (also inside `crate::{a, b::{c, d}}` groups).
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `mycrate::`, `$crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut end = group.len();
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let inner = &group[..end];
            let mut depth = 0;
            let mut item = String::new();
            for c in inner.chars().chain(std::iter::once(',')) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if let Some(name) = first_name(&item) {
                            out.insert(name);
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else if let Some(name) = first_name(rest) {
            out.insert(name);
        }
    }
    out
}

fn first_name(s: &str) -> Option<String> {
    let name: String = s
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty() && name != "self").then_some(name)
}

/// Every room's imports of other rooms, with the files that make them.
fn import_graph() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rooms: BTreeSet<String> = files
        .iter()
        .filter_map(|f| room_of(f.strip_prefix(&src).ok()?))
        .collect();
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for f in &files {
        let Ok(rel) = f.strip_prefix(&src) else {
            continue;
        };
        let name = rel.to_string_lossy();
        let test_file = name.ends_with("tests.rs") || name.contains("/tests/");
        let Some(room) = room_of(rel) else { continue };
        if test_file || room == "bin" || room == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for imported in crate_imports(&non_test_code(&text)) {
            if imported != room && rooms.contains(&imported) {
                graph
                    .entry(room.clone())
                    .or_default()
                    .entry(imported)
                    .or_default()
                    .insert(name.to_string());
            }
        }
    }
    graph
}

#[test]
fn every_room_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let unplaced: BTreeSet<String> = files
        .iter()
        .filter_map(|f| room_of(f.strip_prefix(&src).ok()?))
        .filter(|r| r != "bin" && r != "lib" && layer_of(r).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "rooms with no layer in tests/layering.rs: {unplaced:?}"
    );
}

#[test]
fn no_room_imports_a_room_above_or_beside_it() {
    let mut wrong = Vec::new();
    for (room, imports) in import_graph() {
        let Some(from) = layer_of(&room) else {
            continue;
        };
        for (imported, files) in imports {
            let Some(to) = layer_of(&imported) else {
                continue;
            };
            if to >= from {
                wrong.push(format!(
                    "{room} (layer {from}) imports {imported} (layer {to}) in {files:?}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn restricted_rooms_are_imported_only_by_their_users() {
    let graph = import_graph();
    let mut wrong = Vec::new();
    for (restricted, users) in ONLY_FROM {
        for (room, imports) in &graph {
            if let Some(files) = imports.get(*restricted) {
                if !users.contains(&room.as_str()) {
                    wrong.push(format!("{room} imports {restricted} in {files:?}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn rooms_keep_off_what_they_must_not_know() {
    let graph = import_graph();
    let mut wrong = Vec::new();
    for (room, forbidden) in NEVER {
        for f in *forbidden {
            if let Some(files) = graph.get(*room).and_then(|i| i.get(*f)) {
                wrong.push(format!("{room} imports {f} in {files:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Non-test lines a file of `src/` may hold: past it, a file holds more than one concern.
const FILE_BUDGET: usize = 520;

/// Lines a function may span.
const FUNCTION_BUDGET: usize = 100;

/// Functions over the budget from before it was kept, each to be split when its file is
/// next worked on (then it leaves this list).
const LONG_FUNCTIONS: &[(&str, &str)] = &[
    ("baseline/format.rs", "decode"),
    ("kernel/features.rs", "probe"),
];

/// The functions of `code` (non-test source) with their line counts, by brace matching
/// (strings, char literals and comments stripped).
fn functions(code: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        let (mut depth, mut started) = (0i64, false);
        for (j, l) in lines[i..].iter().enumerate() {
            let l = strip_literals(l);
            depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
            started |= l.contains('{');
            if !started && l.trim_end().ends_with(';') {
                break;
            }
            if started && depth <= 0 {
                out.push((name.clone(), j + 1));
                break;
            }
        }
    }
    out
}

fn fn_name(line: &str) -> Option<String> {
    let mut t = line.trim_start();
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        t = t.strip_prefix(prefix).unwrap_or(t);
    }
    if let Some(rest) = t.strip_prefix("pub(in ") {
        t = rest.split_once(") ").map_or(rest, |(_, r)| r);
    }
    let rest = t.strip_prefix("fn ")?;
    let name: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

fn strip_literals(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == '"' {
                        break;
                    }
                }
            }
            '\'' => {
                // A char literal ('{', '\n'); a lifetime ('a) has no closing quote nearby.
                let ahead: String = chars.clone().take(3).collect();
                if ahead.starts_with('\\') {
                    let _ = chars.nth(2);
                } else if ahead.chars().nth(1) == Some('\'') {
                    let _ = chars.nth(1);
                }
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

/// Every file of `src/` within its budget, and every function within its own.
#[test]
fn files_and_functions_keep_their_budgets() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let Ok(rel) = f.strip_prefix(&src) else {
            continue;
        };
        let name = rel.to_string_lossy().into_owned();
        if name.ends_with("tests.rs") || name.contains("/tests/") {
            continue;
        }
        let code = non_test_code(&std::fs::read_to_string(f).unwrap_or_default());
        let lines = code.lines().count();
        if lines > FILE_BUDGET {
            wrong.push(format!("{name}: {lines} lines (budget {FILE_BUDGET})"));
        }
        for (func, n) in functions(&code) {
            if n > FUNCTION_BUDGET && !LONG_FUNCTIONS.contains(&(name.as_str(), func.as_str())) {
                wrong.push(format!(
                    "{name}: fn {func} is {n} lines (budget {FUNCTION_BUDGET})"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "over budget:\n{}", wrong.join("\n"));
}

#[test]
fn the_function_counter_sees_braces_in_literals_as_text() {
    let code = "fn a() {\n    let s = \"{{\";\n    let c = '{';\n    // }\n}\nfn b();\n";
    assert_eq!(functions(code), [("a".to_string(), 5)]);
}

/// The crate's documentation names every room, so its data flow stays the map of `src/`.
#[test]
fn the_crate_docs_name_every_room() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let docs: String = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let unnamed: Vec<&str> = LAYERS
        .iter()
        .flat_map(|l| l.iter())
        .copied()
        .filter(|room| {
            !docs.contains(&format!("[`{room}`]")) && !docs.contains(&format!("`{room}`"))
        })
        .collect();
    assert!(
        unnamed.is_empty(),
        "rooms the data flow in lib.rs does not name: {unnamed:?}"
    );
}

#[test]
fn the_parser_sees_grouped_and_nested_imports() {
    let code = non_test_code(
        "use crate::{a::X, b::{c, d}, self};\nfn f() { crate::e::g(); } // crate::comment\n#[cfg(test)]\nmod tests { use crate::t; }\n",
    );
    let got: Vec<String> = crate_imports(&code).into_iter().collect();
    assert_eq!(got, ["a", "b", "e"]);
}
