//! The shell commands of README.md, docs/quickstart.md and charts/metahook/README.md against
//! the repository, so a newcomer who pastes them meets no missing file, flag or Secret:
//!
//! - every repository path a command names (`examples/…`, `scripts/…`, `charts/…`, `crds/…`,
//!   …) exists;
//! - every `metahook-receiver` / `metahook-operator` subcommand and `--flag` a command uses
//!   (through `cargo run -p …`, or the binary itself) appears in that subcommand's `--help`
//!   of the built binary; a script's `--flag` appears in the script; a `helm --set KEY` is a
//!   key of charts/metahook/values.yaml;
//! - every Secret a WebhookSubscription applied by the page references (`kubectl apply -f
//!   examples/…`, or a `kubectl apply -f - <<EOF` document) is created by the page's own
//!   commands in its namespace, with the key referenced; an Ingress TLS Secret may instead
//!   come from cert-manager (an annotation `cert-manager.io/…` on the Ingress).
//!
//! `checker_finds_what_is_broken` feeds the checker a page with one fault of each kind, so
//! the checks are known to fail when they should.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use metahook_tests::testkit::workspace_bin;
use metahook_tests::tools::repo_root;
use serde_json::Value;

/// The pages whose commands are checked.
const PAGES: [&str; 3] = [
    "README.md",
    "docs/quickstart.md",
    "charts/metahook/README.md",
];

/// Top-level directories of the repository: a word starting with one names a file in it.
const REPO_DIRS: [&str; 9] = [
    "examples/",
    "scripts/",
    "charts/",
    "crds/",
    "docs/",
    "images/",
    "receiver/",
    "operator/",
    "tests/",
];

/// One simple command of a page: its words (quotes removed), and the document a heredoc
/// feeds it.
#[derive(Debug, Clone)]
struct Cmd {
    words: Vec<String>,
    heredoc: Option<String>,
}

/// The `sh` / `bash` / `console` fenced blocks of a Markdown page.
fn shell_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        match &mut current {
            None => {
                if let Some(lang) = trimmed.strip_prefix("```")
                    && matches!(lang.trim(), "sh" | "bash" | "shell")
                {
                    current = Some(String::new());
                }
            }
            Some(block) => {
                if trimmed.starts_with("```") {
                    blocks.push(std::mem::take(block));
                    current = None;
                } else {
                    block.push_str(line);
                    block.push('\n');
                }
            }
        }
    }
    blocks
}

/// The simple commands of a shell block: continuation lines joined, heredocs attached to
/// their command, `$(…)` substitutions taken out as commands of their own, and lists and
/// pipelines (`&&`, `||`, `|`, `;`, `&`) split.
fn commands(block: &str) -> Vec<Cmd> {
    let mut out = Vec::new();
    let mut lines = block.lines();
    while let Some(first) = lines.next() {
        let mut line = first.to_owned();
        while line.ends_with('\\') {
            line.pop();
            match lines.next() {
                Some(next) => line.push_str(next),
                None => break,
            }
        }
        let mut heredoc = None;
        if let Some(at) = line.find("<<") {
            let marker = line[at + 2..]
                .trim()
                .trim_start_matches('-')
                .trim_matches(['\'', '"'])
                .to_owned();
            let mut body = String::new();
            for next in lines.by_ref() {
                if next.trim() == marker {
                    break;
                }
                body.push_str(next);
                body.push('\n');
            }
            heredoc = Some(body);
            line.truncate(at);
        }
        let mut substituted = Vec::new();
        let line = take_substitutions(&line, &mut substituted);
        for text in substituted {
            out.extend(split_list(&text).into_iter().map(|words| Cmd {
                words,
                heredoc: None,
            }));
        }
        let mut parts = split_list(&line);
        let last = parts.len().saturating_sub(1);
        for (index, words) in parts.drain(..).enumerate() {
            out.push(Cmd {
                words,
                heredoc: if index == last { heredoc.take() } else { None },
            });
        }
    }
    out.retain(|cmd| !cmd.words.is_empty());
    out
}

