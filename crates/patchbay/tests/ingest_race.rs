//! The race test: a 500-series archive made here with real `git format-patch`
//! (shallow and deep threading, with and without cover letters, single
//! patches, v1/v2 re-rolls threaded to v1, review replies with trailers), fed
//! in shuffled order with 10% duplicates through 8 parallel `patchbay inject`
//! processes. Every mail must be stored once, every series complete with the
//! right members, and each `series.series.complete` published exactly once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SERIES: usize = 500;
const LIST: &str = "race.lists.example.org";

fn git(dir: &Path, args: &[&str]) -> String {
    git_as(dir, args, "base")
}

/// Runs git with `who` as the committer (the sender of what `format-patch` writes).
fn git_as(dir: &Path, args: &[&str], who: &str) -> String {
    let email = format!("{who}@example.org");
    let env = [
        ("GIT_AUTHOR_NAME", "Base"),
        ("GIT_AUTHOR_EMAIL", "base@example.org"),
        ("GIT_COMMITTER_NAME", who),
        ("GIT_COMMITTER_EMAIL", &email),
    ];
    patchbay_fixtures::git_with(dir, args, &env)
}

/// What a generated series should come out as.
struct Expect {
    /// Message-IDs of patches 1..N, in order.
    patches: Vec<String>,
    cover: Option<String>,
    version: u32,
    /// A v1 that its v2 re-rolls.
    rerolled: bool,
}

fn header<'a>(mail: &'a str, name: &str) -> Option<&'a str> {
    let head = mail.split("\n\n").next()?;
    head.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

