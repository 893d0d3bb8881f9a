//! Jobs end to end with real git on repositories made here: a good series
//! applies and passes; one that does not apply names the patch; a broken
//! build fails with the compiler's error; `base-commit:` is honoured; a
//! dependency series is applied first; nothing published names the runner;
//! a series that no longer applies at the head is applied on the branch as of
//! its date, and one already in the branch is told apart from one that does
//! not apply.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use patchbay_runner::{Failure, Isolation, Job, Limits, Runner, Sandbox};

fn git(dir: &Path, args: &[&str]) -> String {
    patchbay_fixtures::git(dir, args).trim().to_string()
}

/// A project with a C program and a test script; returns the repository path.
fn project(root: &Path) -> PathBuf {
    let repo = root.join("origin");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("hello.c"), "#include <stdio.h>\nint main(void) {\n\tputs(\"hello\");\n\treturn 0;\n}\n").unwrap();
    std::fs::write(repo.join("test.sh"), "set -e\ncc -Wall -o hello hello.c\n./hello | grep -q hello\necho TESTS PASSED\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "base"]);
    repo
}

/// Commits `changes` on a branch from `from` and returns the series as an mbox.
fn series(repo: &Path, name: &str, from: &str, changes: &[(&str, &str)], extra: &[&str]) -> Vec<u8> {
    git(repo, &["checkout", "-q", "-b", name, from]);
    for (i, (file, content)) in changes.iter().enumerate() {
        std::fs::write(repo.join(file), content).unwrap();
        git(repo, &["add", file]);
        git(repo, &["commit", "-q", "-m", &format!("{name}: change {}", i + 1)]);
    }
    let mut args = vec!["format-patch", "--stdout"];
    args.extend_from_slice(extra);
    let range = format!("{from}..{name}");
    args.push(&range);
    let mbox = git(repo, &args);
    git(repo, &["checkout", "-q", "main"]);
    (mbox + "\n").into_bytes()
}

fn runner(root: &Path) -> Runner {
    Runner::new(&root.join("runner"), Sandbox::new(Isolation::Bubblewrap).expect("bubblewrap"), Duration::from_secs(300))
}

fn job(repo: &Path, mbox: Vec<u8>) -> Job {
    Job {
        repository: repo.display().to_string(),
        branch: "main".into(),
        base_commit: None,
        dependencies: vec![],
        mbox,
        script: Some("sh test.sh".into()),
        limits: Limits {
            wall: Duration::from_secs(120),
            memory_bytes: 1 << 30,
            processes: 256,
            file_size_bytes: 1 << 30,
            output_bytes: 64 << 10,
        },
        date: None,
        tree: None,
        remotes: vec![],
        per_patch: false,
    }
}

const GOOD: &str = "#include <stdio.h>\nint main(void) {\n\tputs(\"hello, world\");\n\treturn 0;\n}\n";

#[tokio::test]
async fn a_good_series_applies_and_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = project(tmp.path());
    let mbox = series(&repo, "good", "main", &[("hello.c", GOOD), ("README", "docs\n")], &[]);
    let report = runner(tmp.path()).run(&job(&repo, mbox)).await.unwrap();
    assert!(report.apply.ok, "{}", report.apply.output);
    assert_eq!(report.base.reason, "branch main");
    let test = report.test.unwrap();
    assert_eq!(test.failure, None, "{}", String::from_utf8_lossy(&test.output));
    assert!(String::from_utf8_lossy(&test.output).contains("TESTS PASSED"));
    assert!(!tmp.path().join("runner/work").read_dir().unwrap().any(|_| true), "the worktree is removed");
}