/// Replaces each `$(…)` of `line` by a placeholder word, pushing its text (and that of any
/// nested in it) to `found`.
fn take_substitutions(line: &str, found: &mut Vec<String>) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let inner = &rest[start + 2..];
        let mut depth = 1;
        let mut end = inner.len();
        for (index, c) in inner.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = index;
                        break;
                    }
                }
                _ => {}
            }
        }
        let nested = take_substitutions(&inner[..end], found);
        found.push(nested);
        out.push_str("SUBSTITUTED");
        rest = inner.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// Words of a line (quotes removed, a comment dropped), split into simple commands at
/// unquoted `&&`, `||`, `|`, `;` and `&`.
fn split_list(line: &str) -> Vec<Vec<String>> {
    let mut commands = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    let end_word = |word: &mut String, in_word: &mut bool, commands: &mut Vec<Vec<String>>| {
        if *in_word {
            if let Some(current) = commands.last_mut() {
                current.push(std::mem::take(word));
            }
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    in_word = true;
                }
                '#' if !in_word => break,
                ' ' | '\t' => end_word(&mut word, &mut in_word, &mut commands),
                '&' | '|' | ';' => {
                    end_word(&mut word, &mut in_word, &mut commands);
                    if matches!(chars.peek(), Some('&' | '|')) {
                        chars.next();
                    }
                    commands.push(Vec::new());
                }
                _ => {
                    word.push(c);
                    in_word = true;
                }
            },
        }
    }
    end_word(&mut word, &mut in_word, &mut commands);
    commands
}

/// What `--help` says, per binary and subcommand path (cached: each is one process).
#[derive(Debug)]
struct Helps {
    texts: BTreeMap<(String, Vec<String>), String>,
}

impl Helps {
    fn new() -> Helps {
        Helps {
            texts: BTreeMap::new(),
        }
    }