/// Builds every branch with one `git fast-import`, then formats each series.
fn make_archive(repo: &Path) -> (Vec<Vec<u8>>, Vec<Expect>) {
    std::fs::create_dir_all(repo).unwrap();
    git(repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "base\n").unwrap();
    git(repo, &["add", "README"]);
    git(repo, &["commit", "-q", "-m", "base"]);
    let base = git(repo, &["rev-parse", "HEAD"]).trim().to_string();

    // Shapes by i % 5: cover+shallow (3), cover+deep (2), no cover (2), single patch, v1+v2 re-roll (3 each).
    let mut script = String::new();
    let mut mark = 1;
    let branch = |script: &mut String, mark: &mut usize, name: &str, who: usize, when: i64, n: usize, tag: &str| {
        for k in 1..=n {
            let msg = format!("s{name} part {k}: change file {k}\n\nSigned-off-by: Dev {who} <dev{who}@example.org>\n");
            let content = format!("{tag} {name} {k}\n");
            script.push_str(&format!(
                "commit refs/heads/{name}{tag}\nmark :{mark}\nauthor Dev {who} <dev{who}@example.org> {} +0000\ncommitter Dev {who} <dev{who}@example.org> {} +0000\ndata {}\n{msg}",
                when + k as i64,
                when + k as i64,
                msg.len()
            ));
            if k == 1 {
                script.push_str(&format!("from {base}\n"));
            }
            script.push_str(&format!("M 100644 inline f{name}_{k}.txt\ndata {}\n{content}\n", content.len()));
            *mark += 1;
        }
    };
    let start = 1_750_000_000i64;
    for i in 0..SERIES {
        let who = i % 37;
        let when = start + i as i64 * 7200;
        match i % 5 {
            0 => branch(&mut script, &mut mark, &i.to_string(), who, when, 3, ""),
            1 | 2 => branch(&mut script, &mut mark, &i.to_string(), who, when, 2, ""),
            3 => branch(&mut script, &mut mark, &i.to_string(), who, when, 1, ""),
            _ => {
                branch(&mut script, &mut mark, &i.to_string(), who, when, 3, "");
                branch(&mut script, &mut mark, &i.to_string(), who, when + 3600, 3, "v2");
            }
        }
    }
    let mut fi = Command::new("git").current_dir(repo).args(["fast-import", "--quiet"]).stdin(Stdio::piped()).spawn().unwrap();
    fi.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(fi.wait().unwrap().success());

    let out = repo.join("out");
    let mut mails = Vec::new();
    let mut expects = Vec::new();
    let format = |dir: &str, range: &str, extra: &[&str], title: &str, who: usize| -> Vec<String> {
        let d = out.join(dir);
        let mut args = vec!["format-patch", "-q", "-o", d.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(range);
        git_as(repo, &args, &format!("dev{who}"));
        let mut files: Vec<PathBuf> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let mut texts = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap().replace("*** SUBJECT HERE ***", title);
            let text = text.replacen("\n\n", &format!("\nList-Id: Race list <{LIST}>\n\n"), 1);
            // git names cover letters `<cover.<second>.git.<committer>>`: one committer here, so make them unique.
            texts.push(text.replace("<cover.", &format!("<cover-{dir}.")));
        }
        texts
    };
    for i in 0..SERIES {
        let name = i.to_string();
        let title = format!("series number {i}");
        let who = i % 37;
        let (texts, version, rerolled) = match i % 5 {
            0 => (format(&name, &format!("{base}..{name}"), &["--cover-letter", "--thread=shallow"], &title, who), 1, false),
            1 => (format(&name, &format!("{base}..{name}"), &["--cover-letter", "--thread=deep"], &title, who), 1, false),
            2 => (format(&name, &format!("{base}..{name}"), &["--thread=shallow"], &title, who), 1, false),
            3 => (format(&name, &format!("{base}..{name}"), &["--thread"], &title, who), 1, false),
            _ => {
                let v1 = format(&name, &format!("{base}..{name}"), &["--cover-letter", "--thread=shallow"], &title, who);
                let v1_cover = header(&v1[0], "Message-ID").or_else(|| header(&v1[0], "Message-Id")).unwrap().to_string();
                let v2 = format(
                    &format!("{name}v2"),
                    &format!("{base}..{name}v2"),
                    &["--cover-letter", "--thread=shallow", "-v2", &format!("--in-reply-to={v1_cover}")],
                    &title,
                    who,
                );
                expects.push(expect_of(&v1, 1, true));
                (v2, 2, false)
            }
        };
        expects.push(expect_of(&texts, version, rerolled));
        // A review of patch 1 carrying a trailer, threaded under it.
        let first = &texts[if texts.len() > 1 && expects.last().unwrap().cover.is_some() { 1 } else { 0 }];
        let id = header(first, "Message-ID").or_else(|| header(first, "Message-Id")).unwrap();
        let subject = header(first, "Subject").unwrap();
        let review = format!(
            "From: Reviewer <reviewer@example.org>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nSubject: Re: {subject}\nMessage-ID: <review-{i}@example.org>\nIn-Reply-To: {id}\nReferences: {id}\nList-Id: Race list <{LIST}>\n\n> +change\n\nReviewed-by: Reviewer <reviewer@example.org>\n"
        );
        mails.extend(texts.into_iter().map(String::into_bytes));
        mails.push(review.into_bytes());
    }
    // The v1 mails of the re-rolls were formatted but not yet collected.
    for i in (0..SERIES).filter(|i| i % 5 == 4) {
        let d = out.join(i.to_string());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap().replace("*** SUBJECT HERE ***", &format!("series number {i}"));
            let text = text.replacen("\n\n", &format!("\nList-Id: Race list <{LIST}>\n\n"), 1);
            mails.push(text.replace("<cover.", &format!("<cover-{i}.")).into_bytes());
        }
    }
    (mails, expects)
}

fn expect_of(texts: &[String], version: u32, rerolled: bool) -> Expect {
    let ids: Vec<String> = texts.iter().map(|t| header(t, "Message-ID").or_else(|| header(t, "Message-Id")).unwrap().to_string()).collect();
    let has_cover = texts[0].contains(" 0/");
    let (cover, patches) = if has_cover { (Some(ids[0].clone()), ids[1..].to_vec()) } else { (None, ids) };
    Expect { patches, cover, version, rerolled }
}

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

