//! `patchbay-bench runner`: the runner's own overhead. A 10-patch series on a
//! repository of a few thousand commits goes through the whole runner
//! (mirror → worktree → `git am -3` → sandbox → trivial script → result
//! published on an embedded bus), alternating with a shell script that runs
//! the same git, cgroup and bubblewrap commands by hand. Medians of both and
//! the overhead are printed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use patchbay_bus::{Bus, Publisher, Sealer};
use patchbay_model::{Sender, SeriesHead, TestJob, TestLimits, TopicRoot};
use patchbay_runtime::Handler;

/// Options of `patchbay-bench runner`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunnerBench {
    /// Commits in the repository.
    #[arg(long, default_value_t = 3000)]
    commits: usize,
    /// Patches in the series.
    #[arg(long, default_value_t = 10)]
    patches: usize,
    /// Measured rounds of each contender.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    patchbay_fixtures::try_git(dir, args).map_err(anyhow::Error::msg)
}

/// A repository of `commits` commits over 500 files, and a series of `patches` patches on it.
fn make_repo(dir: &Path, commits: usize, patches: usize) -> anyhow::Result<(PathBuf, String, Vec<u8>)> {
    let repo = dir.join("origin");
    std::fs::create_dir_all(&repo)?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    let mut script = String::new();
    for i in 0..commits {
        let msg = format!("commit {i}\n");
        let content = format!("line {i}\n").repeat(20);
        script.push_str(&format!(
            "commit refs/heads/main\ncommitter Dev <dev@example.org> {} +0000\ndata {}\n{msg}",
            1_700_000_000 + i,
            msg.len()
        ));
        script.push_str(&format!("M 100644 inline src/f{}.txt\ndata {}\n{content}\n", i % 500, content.len()));
    }
    let mut fi = Command::new("git").current_dir(&repo).args(["fast-import", "--quiet"]).stdin(Stdio::piped()).spawn()?;
    fi.stdin.take().context("stdin")?.write_all(script.as_bytes())?;
    anyhow::ensure!(fi.wait()?.success(), "git fast-import failed");
    git(&repo, &["checkout", "-q", "-f", "main"])?;
    let base = git(&repo, &["rev-parse", "HEAD"])?.trim().to_string();
    git(&repo, &["checkout", "-q", "-b", "series"])?;
    for p in 0..patches {
        let file = repo.join(format!("src/f{}.txt", p * 7));
        let mut text = std::fs::read_to_string(&file)?;
        text.push_str(&format!("patched by {p}\n"));
        std::fs::write(&file, text)?;
        git(&repo, &["commit", "-q", "-am", &format!("series: patch {}", p + 1)])?;
    }
    let mbox = git(&repo, &["format-patch", "--stdout", &format!("{base}..series")])?;
    git(&repo, &["checkout", "-q", "main"])?;
    Ok((repo, base, mbox.into_bytes()))
}

