//! Tidy checks: the layering ARCHITECTURE.md promises, enforced. A new line in
//! a `[dependencies]` table is an architecture change; if it breaks a rule
//! here, change ARCHITECTURE.md and this list together, on purpose.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn manifest(krate: &str) -> toml::Table {
    let path = workspace().join("crates").join(krate).join("Cargo.toml");
    std::fs::read_to_string(&path).unwrap().parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn deps(krate: &str) -> Vec<String> {
    manifest(krate).get("dependencies").and_then(|d| d.as_table()).map(|t| t.keys().cloned().collect()).unwrap_or_default()
}

fn crates() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(workspace().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| workspace().join("crates").join(n).join("Cargo.toml").is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn layering_rules_hold() {
    // (crate, dependencies it must never have, and why)
    let rules: &[(&str, &[&str], &str)] = &[
        (
            "model",
            &[
                "patchbay-bus",
                "patchbay-store",
                "patchbay-runtime",
                "patchbay-config",
                "patchbay-web",
                "tokio",
                "rusqlite",
                "axum",
                "reqwest",
            ],
            "model is pure serialized types: no IO, no siblings",
        ),
        (
            "bus",
            &[
                "patchbay-store",
                "patchbay-bus-amqp",
                "patchbay-runtime",
                "patchbay-web",
                "patchbay-config",
                "rusqlite",
                "axum",
                "reqwest",
                "lapin",
            ],
            "bus knows no backend",
        ),
        ("store", &["patchbay-runtime", "patchbay-web", "patchbay-config", "axum", "reqwest", "lapin"], "store knows no HTTP and no AMQP"),
        (
            "metrics",
            &["patchbay-model", "patchbay-bus", "patchbay-store", "patchbay-runtime", "tokio", "rusqlite", "axum", "lapin"],
            "metrics are counters and their text: no IO, no other patchbay crate",
        ),
        (
            "store-pg",
            &["patchbay-store", "patchbay-runtime", "patchbay-web", "patchbay-config", "patchbay-bus-amqp", "rusqlite", "axum", "lapin"],
            "the PostgreSQL store knows no SQLite, services, HTTP or broker (it relays through `dyn Bus`)",
        ),
        (
            "store-move",
            &["patchbay-runtime", "patchbay-web", "patchbay-config", "patchbay-bus-amqp", "axum", "lapin", "reqwest"],
            "moving a store copies tables: no services, HTTP, broker or config file",
        ),
        (
            "bus-amqp",
            &["patchbay-store", "patchbay-runtime", "patchbay-web", "patchbay-config", "rusqlite", "axum", "reqwest"],
            "the RabbitMQ bus knows no store, services or HTTP",
        ),
        (
            "runtime",
            &["patchbay-store", "patchbay-bus-amqp", "patchbay-web", "patchbay-config", "rusqlite", "axum", "reqwest", "lapin"],
            "the runtime knows no backend",
        ),
        (
            "web",
            &["patchbay-store", "patchbay-bus-amqp", "patchbay-runtime", "patchbay-config", "rusqlite", "reqwest", "lapin"],
            "the HTTP edge knows no backend",
        ),
        (
            "config",
            &["patchbay-store", "patchbay-runtime", "patchbay-web", "tokio", "rusqlite", "axum", "reqwest"],
            "config reads files, starts nothing",
        ),
        (
            "mail",
            &[
                "patchbay-bus",
                "patchbay-store",
                "patchbay-runtime",
                "patchbay-config",
                "patchbay-web",
                "tokio",
                "rusqlite",
                "axum",
                "reqwest",
                "lapin",
            ],
            "mail parsing is pure: bytes in, values out",
        ),
        (
            "series",
            &[
                "patchbay-bus",
                "patchbay-store",
                "patchbay-runtime",
                "patchbay-config",
                "patchbay-web",
                "patchbay-mail",
                "tokio",
                "rusqlite",
                "axum",
                "reqwest",
                "lapin",
            ],
            "series assembly rules are pure: state in, decisions out",
        ),
        (
            "runner",
            &[
                "patchbay-bus",
                "patchbay-store",
                "patchbay-runtime",
                "patchbay-config",
                "patchbay-web",
                "patchbay-ingest",
                "rusqlite",
                "axum",
                "reqwest",
                "lapin",
            ],
            "the runner's git and sandbox know no bus, store or HTTP: runners live on other machines",
        ),
        (
            "ci",
            &[
                "patchbay-store",
                "patchbay-bus-amqp",
                "patchbay-web",
                "patchbay-config",
                "patchbay-ingest",
                "rusqlite",
                "axum",
                "reqwest",
                "lapin",
            ],
            "the dispatcher and runner services know no backend, store or config file",
        ),
        (
            "logs",
            &["patchbay-bus-amqp", "patchbay-web", "patchbay-config", "patchbay-runner", "patchbay-ci", "axum", "reqwest", "lapin"],
            "test logs live in the embedded store and know no HTTP or runner",
        ),
        (
            "history",
            &[
                "patchbay-bus-amqp",
                "patchbay-web",
                "patchbay-config",
                "patchbay-runner",
                "patchbay-ci",
                "patchbay-runtime",
                "axum",
                "reqwest",
                "lapin",
            ],
            "the history reads and indexes the embedded store; it knows no HTTP, services or config file",
        ),
        (
            // `model` is allowed: it is pure too, and the domain's words and types live there (issue 14).
            "verdict",
            &[
                "patchbay-bus",
                "patchbay-store",
                "patchbay-runtime",
                "patchbay-config",
                "tokio",
                "rusqlite",
                "axum",
                "reqwest",
                "lapin",
                "minijinja",
            ],
            "the verdict policy is pure (the report's template is the report crate's)",
        ),
        (
            "results",
            &[
                "patchbay-bus-amqp",
                "patchbay-web",
                "patchbay-config",
                "patchbay-runner",
                "patchbay-ci",
                "patchbay-report",
                "lettre",
                "axum",
                "reqwest",
                "lapin",
            ],
            "the aggregator knows the embedded store, not HTTP, runners, the report or the config file",
        ),
        (
            "report",
            &[
                "patchbay-bus-amqp",
                "patchbay-web",
                "patchbay-config",
                "patchbay-runner",
                "patchbay-ci",
                "patchbay-results",
                "axum",
                "reqwest",
                "lapin",
            ],
            "the report knows the embedded store and the verdict's words, not HTTP, runners, the aggregator or the config file",
        ),
        (
            "notify",
            &[
                "patchbay-bus-amqp",
                "patchbay-web",
                "patchbay-config",
                "patchbay-runner",
                "patchbay-ci",
                "patchbay-results",
                "axum",
                "lapin",
            ],
            "notifications know the stores, webhooks as a client and the report's transports; not our HTTP edge, runners or the config file",
        ),
        (
            "patchwork",
            &[
                "patchbay-bus-amqp",
                "patchbay-web",
                "patchbay-config",
                "patchbay-runner",
                "patchbay-ci",
                "patchbay-results",
                "patchbay-report",
                "axum",
                "lapin",
            ],
            "the Patchwork checks know the stores and Patchwork's API, not our HTTP edge, runners, the aggregator, the report or the config file",
        ),
        (
            "ingest",
            &["patchbay-bus-amqp", "patchbay-web", "patchbay-config", "patchbay-runtime", "axum", "reqwest", "lapin"],
            "ingest knows the embedded store but no HTTP, no AMQP and no config file",
        ),
        ("bench", &["patchbay-web", "axum", "reqwest"], "the benchmarks drive the library and the backends, not HTTP"),
        (
            "fixtures",
            &["patchbay-model", "patchbay-bus", "patchbay-store", "patchbay-runtime", "patchbay-config", "patchbay", "tokio", "rusqlite"],
            "test fixtures are pure std: they run git and write files, nothing of patchbay's",
        ),
        (
            "listen",
            &[
                "patchbay-model",
                "patchbay-bus",
                "patchbay-store",
                "patchbay-runtime",
                "patchbay-config",
                "patchbay-web",
                "patchbay-ingest",
                "rusqlite",
                "axum",
                "hyper",
                "lapin",
            ],
            "connection seats know sockets only through their callers: no protocol, bus or store",
        ),
    ];
    let mut broken = Vec::new();
    for (krate, forbidden, why) in rules {
        for dep in deps(krate) {
            if forbidden.contains(&dep.as_str()) {
                broken.push(format!("{krate} depends on {dep}: {why}"));
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
    // Every crate has a rule, so a new crate is a conscious decision.
    for krate in crates() {
        assert!(krate == "patchbay" || rules.iter().any(|r| r.0 == krate), "crate {krate} has no layering rule in tidy.rs");
    }
}

#[test]
fn every_crate_uses_the_workspace_lints() {
    for krate in crates() {
        let m = manifest(&krate);
        let lints = m.get("lints").and_then(|l| l.get("workspace")).and_then(|w| w.as_bool());
        assert_eq!(lints, Some(true), "crates/{krate}/Cargo.toml lacks [lints] workspace = true");
    }
}

#[test]
fn every_source_file_says_what_it_owns() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    for krate in crates() {
        for sub in ["src", "tests"] {
            let d = workspace().join("crates").join(&krate).join(sub);
            if d.is_dir() {
                walk(&d, &mut files);
            }
        }
    }
    let undocumented: Vec<String> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().trim_start().starts_with("//!"))
        .map(|f| f.strip_prefix(workspace()).unwrap().display().to_string())
        .collect();
    assert!(undocumented.is_empty(), "files without a //! header saying what they own: {undocumented:?}");
}

#[test]
fn no_ignored_tests() {
    let mut offenders = Vec::new();
    for krate in crates() {
        for sub in ["src", "tests"] {
            let d = workspace().join("crates").join(&krate).join(sub);
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            for e in entries {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "rs") && std::fs::read_to_string(&p).unwrap().contains(concat!("#[", "ignore")) {
                    offenders.push(p.display().to_string());
                }
            }
        }
    }
    assert!(offenders.is_empty(), "ignored tests stand in for work: {offenders:?}");
}

/// The benchmarks ship apart from the production binary: nothing depends on `patchbay-bench`,
/// and the binary's crate holds no benchmark module. The test fixtures are dev-only: no
/// production crate has them in `[dependencies]` (the benchmarks may).
#[test]
fn benchmarks_stay_out_of_the_production_binary() {
    for krate in crates() {
        assert!(!deps(&krate).iter().any(|d| d == "patchbay-bench"), "{krate} depends on patchbay-bench");
        if krate != "bench" {
            assert!(!deps(&krate).iter().any(|d| d == "patchbay-fixtures"), "{krate} has the test fixtures in [dependencies]");
        }
    }
    let src = workspace().join("crates/patchbay/src");
    let benches: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bench"))
        .collect();
    assert!(benches.is_empty(), "benchmark modules in the production binary: {benches:?} (they belong in crates/bench)");
}

/// ARCHITECTURE.md's code map is where a newcomer finds where a change goes: it names every
/// crate under `crates/`, one heading each, and nothing that does not exist.
#[test]
fn the_code_map_names_every_crate_and_only_those() {
    let map = std::fs::read_to_string(workspace().join("ARCHITECTURE.md")).unwrap();
    let named: Vec<String> =
        map.lines().filter_map(|l| l.strip_prefix("### `crates/").and_then(|r| r.strip_suffix('`'))).map(str::to_string).collect();
    let crates = crates();
    let mut sorted = named.clone();
    sorted.sort();
    let missing: Vec<&String> = crates.iter().filter(|c| !named.contains(c)).collect();
    let stale: Vec<&String> = named.iter().filter(|n| !crates.contains(n)).collect();
    assert!(missing.is_empty(), "crates without a heading in ARCHITECTURE.md's code map: {missing:?}");
    assert!(stale.is_empty(), "ARCHITECTURE.md's code map names crates that do not exist: {stale:?}");
    sorted.dedup();
    assert_eq!(sorted.len(), named.len(), "a crate has two headings in the code map: {named:?}");
}

/// The modules of `crates/patchbay` form layers: no module imports one that imports it back,
/// however far round (a cycle is where one concept hides inside another's file).
#[test]
fn the_binarys_modules_import_no_cycle() {
    let src = workspace().join("crates/patchbay/src");
    // Modules by path (`serve`, `services`, `services::runner`), from the files under src/.
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                walk(&p, &format!("{prefix}{name}::"), out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let module = if name == "mod" { prefix.trim_end_matches("::").to_string() } else { format!("{prefix}{name}") };
                out.push((module, p));
            }
        }
    }
    let mut files = Vec::new();
    walk(&src, "", &mut files);
    files.retain(|(m, _)| m != "main" && m != "lib");
    let modules: Vec<String> = files.iter().map(|(m, _)| m.clone()).collect();
    // The longest module that `path` (`a::b::item`) names.
    let resolve = |path: &str| -> Option<String> {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|p| modules.contains(p))
    };
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for (m, file) in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let parent = m.rsplit_once("::").map(|(p, _)| p.to_string());
        let mut uses = std::collections::BTreeSet::new();
        for (base, key) in [(None, "crate::"), (parent.clone(), "super::")] {
            if key == "super::" && base.is_none() {
                continue; // a top-level module's parent is the crate root
            }
            for (i, _) in text.match_indices(key) {
                if i > 0 && text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    continue; // `patchbay_x::crate::` never occurs; `foo::super::` is not ours
                }
                let rest = &text[i + key.len()..];
                // `crate::x::…` and `use crate::{x, y::…}`.
                let paths: Vec<String> = match rest.strip_prefix('{') {
                    Some(group) => group.split('}').next().unwrap_or("").split(',').map(|p| p.trim().to_string()).collect(),
                    None => vec![rest.split(|c: char| !ident(c)).next().unwrap_or("").trim_end_matches(':').to_string()],
                };
                for p in paths {
                    let full = match &base {
                        Some(b) if p.is_empty() => b.clone(),
                        Some(b) => format!("{b}::{p}"),
                        None => p,
                    };
                    if let Some(target) = resolve(&full).filter(|t| t != m) {
                        uses.insert(target);
                    }
                }
            }
        }
        edges.insert(m.clone(), uses);
    }
    // Depth-first search for a back edge; the path is the cycle.
    fn visit(
        m: &str,
        edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in &edges[m] {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!("import cycle among crates/patchbay's modules: {}", cycle.join(" -> "));
        }
    }
}