#[tokio::test]
async fn a_series_that_does_not_apply_names_the_patch() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = project(tmp.path());
    let mbox = series(&repo, "stale", "main", &[("README", "one\n"), ("hello.c", GOOD)], &[]);
    // main moves on with a conflicting change to hello.c.
    std::fs::write(repo.join("hello.c"), "int main(void) { return 1; }\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "rewrite"]);
    let report = runner(tmp.path()).run(&job(&repo, mbox)).await.unwrap();
    assert!(!report.apply.ok);
    assert_eq!(report.apply.failed_patch.as_deref(), Some("0002 stale: change 2"), "{}", report.apply.output);
    assert!(report.apply.output.contains("hello, world"), "the rejected hunk is shown: {}", report.apply.output);
    assert!(report.test.is_none());
    let root = tmp.path().display().to_string();
    assert!(!report.apply.output.contains(&root), "no runner paths in what is published: {}", report.apply.output);
}

/// A series based on a commit only another tree of the project has (net-next's, while the
/// tree map sent the job to net): the runner fetches the base from the job's `remotes` and
/// applies there, naming where it found it; without `remotes`, the fallback says so.
#[tokio::test]
async fn a_base_commit_from_another_tree_of_the_project_is_fetched_there() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = project(tmp.path());
    let next = tmp.path().join("net-next");
    git(tmp.path(), &["clone", "-q", &repo.display().to_string(), &next.display().to_string()]);
    std::fs::write(next.join("feature.h"), "#define FEATURE 1\n").unwrap();
    git(&next, &["add", "feature.h"]);
    git(&next, &["commit", "-q", "-m", "net-next only: feature.h"]);
    let base = git(&next, &["rev-parse", "HEAD"]);
    let base_arg = format!("--base={base}");
    let mbox = series(&next, "uses-feature", "main", &[("feature.h", "#define FEATURE 2\n")], &[&base_arg]);

    let mut j = job(&repo, mbox.clone());
    j.base_commit = Some(base.clone());
    j.remotes = vec![repo.display().to_string(), next.display().to_string()];
    let report = runner(tmp.path()).run(&j).await.unwrap();
    assert_eq!(report.base.commit, base, "applied on the base fetched from net-next: {}", report.base.reason);
    assert_eq!(report.base.reason, "base-commit (found in net-next)");
    assert!(report.apply.ok, "it applies there: {}", report.apply.output);
    assert!(report.test.is_some_and(|t| t.failure.is_none()), "and is tested there");

    let tmp2 = tempfile::tempdir().unwrap();
    let repo2 = project(tmp2.path());
    let mut j = job(&repo2, mbox);
    j.base_commit = Some(base.clone());
    let report = runner(tmp2.path()).run(&j).await.unwrap();
    assert!(report.base.reason.contains(&format!("base-commit {base} is not in the repository")), "{}", report.base.reason);
    assert!(!report.apply.ok, "feature.h is not on main");
}

#[tokio::test]
async fn a_broken_build_fails_with_the_compiler_error() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = project(tmp.path());
    let broken = "#include <stdio.h>\nint main(void) {\n\tputs(\"hello\")\n\treturn 0;\n}\n";
    let mbox = series(&repo, "broken", "main", &[("hello.c", broken)], &[]);
    let report = runner(tmp.path()).run(&job(&repo, mbox)).await.unwrap();
    assert!(report.apply.ok);
    let test = report.test.unwrap();
    assert_eq!(test.failure, Some(Failure::Failed));
    let out = String::from_utf8_lossy(&test.output);
    assert!(out.contains("hello.c:3") && out.contains("error"), "the compiler's error is in the output: {out}");
}

