//! The sandbox against real scripts: results, limits, and escape attempts.
//! These need bubblewrap; without it they fail (they never skip), as
//! `scripts/test` installs it.

use std::path::Path;
use std::time::Duration;

use patchbay_runner::{Failure, Isolation, Limits, Sandbox};

fn sandbox() -> Sandbox {
    Sandbox::new(Isolation::Bubblewrap).expect("bubblewrap is installed (scripts/test installs Debian's bubblewrap)")
}

fn limits(wall_secs: u64) -> Limits {
    Limits {
        wall: Duration::from_secs(wall_secs),
        memory_bytes: 256 << 20,
        processes: 128,
        file_size_bytes: 64 << 20,
        output_bytes: 64 << 10,
    }
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Processes whose command line contains `marker`.
fn running_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) && !cmd.contains("cargo") {
                found.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[tokio::test]
async fn passes_fails_and_keeps_head_and_tail() {
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("input"), "from the tree\n").unwrap();
    let run = sandbox().run("cat input; pwd; echo made > output", tree.path(), &limits(30)).await.unwrap();
    assert_eq!(run.failure, None, "{}", text(&run.output));
    assert!(text(&run.output).contains("from the tree\n/build\n"), "{}", text(&run.output));
    assert_eq!(std::fs::read_to_string(tree.path().join("output")).unwrap(), "made\n", "the tree is writable");

    let run = sandbox().run("echo compiling; echo 'error: expected ;' >&2; exit 3", tree.path(), &limits(30)).await.unwrap();
    assert_eq!(run.failure, Some(Failure::Failed));
    assert_eq!(run.exit_code, Some(3));
    assert!(text(&run.output).contains("error: expected ;"), "stderr is captured");

    let mut small = limits(30);
    small.output_bytes = 1000;
    let run = sandbox().run("echo FIRST; seq 1 100000; echo LAST", tree.path(), &small).await.unwrap();
    let out = text(&run.output);
    assert!(out.starts_with("FIRST\n") && out.ends_with("LAST\n"), "head and tail kept");
    assert!(run.dropped > 0 && out.contains("bytes of output dropped"));
    assert!(run.output.len() < 1200);
}

#[tokio::test]
async fn a_script_that_never_ends_is_killed_with_its_whole_tree() {
    let tree = tempfile::tempdir().unwrap();
    let marker = format!("9{}7", std::process::id());
    let script = format!("sleep {marker} & sleep {marker} & (sleep {marker}; echo) & sleep {marker}");
    let started = std::time::Instant::now();
    let run = sandbox().run(&script, tree.path(), &limits(2)).await.unwrap();
    assert_eq!(run.failure, Some(Failure::Timeout));
    assert!(started.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(running_with(&format!("sleep {marker}")), Vec::<String>::new(), "no process left behind");
}

#[tokio::test]
async fn a_memory_hog_is_stopped_and_reported() {
    let tree = tempfile::tempdir().unwrap();
    let sb = sandbox();
    let mut l = limits(60);
    l.memory_bytes = 64 << 20;
    let run = sb.run("python3 -c 'x = bytearray(400 * 1024 * 1024); print(len(x))'", tree.path(), &l).await.unwrap();
    // With cgroups the kernel kills it and we can say why; with rlimits alone the allocation
    // fails inside the script, which reports a plain failure.
    let want = if sb.has_cgroups() { Failure::Memory } else { Failure::Failed };
    assert_eq!(run.failure, Some(want), "{}", text(&run.output));
    assert!(!text(&run.output).contains("419430400"), "the allocation did not succeed");
}

#[tokio::test]
async fn a_fork_bomb_is_contained() {
    let tree = tempfile::tempdir().unwrap();
    let sb = sandbox();
    let mut l = limits(3);
    l.processes = 64;
    let marker = format!("bomb{}", std::process::id());
    let script = format!("{marker}() {{ {marker} | {marker} & }}; {marker}; sleep 30");
    let run = sb.run(&script, tree.path(), &l).await.unwrap();
    assert!(run.failure.is_some(), "the bomb is reported as a failure");
    if sb.has_cgroups() {
        assert!(run.hit_process_limit, "pids.max was what stopped it");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(running_with(&marker).is_empty(), "nothing of the bomb survives: {:?}", running_with(&marker));
    // The machine still works.
    let ok = sb.run("echo alive", tree.path(), &limits(30)).await.unwrap();
    assert_eq!(ok.failure, None);
}

#[tokio::test]
async fn no_network_not_even_loopback_of_the_host() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let tree = tempfile::tempdir().unwrap();
    let script = format!(
        "python3 -c \"import socket\ntry:\n  socket.create_connection(('127.0.0.1', {port}), timeout=3)\n  print('CONNECTED')\nexcept OSError as e:\n  print('refused', e)\""
    );
    let run = sandbox().run(&script, tree.path(), &limits(30)).await.unwrap();
    let out = text(&run.output);
    assert!(out.contains("refused") && !out.contains("CONNECTED"), "{out}");
    assert!(listener.accept().is_err(), "nothing reached the host's listener");
}

#[tokio::test]
async fn the_host_is_read_only_and_home_is_not_there() {
    let tree = tempfile::tempdir().unwrap();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let secret = Path::new(&home).join(format!(".patchbay-test-secret-{}", std::process::id()));
    std::fs::write(&secret, "s3cr3t-value\n").unwrap();
    let outside = std::env::temp_dir().join(format!("patchbay-escape-{}", std::process::id()));
    let script = format!(
        "cat '{}' 2>&1; ls '{home}' 2>&1 | head -3; touch /usr/escape 2>&1; touch /etc/escape 2>&1; touch '{}' 2>&1; cat /etc/shadow 2>&1 | head -1; echo done",
        secret.display(),
        outside.display()
    );
    let run = sandbox().run(&script, tree.path(), &limits(30)).await.unwrap();
    let out = text(&run.output);
    std::fs::remove_file(&secret).unwrap();
    assert!(!out.contains("s3cr3t-value"), "the runner's home is not visible: {out}");
    assert!(!Path::new("/usr/escape").exists() && !Path::new("/etc/escape").exists());
    assert!(!outside.exists(), "nothing written outside the tree");
    assert!(!out.contains("root:"), "no secrets of /etc readable: {out}");
    assert!(out.contains("done"));
}

#[tokio::test]
async fn isolation_none_runs_directly_with_limits() {
    let tree = tempfile::tempdir().unwrap();
    let sb = Sandbox::new(Isolation::None).unwrap();
    let run = sb.run("pwd", tree.path(), &limits(30)).await.unwrap();
    assert_eq!(run.failure, None);
    assert!(text(&run.output).trim_end().ends_with(&tree.path().file_name().unwrap().to_string_lossy().to_string()));
    let run = sb.run("sleep 100", tree.path(), &limits(1)).await.unwrap();
    assert_eq!(run.failure, Some(Failure::Timeout));
}