    fn help(&mut self, binary: &str, path: &[String]) -> Result<&str> {
        let key = (binary.to_owned(), path.to_vec());
        if !self.texts.contains_key(&key) {
            let env = match binary {
                "metahook-receiver" => "METAHOOK_RECEIVER_BIN",
                _ => "METAHOOK_OPERATOR_BIN",
            };
            let bin = workspace_bin(binary, env)?;
            let output = Command::new(&bin)
                .args(path)
                .arg("--help")
                .output()
                .with_context(|| format!("running {} --help", bin.display()))?;
            ensure!(
                output.status.success(),
                "{binary} {} --help failed: {}",
                path.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
            self.texts
                .insert(key.clone(), String::from_utf8_lossy(&output.stdout).into());
        }
        Ok(&self.texts[&key])
    }
}

/// The subcommands a clap `--help` lists under `Commands:`.
fn subcommands(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Whether `help` documents `flag` (e.g. `--secret-file`) as a whole word.
fn documents_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        !help[at + flag.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// The binary a command runs and its arguments: `cargo run … -p NAME … -- ARGS`, or the
/// binary named directly.
fn binary_call(words: &[String]) -> Option<(String, Vec<String>)> {
    let ours = |name: &str| matches!(name, "metahook-receiver" | "metahook-operator");
    if words.first().map(String::as_str) == Some("cargo")
        && words.get(1).map(String::as_str) == Some("run")
    {
        let split = words.iter().position(|w| w == "--").unwrap_or(words.len());
        let package = words[..split]
            .windows(2)
            .find(|pair| pair[0] == "-p" || pair[0] == "--package")
            .map(|pair| pair[1].clone())?;
        if !ours(&package) {
            return None;
        }
        return Some((package, words.get(split + 1..).unwrap_or(&[]).to_vec()));
    }
    let first = words.first()?;
    let name = first.rsplit('/').next()?;
    ours(name).then(|| (name.to_owned(), words[1..].to_vec()))
}

/// A Secret the page creates: namespace, name and keys.
#[derive(Debug, Default)]
struct Created {
    secrets: BTreeMap<(String, String), BTreeSet<String>>,
}

/// A Secret a subscription references.
#[derive(Debug)]
struct Reference {
    namespace: String,
    name: String,
    key: Option<String>,
    field: String,
    /// An Ingress TLS Secret cert-manager makes from the Ingress's annotation.
    cert_manager: bool,
}

/// Every Secret a WebhookSubscription's spec references: each `…Ref` object with a `name`
/// (and `key`), and `ingress.tlsSecretName`.
fn references(subscription: &Value) -> Vec<Reference> {
    fn walk(value: &Value, field: &str, namespace: &str, out: &mut Vec<Reference>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let path = format!("{field}.{key}");
                    if key.ends_with("Ref")
                        && let Some(name) = child.get("name").and_then(Value::as_str)
                    {
                        out.push(Reference {
                            namespace: namespace.to_owned(),
                            name: name.to_owned(),
                            key: child.get("key").and_then(Value::as_str).map(str::to_owned),
                            field: path.clone(),
                            cert_manager: false,
                        });
                    }
                    walk(child, &path, namespace, out);
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    walk(item, &format!("{field}[{index}]"), namespace, out);
                }
            }
            _ => {}
        }
    }
    let namespace = subscription["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let spec = &subscription["spec"];
    let mut out = Vec::new();
    walk(spec, "spec", &namespace, &mut out);
    if let Some(name) = spec["ingress"]["tlsSecretName"].as_str() {
        let cert_manager = spec["ingress"]["annotations"]
            .as_object()
            .is_some_and(|a| a.keys().any(|k| k.starts_with("cert-manager.io/")));
        out.push(Reference {
            namespace,
            name: name.to_owned(),
            key: None,
            field: "spec.ingress.tlsSecretName".to_owned(),
            cert_manager,
        });
    }
    out
}

/// The value of `-n NS` / `--namespace NS` / `--namespace=NS` in a command.
fn namespace_flag(words: &[String]) -> Option<String> {
    words.iter().enumerate().find_map(|(index, word)| {
        if word == "-n" || word == "--namespace" {
            words.get(index + 1).cloned()
        } else {
            word.strip_prefix("--namespace=").map(str::to_owned)
        }
    })
}

/// Whether a dotted key (`image.registry`) is a key of `values`.
fn values_key(values: &Value, key: &str) -> bool {
    key.split('.')
        .try_fold(values, |value, part| value.get(part))
        .is_some()
}

/// Every fault of one page's commands, each naming the page and what is wrong.
fn check_page(page: &str, markdown: &str, root: &Path, helps: &mut Helps) -> Result<Vec<String>> {
    let mut faults = Vec::new();
    let commands: Vec<Cmd> = shell_blocks(markdown)
        .iter()
        .flat_map(|block| commands(block))
        .collect();
    ensure!(!commands.is_empty(), "{page} has no shell commands");
    let values_path = root.join("charts/metahook/values.yaml");
    let values: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(&values_path)
            .with_context(|| format!("reading {}", values_path.display()))?,
    )
    .context("parsing charts/metahook/values.yaml")?;
    let mut created = Created::default();
    let mut applied: Vec<(String, Value)> = Vec::new();