#[tokio::test]
async fn base_commit_is_honoured_and_dependencies_go_first() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = project(tmp.path());
    let base = git(&repo, &["rev-parse", "HEAD"]);
    let base_arg = format!("--base={base}");
    let mbox = series(&repo, "old", "main", &[("hello.c", GOOD)], &[&base_arg]);
    assert!(String::from_utf8_lossy(&mbox).contains(&format!("base-commit: {base}")));
    std::fs::write(repo.join("hello.c"), "int main(void) { return 1; }\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "rewrite on main"]);
    let mut j = job(&repo, mbox.clone());
    j.base_commit = Some(base.clone());
    let report = runner(tmp.path()).run(&j).await.unwrap();
    assert_eq!(report.base.commit, base);
    assert_eq!(report.base.reason, "base-commit");
    assert!(report.apply.ok, "applies on its base although main moved: {}", report.apply.output);

    // An unknown base-commit falls back to the branch, and says so.
    let mut j = job(&repo, mbox);
    j.base_commit = Some("0123456789abcdef0123456789abcdef01234567".into());
    let report = runner(tmp.path()).run(&j).await.unwrap();
    assert!(report.base.reason.starts_with("branch main (base-commit 0123"), "{}", report.base.reason);

    // A series based on another one: the dependency is applied first.
    git(&repo, &["checkout", "-q", "main"]);
    let dep = series(&repo, "dep", "main", &[("lib.h", "#define GREETING \"hi\"\n")], &[]);
    git(&repo, &["checkout", "-q", "dep"]);
    let on_top = series(&repo, "ontop", "dep", &[("lib.h", "#define GREETING \"hi there\"\n")], &[]);
    git(&repo, &["checkout", "-q", "main"]);
    let mut j = job(&repo, on_top.clone());
    j.script = Some("grep -q 'hi there' lib.h && echo OK".into());
    let alone = runner(tmp.path()).run(&j).await.unwrap();
    assert!(!alone.apply.ok, "without its dependency it cannot apply");
    j.dependencies = vec![dep];
    let report = runner(tmp.path()).run(&j).await.unwrap();
    assert!(report.apply.ok, "{}", report.apply.output);
    assert_eq!(report.test.unwrap().failure, None);
}

fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(&root)).map(str::to_string).collect()
}

#[tokio::test]
async fn the_tree_and_what_it_builds_live_under_the_disk_quota() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = project(tmp.path());
    let mbox = series(&repo, "good", "main", &[("hello.c", GOOD)], &[]);
    let sandbox = Sandbox::new(Isolation::Bubblewrap).unwrap().with_disk_quota(64 << 20);
    let mounted = sandbox.mounts_disks();
    let runner = Runner::new(&tmp.path().join("runner"), sandbox, Duration::from_secs(300));
    let mut j = job(&repo, mbox);
    j.script = Some(
        "cc -o hello hello.c && ./hello && df -k /build | tail -1 && \
         i=0; while [ $i -lt 8 ]; do dd if=/dev/zero of=out$i bs=1M count=25 2>&1 | grep -v records; i=$((i+1)); done; echo ALL WRITTEN"
            .into(),
    );
    let report = runner.run(&j).await.unwrap();
    let test = report.test.unwrap();
    let out = String::from_utf8_lossy(&test.output).into_owned();
    assert!(out.contains("hello, world"), "the build works on the job's disk: {out}");
    assert_eq!(test.failure, Some(Failure::Failed), "{out}");
    assert!(out.contains("disk quota exceeded: the job may write 64 MiB (runner.disk_mib)"), "{out}");
    if mounted {
        // /build is the job's own filesystem, of the quota's size.
        let size: u64 = out.lines().find(|l| l.ends_with("/build")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap();
        assert!(size <= 64 << 10, "{out}");
        assert!(out.contains("No space left on device"), "{out}");
    }
    assert!(!out.contains(&tmp.path().display().to_string()), "no runner path: {out}");
    assert!(!tmp.path().join("runner/work").read_dir().unwrap().any(|_| true), "the disk and the tree are gone");
    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new(), "nothing left mounted");

    // A checkout bigger than the quota: a mounted disk cannot hold it, and the error says why.
    let big: String = (0..300_000).map(|i| format!("{i:x}\n")).collect();
    let mbox = series(&repo, "big", "main", &[("data.txt", &big)], &[]);
    let runner = Runner::new(
        &tmp.path().join("runner"),
        Sandbox::new(Isolation::Bubblewrap).unwrap().with_disk_quota(1 << 20),
        Duration::from_secs(300),
    );
    let result = runner.run(&job(&repo, mbox)).await;
    match result {
        Err(e) => {
            assert!(mounted, "only a mounted disk refuses to hold the tree: {e}");
            assert!(e.to_string().contains("does not fit in the disk quota of 1 MiB (runner.disk_mib)"), "{e}");
        }
        Ok(report) => {
            let test = report.test.expect("applied, so it ran");
            assert_eq!(test.failure, Some(Failure::Failed));
            assert!(test.disk_quota_exceeded, "{}", String::from_utf8_lossy(&test.output));
        }
    }
    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new(), "nothing left mounted");
}