/// The same commands the runner runs, by hand (see `patchbay-runner`'s sandbox and git modules).
const HAND: &str = r#"set -e
mirror=$1; tree=$2; base=$3; mbox=$4; cg=$5
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_AUTHOR_NAME=r GIT_AUTHOR_EMAIL=r@x GIT_COMMITTER_NAME=r GIT_COMMITTER_EMAIL=r@x
git --git-dir "$mirror" worktree add --detach --quiet "$tree" "$base"
(cd "$tree" && HOME="$tree" git -c core.hooksPath=/dev/null am -3 --keep-cr --no-gpg-sign < "$mbox" > /dev/null)
wrap=
if [ "$(id -u)" = 0 ]; then
  chown -R 65534:65534 "$tree"
  wrap="setpriv --reuid=65534 --regid=65534 --clear-groups --"
  if [ -d /sys/fs/cgroup/memory ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
    mkdir -p /sys/fs/cgroup/memory/$cg /sys/fs/cgroup/pids/$cg
    echo 1073741824 > /sys/fs/cgroup/memory/$cg/memory.limit_in_bytes
    echo 256 > /sys/fs/cgroup/pids/$cg/pids.max
  fi
fi
sh -c 'for f in /sys/fs/cgroup/memory/'$cg'/cgroup.procs /sys/fs/cgroup/pids/'$cg'/cgroup.procs; do [ -f $f ] && echo $$ > $f; done; exec "$@"' x \
  prlimit --fsize=1073741824 --nofile=4096 --core=0 -- $wrap bwrap --unshare-all --unshare-user --uid 65534 --gid 65534 \
  --die-with-parent --new-session --cap-drop ALL --hostname sandbox --ro-bind /usr /usr --ro-bind-try /bin /bin \
  --ro-bind-try /sbin /sbin --ro-bind-try /lib /lib --ro-bind-try /lib64 /lib64 --ro-bind-try /lib32 /lib32 --ro-bind /etc /etc \
  --tmpfs /tmp --dev /dev --proc /proc --bind "$tree" /build --chdir /build --clearenv \
  --setenv PATH /usr/bin:/bin --setenv HOME /tmp /bin/sh -c 'exec 2>&1
true' > /dev/null
rmdir /sys/fs/cgroup/memory/$cg /sys/fs/cgroup/pids/$cg 2>/dev/null || true
git --git-dir "$mirror" worktree remove --force "$tree"
"#;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs the benchmark.
pub async fn run(opts: RunnerBench) -> anyhow::Result<()> {
    let scratch = std::env::temp_dir().join(format!("patchbay-bench-runner-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = bench(&scratch, &opts).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn bench(scratch: &Path, opts: &RunnerBench) -> anyhow::Result<()> {
    eprintln!("making a repository of {} commits and a {}-patch series…", opts.commits, opts.patches);
    let (repo, base, mbox) = make_repo(scratch, opts.commits, opts.patches)?;
    let mbox_file = scratch.join("series.mbox");
    std::fs::write(&mbox_file, &mbox)?;
    let hand_script = scratch.join("hand.sh");
    std::fs::write(&hand_script, HAND)?;

    let work = scratch.join("runner");
    let sandbox = patchbay_runner::Sandbox::new(patchbay_runner::Isolation::Bubblewrap)?;
    let runner = patchbay_runner::Runner::new(&work, sandbox, Duration::from_secs(3600));
    let bus =
        patchbay_store::EmbeddedBus::open(&scratch.join("bus"), Sealer::new(Some(Arc::new(patchbay_bus::SigningKey::generate("bench")?))))?;
    let bus: Arc<dyn Bus> = Arc::new(bus);
    let root = TopicRoot::new("patchbay", "bench")?;
    let publisher = Publisher::new(bus.clone(), root.clone(), Sender::new("runner", "bench"));
    let service = patchbay_ci::RunnerService::new(runner, publisher.clone(), 1, 3);
    let job = TestJob {
        job: "1-v1-bench-x86_64".into(),
        series: SeriesHead {
            id: 1,
            project: "bench".into(),
            name: "bench".into(),
            submitter: "dev@example.org".into(),
            version: 1,
            total: opts.patches as u32,
        },
        test: "bench".into(),
        arch: "x86_64".into(),
        capabilities: vec![],
        required: true,
        repository: repo.display().to_string(),
        branch: "main".into(),
        base_commit: Some(base.clone()),
        dependencies: vec![],
        mbox: String::from_utf8(mbox)?,
        mbox_base64: None,
        script: Some("true".into()),
        limits: TestLimits { wall_secs: 60, memory_mib: 1024, processes: 256, file_size_mib: 1024, output_kib: 64 },
        date: None,
        tree: None,
        remotes: vec![],
        retries: 0,
        retry: 0,
        avoid: None,
        baseline: false,
        per_patch: false,
        round: 0,
        recheck: vec![],
    };
    let envelope = Sealer::default().seal(publisher.outgoing(&job)?, 1);
    let mirror = patchbay_runner::Mirror::new(&work.join("mirrors"), &repo.display().to_string());
    // Warm-up: the first run clones the mirror, which both contenders then share.
    service.handle(&envelope, 1).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let hand = |i: usize| -> anyhow::Result<Duration> {
        let tree = scratch.join(format!("hand-{i}"));
        let started = Instant::now();
        let out = Command::new("sh")
            .arg(&hand_script)
            .arg(mirror.dir())
            .arg(&tree)
            .arg(&base)
            .arg(&mbox_file)
            .arg(format!("patchbay-hand-{}-{i}", std::process::id()))
            .output()?;
        let took = started.elapsed();
        anyhow::ensure!(out.status.success(), "hand-run script failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(took)
    };
    hand(0)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..opts.rounds {
        let started = Instant::now();
        service.handle(&envelope, 1).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        ours.push(started.elapsed());
        theirs.push(hand(i + 1)?);
    }
    let (o, t) = (median(ours), median(theirs));
    let overhead = (o.as_secs_f64() / t.as_secs_f64() - 1.0) * 100.0;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "commits": opts.commits,
            "patches": opts.patches,
            "rounds": opts.rounds,
            "runner_median_ms": o.as_secs_f64() * 1000.0,
            "hand_run_median_ms": t.as_secs_f64() * 1000.0,
            "overhead_percent": overhead,
        }))?
    );
    Ok(())
}
