//! The workspace's layout rules (docs/architecture.md, Layout), checked on the source tree:
//!
//! - no import circle between the top-level modules of `receiver/src`, `operator/src` and
//!   `config/src` (a module is a file or folder directly under `src/`; `A -> B` when A's
//!   code, outside comments and its unit tests, names a `crate::B` path);
//! - the operator depends on `metahook-config`, never on `metahook-receiver`;
//! - `metahook-config` links no runtime, network client or TLS stack.
//!
//! The circle check is the logic of /work/shared/tools/mod_cycles.py, ported so that a new
//! circle fails `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace root (this crate is `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The top-level modules of a crate's `src` and the files of each.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules = BTreeMap::new();
    let entries =
        std::fs::read_dir(src).unwrap_or_else(|err| panic!("cannot read {}: {err}", src.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 file name")
            .to_owned();
        if matches!(name.as_str(), "lib.rs" | "main.rs" | "bin") {
            continue;
        }
        if let Some(stem) = name.strip_suffix(".rs") {
            modules.insert(stem.to_owned(), vec![path]);
        } else if path.is_dir() {
            modules.insert(name, rust_files(&path));
        }
    }
    modules
}

/// A file's code as the check reads it: without `//` lines and without its unit tests
/// (`#[cfg(test)] mod tests {` to the end of the file).
fn code(text: &str) -> String {
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect();
    let mut code = kept.join("\n");
    let mut from = 0;
    while let Some(at) = code[from..].find("#[cfg(test)]") {
        let start = from + at;
        let rest = code[start + "#[cfg(test)]".len()..].trim_start();
        let is_tests = rest
            .strip_prefix("mod")
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix("tests"))
            .is_some_and(|r| r.trim_start().starts_with('{'));
        if is_tests {
            code.truncate(start);
            break;
        }
        from = start + 1;
    }
    code
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first path segments after `crate::` in `code`, groups (`crate::{a, b::C}`) included.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        if code[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or_default();
            for item in group.split(',') {
                let first = item.trim().split("::").next().unwrap_or_default();
                let first: String = first.chars().take_while(|c| is_ident(*c)).collect();
                if !first.is_empty() {
                    names.insert(first);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// Each module's edges to the other modules of the same crate.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    modules
        .iter()
        .map(|(name, files)| {
            let mut to = BTreeSet::new();
            for file in files {
                let text = std::fs::read_to_string(file)
                    .unwrap_or_else(|err| panic!("cannot read {}: {err}", file.display()));
                to.extend(
                    crate_paths(&code(&text))
                        .into_iter()
                        .filter(|n| n != name && modules.contains_key(n)),
                );
            }
            (name.clone(), to)
        })
        .collect()
}

/// The strongly connected components of more than one module (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.out.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !tarjan.index.contains_key(v.as_str()) {
            tarjan.visit(v);
        }
    }
    tarjan.out
}

#[test]
fn no_module_imports_itself_through_another() {
    let mut found = Vec::new();
    for krate in ["receiver", "operator", "config"] {
        let src = root().join(krate).join("src");
        for circle in circles(&edges(&src)) {
            found.push(format!("{krate}/src: {}", circle.join(" ")));
        }
    }
    assert!(
        found.is_empty(),
        "import circles between top-level modules (break them: a leaf module for what both \
         sides need, or settings passed as values; docs/architecture.md, Layout):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_finds_a_circle_and_ignores_comments_and_unit_tests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir(src.join("c")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "pub mod a; pub mod b; pub mod c;\n").expect("write");
    std::fs::write(src.join("a.rs"), "use crate::{b::B, c};\n").expect("write");
    std::fs::write(src.join("b.rs"), "// crate::a in a comment\npub struct B;\n#[cfg(test)]\nmod tests {\n    use crate::a;\n}\n").expect("write");
    std::fs::write(
        src.join("c").join("mod.rs"),
        "fn f() { my_crate::a::f(); }\n",
    )
    .expect("write");
    assert!(circles(&edges(src)).is_empty());
    std::fs::write(src.join("c").join("inner.rs"), "pub use crate::a::X;\n").expect("write");
    assert_eq!(
        circles(&edges(src)),
        vec![vec!["a".to_owned(), "c".to_owned()]]
    );
}

/// The `[dependencies]` of a crate's Cargo.toml: each line's key.
fn dependencies(krate: &str) -> Vec<String> {
    let path = root().join(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let mut in_dependencies = false;
    let mut names = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
        } else if in_dependencies && !line.is_empty() && !line.starts_with('#') {
            let key = line.split(['=', '.']).next().unwrap_or_default().trim();
            names.push(key.to_owned());
        }
    }
    names
}

#[test]
fn the_operator_depends_on_the_configuration_not_the_receiver() {
    let operator = dependencies("operator");
    assert!(
        operator.iter().any(|d| d == "metahook-config"),
        "{operator:?}"
    );
    assert!(
        !operator.iter().any(|d| d == "metahook-receiver"),
        "the operator must not link the receiver: {operator:?}"
    );
    let config = dependencies("config");
    for heavy in [
        "tokio",
        "hyper",
        "hyper-util",
        "async-nats",
        "tokio-postgres",
        "reqwest",
        "rustls",
        "metahook-receiver",
    ] {
        assert!(
            !config.iter().any(|d| d == heavy),
            "metahook-config must stay pure, but depends on {heavy}"
        );
    }
}