/// The stores sit behind ports owned by the crates that own their tables (`SeriesStore` in
/// ingest, `ResultsStore` in results, `HistoryStore` in history, the log's marks in store): the
/// binary and the HTTP edge name no SQL crate in `[dependencies]` and write no SQL, so a
/// second store backend is a new implementation of those ports, not a hunt through the top.
#[test]
fn no_sql_in_the_binary_or_the_web_edge() {
    const SQL_CRATES: &[&str] = &["rusqlite", "sqlx", "postgres", "tokio-postgres", "diesel", "sea-orm", "deadpool-postgres"];
    const SQL_TEXT: &[&str] = &["rusqlite", "SELECT ", "INSERT INTO", "INSERT OR", "DELETE FROM", "UPDATE ", "CREATE TABLE", "PRAGMA "];
    for krate in ["patchbay", "web"] {
        let sql: Vec<String> = deps(krate).into_iter().filter(|d| SQL_CRATES.contains(&d.as_str())).collect();
        assert!(sql.is_empty(), "crates/{krate} depends on {sql:?}: its stores belong behind the owning crates' ports");
        let mut stack = vec![workspace().join("crates").join(krate).join("src")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for (n, line) in text.lines().enumerate() {
                    if let Some(word) = SQL_TEXT.iter().find(|w| line.contains(*w)) {
                        panic!(
                            "{}:{}: {word:?}: SQL in crates/{krate}; put it behind a port in the crate owning the table",
                            path.display(),
                            n + 1
                        );
                    }
                }
            }
        }
    }
}