/// `git` with author and committer dates set to `secs` (unix time), committed by a maintainer.
fn git_at(dir: &Path, secs: i64, args: &[&str]) -> String {
    let date = format!("@{secs} +0000");
    let env = [
        ("GIT_COMMITTER_NAME", "Maintainer"),
        ("GIT_COMMITTER_EMAIL", "maint@example.org"),
        ("GIT_AUTHOR_DATE", &date),
        ("GIT_COMMITTER_DATE", &date),
    ];
    patchbay_fixtures::git_with(dir, args, &env).trim().to_string()
}

/// A runner that fetches before every job: these tests move the branch between jobs.
fn fresh(root: &Path) -> Runner {
    Runner::new(&root.join("runner"), Sandbox::new(Isolation::Bubblewrap).expect("bubblewrap"), Duration::ZERO)
}

const DAY: i64 = 86_400;
/// 2024-03-01 00:00 UTC: the project's first commit.
const MARCH_1: i64 = 1_709_251_200;

/// A project whose history is dated: the base on 1 March 2024.
fn dated_project(root: &Path) -> PathBuf {
    let repo = root.join("origin");
    std::fs::create_dir_all(&repo).unwrap();
    git_at(&repo, MARCH_1, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("hello.c"), "#include <stdio.h>\nint main(void) {\n\tputs(\"hello\");\n\treturn 0;\n}\n").unwrap();
    std::fs::write(repo.join("test.sh"), "set -e\ncc -Wall -o hello hello.c\n./hello | grep -q hello\necho TESTS PASSED\n").unwrap();
    git_at(&repo, MARCH_1, &["add", "."]);
    git_at(&repo, MARCH_1, &["commit", "-q", "-m", "base"]);
    repo
}

#[tokio::test]
async fn a_series_that_no_longer_applies_at_the_head_is_applied_as_of_its_date() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = dated_project(tmp.path());
    let base = git(&repo, &["rev-parse", "HEAD"]);
    // Posted on 2 March without a base-commit...
    let mbox = series(&repo, "posted", "main", &[("hello.c", GOOD)], &[]);
    let posted = MARCH_1 + DAY + 3600;
    // ...and the branch moved on 5 March with a conflicting change: the head no longer takes it.
    std::fs::write(repo.join("hello.c"), "int main(void) { return 1; }\n").unwrap();
    git_at(&repo, MARCH_1 + 4 * DAY, &["commit", "-q", "-am", "rewrite"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);

    // Without its date, it fails at the head as before.
    let report = fresh(tmp.path()).run(&job(&repo, mbox.clone())).await.unwrap();
    assert!(!report.apply.ok);
    assert_eq!((report.base.commit.as_str(), report.base.reason.as_str()), (head.as_str(), "branch main"));

    // With it, the branch as it was that day takes it, the script runs there, and the reason says why.
    let mut j = job(&repo, mbox.clone());
    j.date = Some(posted);
    let report = fresh(tmp.path()).run(&j).await.unwrap();
    assert!(report.apply.ok, "{}", report.apply.output);
    assert_eq!(report.base.commit, base);
    assert_eq!(report.base.reason, "branch main as of 2024-03-02, the series' date: it does not apply at the head");
    let test = report.test.expect("the script ran on the tree as of the date");
    assert_eq!(test.failure, None, "{}", String::from_utf8_lossy(&test.output));
    assert!(report.merged.is_empty());
    assert!(!tmp.path().join("runner/work").read_dir().unwrap().any(|_| true), "both trees are removed");

    // A base-commit the repository does not have: the same fallback, both reasons given.
    j.base_commit = Some("0123456789abcdef0123456789abcdef01234567".into());
    let report = fresh(tmp.path()).run(&j).await.unwrap();
    assert!(report.apply.ok, "{}", report.apply.output);
    assert_eq!(
        report.base.reason,
        "branch main as of 2024-03-02, the series' date: base-commit 0123456789abcdef0123456789abcdef01234567 is not in the repository, and the series does not apply at the head"
    );

    // Where the branch had already moved by the series' date, the head's failure is reported.
    let mut j = job(&repo, mbox.clone());
    j.date = Some(MARCH_1 + 6 * DAY);
    std::fs::write(repo.join("README"), "later\n").unwrap();
    git_at(&repo, MARCH_1 + 8 * DAY, &["add", "README"]);
    git_at(&repo, MARCH_1 + 8 * DAY, &["commit", "-q", "-m", "docs"]);
    let report = fresh(tmp.path()).run(&j).await.unwrap();
    assert!(!report.apply.ok);
    assert_eq!(report.apply.failed_patch.as_deref(), Some("0001 posted: change 1"));
    assert_eq!(report.base.commit, git(&repo, &["rev-parse", "HEAD"]));
    assert_eq!(report.base.reason, "branch main (the series does not apply as of 2024-03-07, its date, either)");
    // A date before the branch's first commit: nothing to fall back to.
    j.date = Some(MARCH_1 - DAY);
    let report = fresh(tmp.path()).run(&j).await.unwrap();
    assert_eq!((report.apply.ok, report.base.reason.as_str()), (false, "branch main"));
}

