//! `patchbay demo`, the README's first command: a sample project, a good and a
//! broken series over LMTP, both tested, two reports in the outbox.

use std::process::Command;

#[test]
fn the_demo_tests_two_series_and_writes_two_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .env_remove("PATCHBAY_CONFIG")
        .env_remove("PATCHBAY_DATA_DIR")
        .current_dir(tmp.path())
        .args(["demo", "--exit", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().any(|l| l.contains("PASSED") && l.contains("say hello more politely")), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("FAILED") && l.contains("greet: shout")), "{stdout}");
    let reports: Vec<String> =
        std::fs::read_dir(dir.join("data/outbox/new")).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    assert_eq!(reports.len(), 2);
    let failed = reports.iter().find(|r| r.contains("X-Patchbay-Verdict: FAILED")).unwrap();
    assert!(failed.contains("Syntax error"), "the shell's error is quoted: {failed}");
    assert!(failed.contains("In-Reply-To: <cover-broken."));
    // A second run starts afresh in the same directory.
    let again = Command::new(env!("CARGO_BIN_EXE_patchbay")).args(["demo", "--exit", "--dir"]).arg(&dir).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    // On the same address as before: a bookmarked dashboard keeps working.
    let dashboard = |out: &str| out.lines().find(|l| l.starts_with("Dashboard:")).map(str::to_string);
    let first = dashboard(&stdout).expect("the demo says where its dashboard is");
    assert_eq!(dashboard(&String::from_utf8_lossy(&again.stdout)).as_deref(), Some(first.as_str()), "the demo's port moved");
}