#[test]
fn parallel_injects_assemble_every_series_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (mails, expects) = make_archive(&tmp.path().join("repo"));
    let distinct = mails.len();
    let mut rng = Lcg(0x5eed);
    let mut feed: Vec<usize> = (0..mails.len()).collect();
    for _ in 0..mails.len() / 10 {
        feed.push(rng.next(mails.len()));
    }
    for i in (1..feed.len()).rev() {
        feed.swap(i, rng.next(i + 1));
    }
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"data\"\n[bus]\nprefix = \"pbtest\"\nenv = \"race\"\n[[project]]\nname = \"race\"\nlist_ids = [\"{LIST}\"]\n"),
    )
    .unwrap();

    let feed = std::sync::Mutex::new(feed.into_iter());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let Some(i) = feed.lock().unwrap().next() else { return };
                    let mut child = Command::new(env!("CARGO_BIN_EXE_patchbay"))
                        .env_remove("PATCHBAY_CONFIG")
                        .env_remove("PATCHBAY_DATA_DIR")
                        .arg("--config")
                        .arg(&config)
                        .arg("inject")
                        .stdin(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap();
                    child.stdin.take().unwrap().write_all(&mails[i]).unwrap();
                    let out = child.wait_with_output().unwrap();
                    assert!(out.status.success(), "inject failed: {}", String::from_utf8_lossy(&out.stderr));
                }
            });
        }
    });

    let db = rusqlite::Connection::open(tmp.path().join("data/patchbay.sqlite3")).unwrap();
    let stored: i64 = db.query_row("SELECT count(*) FROM mails", [], |r| r.get(0)).unwrap();
    if stored as usize != distinct {
        let have: HashSet<String> =
            db.prepare("SELECT message_id FROM mails").unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        let missing: Vec<String> = mails
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .filter(|m| header(m, "Message-ID").or_else(|| header(m, "Message-Id")).is_some_and(|id| !have.contains(id)))
            .take(3)
            .collect();
        panic!("{stored} stored of {distinct}; missing for example:\n{}", missing.join("\n-----\n"));
    }
    let unique_ids: i64 = db.query_row("SELECT count(DISTINCT message_id) FROM mails", [], |r| r.get(0)).unwrap();
    assert_eq!(unique_ids, stored);

    // Series: members, order, state.
    let mut by_mail: HashMap<String, (i64, u32)> = HashMap::new();
    let mut stmt = db
        .prepare(
            "SELECT m.message_id, s.uid, sm.slot FROM series_mails sm JOIN mails m ON m.id = sm.mail_id JOIN series s ON s.id = sm.series_id",
        )
        .unwrap();
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, u32>(2)?))).unwrap() {
        let (id, series, slot) = row.unwrap();
        by_mail.insert(id, (series, slot));
    }
    let states: HashMap<i64, (String, u32)> = db
        .prepare("SELECT uid, state, version FROM series")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut series_ids = HashSet::new();
    let mut problems = Vec::new();
    for (n, e) in expects.iter().enumerate() {
        let Some(&(sid, _)) = by_mail.get(&e.patches[0]) else {
            problems.push(format!("expectation {n}: patch 1 {} in no series", e.patches[0]));
            continue;
        };
        series_ids.insert(sid);
        for (k, id) in e.patches.iter().enumerate() {
            if by_mail.get(id) != Some(&(sid, k as u32 + 1)) {
                problems.push(format!("series {sid}: {id} should be slot {} but is {:?}", k + 1, by_mail.get(id)));
            }
        }
        if let Some(c) = &e.cover
            && by_mail.get(c) != Some(&(sid, 0))
        {
            problems.push(format!("series {sid}: cover {c} placed at {:?}", by_mail.get(c)));
        }
        let (state, version) = &states[&sid];
        let want = if e.rerolled { "superseded" } else { "complete" };
        if state != want || *version != e.version {
            problems.push(format!("series {sid}: state {state} v{version}, expected {want} v{}", e.version));
        }
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems[..problems.len().min(30)].join("\n"));
    assert_eq!(series_ids.len(), expects.len(), "one series per expectation");
    assert_eq!(states.len(), expects.len(), "no stray series");

    // Exactly one `complete` per series (a v1 superseded before it completed has none).
    let mut completes: BTreeMap<i64, u32> = BTreeMap::new();
    let mut stmt = db.prepare("SELECT wire FROM bus_messages WHERE topic = 'pbtest.race.series.series.complete'").unwrap();
    for wire in stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap() {
        let env: serde_json::Value = serde_json::from_slice(&wire.unwrap()).unwrap();
        *completes.entry(env["body"]["series"]["id"].as_i64().unwrap()).or_default() += 1;
    }
    for (sid, (state, _)) in &states {
        let n = completes.get(sid).copied().unwrap_or(0);
        if state == "complete" {
            assert_eq!(n, 1, "series {sid}: {n} complete events");
        } else {
            assert!(n <= 1, "series {sid}: {n} complete events");
        }
    }
    let received: i64 =
        db.query_row("SELECT count(*) FROM bus_messages WHERE topic = 'pbtest.race.mail.message.received'", [], |r| r.get(0)).unwrap();
    assert_eq!(received, stored, "one mail.message.received per stored mail");
}