    for cmd in &commands {
        let words = &cmd.words;
        let shown = words.join(" ");
        // Repository paths.
        for word in words {
            let value = word.split_once('=').map_or(word.as_str(), |(_, v)| v);
            if REPO_DIRS.iter().any(|dir| value.starts_with(dir)) {
                let path = value.trim_end_matches(['/', ',', '.', ')']);
                if !root.join(path).exists() {
                    faults.push(format!(
                        "{page}: `{shown}` names {path}, which does not exist"
                    ));
                }
            }
        }
        // Our binaries: subcommands and flags against their --help.
        if let Some((binary, args)) = binary_call(words) {
            let mut path: Vec<String> = Vec::new();
            for arg in &args {
                let help = helps.help(&binary, &path)?.to_owned();
                if let Some(flag) = arg
                    .strip_prefix("--")
                    .map(|f| f.split('=').next().unwrap_or(f))
                {
                    let flag = format!("--{flag}");
                    if !documents_flag(&help, &flag) {
                        let command = std::iter::once(binary.as_str())
                            .chain(path.iter().map(String::as_str))
                            .collect::<Vec<_>>()
                            .join(" ");
                        faults.push(format!("{page}: `{shown}`: {command} --help has no {flag}"));
                    }
                } else if subcommands(&help).contains(arg.as_str()) {
                    path.push(arg.clone());
                } else if path.is_empty() && !arg.starts_with('-') && !subcommands(&help).is_empty()
                {
                    // A bare word before any subcommand that is not a flag's value is a
                    // subcommand the binary lacks (a value follows its flag directly).
                    let after_flag = args
                        .iter()
                        .position(|a| a == arg)
                        .and_then(|i| i.checked_sub(1))
                        .is_some_and(|i| args[i].starts_with("--") && !args[i].contains('='));
                    if !after_flag {
                        faults.push(format!(
                            "{page}: `{shown}`: {binary} has no subcommand {arg}"
                        ));
                    }
                }
            }
        }
        // Scripts: each --flag must be one the script parses.
        if let Some(script) = words.first().filter(|w| w.starts_with("scripts/"))
            && let Ok(text) = std::fs::read_to_string(root.join(script))
        {
            for flag in words[1..].iter().filter(|w| w.starts_with("--")) {
                let flag = flag.split('=').next().unwrap_or(flag);
                if !documents_flag(&text, flag) {
                    faults.push(format!("{page}: `{shown}`: {script} has no {flag}"));
                }
            }
        }
        // helm --set KEY=VALUE against the chart's values (also in a block that shows only
        // more --set lines for the helm command before it).
        if matches!(words.first().map(String::as_str), Some("helm" | "--set")) {
            for pair in words.windows(2).filter(|pair| pair[0] == "--set") {
                let key = pair[1].split('=').next().unwrap_or_default();
                if !values_key(&values, key) {
                    faults.push(format!(
                        "{page}: `{shown}`: --set {key} is not a key of charts/metahook/values.yaml"
                    ));
                }
            }
        }
        // kubectl: Secrets created, documents applied.
        if words.first().map(String::as_str) == Some("kubectl") {
            let namespace = namespace_flag(words).unwrap_or_else(|| "default".to_owned());
            let verbs: Vec<&str> = words
                .iter()
                .map(String::as_str)
                .filter(|w| !w.starts_with('-'))
                .collect();
            let create = verbs
                .windows(4)
                .find(|w| w[0] == "create" && w[1] == "secret")
                .map(|w| (w[2], w[3]));
            if let Some((kind, name)) = create
                && matches!(kind, "generic" | "tls" | "docker-registry")
            {
                let keys = created
                    .secrets
                    .entry((namespace.clone(), name.to_owned()))
                    .or_default();
                for word in words {
                    if let Some(rest) = word
                        .strip_prefix("--from-literal=")
                        .or_else(|| word.strip_prefix("--from-file="))
                    {
                        keys.insert(rest.split_once('=').map_or(rest, |(k, _)| k).to_owned());
                    }
                }
                if kind == "tls" {
                    keys.extend(["tls.crt".to_owned(), "tls.key".to_owned()]);
                }
            }
            if verbs.contains(&"apply") {
                for pair in words.windows(2).filter(|pair| pair[0] == "-f") {
                    let text = if pair[1] == "-" {
                        cmd.heredoc.clone().unwrap_or_default()
                    } else if pair[1].starts_with("examples/") {
                        std::fs::read_to_string(root.join(&pair[1])).unwrap_or_default()
                    } else {
                        continue;
                    };
                    let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
                        .with_context(|| format!("{page}: parsing what `{shown}` applies"))?;
                    applied.extend(
                        documents
                            .into_iter()
                            .filter(|d| d["kind"] == "WebhookSubscription")
                            .map(|d| (shown.clone(), d)),
                    );
                }
            }
        }
    }