#[tokio::test]
async fn a_series_already_in_the_branch_is_told_apart_from_one_that_does_not_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = dated_project(tmp.path());
    let mbox = series(&repo, "taken", "main", &[("hello.c", GOOD), ("README", "docs\n")], &[]);
    // The maintainer applies it (new commits, same patch-ids), then the branch moves on over it.
    let mut am = Command::new("git")
        .current_dir(&repo)
        .args(["am", "-q"])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_COMMITTER_NAME", "Maintainer")
        .env("GIT_COMMITTER_EMAIL", "maint@example.org")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut am.stdin.take().unwrap(), &mbox).unwrap();
    assert!(am.wait().unwrap().success());
    let taken: Vec<String> = git(&repo, &["log", "--format=%H", "-2"]).lines().rev().map(str::to_string).collect();

    // Right after the merge, `git am -3` skips every patch as already applied.
    let report = fresh(tmp.path()).run(&job(&repo, mbox.clone())).await.unwrap();
    let commits: Vec<&str> = report.merged.iter().map(|m| m.commit.as_str()).collect();
    assert_eq!(commits, taken.iter().map(String::as_str).collect::<Vec<_>>(), "{}", report.apply.output);
    assert_eq!(report.merged[0].patch, 1);
    assert_eq!(report.merged[1].subject, "taken: change 2");
    assert!(report.test.is_none(), "nothing is tested");

    // Once later work changed the same lines, it no longer applies: still "already merged".
    std::fs::write(repo.join("hello.c"), "int main(void) { return 2; }\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "rewrite"]);
    let report = fresh(tmp.path()).run(&job(&repo, mbox.clone())).await.unwrap();
    assert!(!report.apply.ok);
    assert_eq!(report.merged.len(), 2, "{}", report.apply.output);
    assert!(report.test.is_none());

    // A series only half of which is in the branch does not apply, and is not "merged".
    git(&repo, &["checkout", "-q", "-b", "half", &taken[0]]);
    std::fs::write(repo.join("README"), "other docs\n").unwrap();
    git(&repo, &["add", "README"]);
    git(&repo, &["commit", "-q", "-m", "half: other docs"]);
    git(&repo, &["checkout", "-q", "main"]);
    let mut j = job(&repo, mbox);
    j.branch = "half".into();
    let report = fresh(tmp.path()).run(&j).await.unwrap();
    assert!(!report.apply.ok);
    assert!(report.merged.is_empty(), "{:?}", report.merged);
}