    for (shown, subscription) in &applied {
        for reference in references(subscription) {
            let made = created
                .secrets
                .get(&(reference.namespace.clone(), reference.name.clone()));
            let fault = match (made, &reference.key) {
                (None, _) if reference.cert_manager => None,
                (None, _) => Some("which the page never creates".to_owned()),
                (Some(keys), Some(key)) if !keys.contains(key) => Some(format!(
                    "which the page creates without key {key} (it has {keys:?})"
                )),
                _ => None,
            };
            if let Some(fault) = fault {
                faults.push(format!(
                    "{page}: `{shown}`: {} references Secret {}/{}, {fault}",
                    reference.field, reference.namespace, reference.name
                ));
            }
        }
    }
    Ok(faults)
}

#[test]
fn readme_and_quickstart_commands_name_what_exists() -> Result<()> {
    let root = repo_root();
    let mut helps = Helps::new();
    let mut faults = Vec::new();
    for page in PAGES {
        let text =
            std::fs::read_to_string(root.join(page)).with_context(|| format!("reading {page}"))?;
        faults.extend(check_page(page, &text, &root, &mut helps)?);
    }
    ensure!(faults.is_empty(), "{}", faults.join("\n"));
    Ok(())
}

#[test]
fn commands_are_parsed_as_a_shell_would() {
    let block = "SIG=$(cargo run -q -p metahook-receiver -- sign --secret-file /tmp/s /tmp/b)\n\
                 kubectl -n ns create secret generic app \\\n  --from-literal=app-secret=\"$X\" # why\n\
                 kubectl apply -f - <<'EOF'\nkind: WebhookSubscription\nEOF\n\
                 kubectl apply -f examples/a.yaml && kubectl get whsub\n";
    let parsed: Vec<Vec<String>> = commands(block).into_iter().map(|c| c.words).collect();
    let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        parsed,
        vec![
            words("cargo run -q -p metahook-receiver -- sign --secret-file /tmp/s /tmp/b"),
            words("SIG=SUBSTITUTED"),
            words("kubectl -n ns create secret generic app --from-literal=app-secret=$X"),
            words("kubectl apply -f -"),
            words("kubectl apply -f examples/a.yaml"),
            words("kubectl get whsub"),
        ]
    );
    assert_eq!(
        commands(block)[3].heredoc.as_deref(),
        Some("kind: WebhookSubscription\n")
    );
}

#[test]
fn checker_finds_what_is_broken() -> Result<()> {
    let root = repo_root();
    let mut helps = Helps::new();
    let page = "```sh\n\
        scripts/build-images.sh --no-such-script-flag\n\
        kubectl apply -f examples/no-such-example.yaml\n\
        cargo run -p metahook-receiver -- sign --no-such-flag /tmp/body.json\n\
        cargo run -p metahook-operator -- --no-leader-election --no-such-operator-flag\n\
        helm install metahook charts/metahook --set image.no-such-key=1\n\
        kubectl -n messaging create secret generic meta-whatsapp-app --from-literal=wrong-key=x\n\
        kubectl apply -f examples/whatsapp.yaml\n\
        ```\n";
    let faults = check_page("broken.md", page, &root, &mut helps)?;
    let expect = [
        "scripts/build-images.sh has no --no-such-script-flag",
        "names examples/no-such-example.yaml, which does not exist",
        "metahook-receiver sign --help has no --no-such-flag",
        "--help has no --no-such-operator-flag",
        "--set image.no-such-key is not a key",
        "references Secret messaging/meta-whatsapp-app, which the page creates without key app-secret",
        "references Secret messaging/metahook-postgres, which the page never creates",
        "references Secret messaging/metahook-nats, which the page never creates",
    ];
    for needle in expect {
        ensure!(
            faults.iter().any(|f| f.contains(needle)),
            "the checker missed `{needle}`; it found:\n{}",
            faults.join("\n")
        );
    }
    ensure!(
        faults.len() == expect.len(),
        "the checker found more than the faults put in:\n{}",
        faults.join("\n")
    );
    Ok(())
}
