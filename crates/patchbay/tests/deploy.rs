//! `docs/deploy.md` is what an operator copies into systemd: every `ExecStart` in it names a
//! command, options and a service that this binary has, and every `patchbay@<service>` unit
//! names a service `patchbay run` knows (issue 15).

use std::path::PathBuf;
use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay")).args(args).arg("--help").env_remove("PATCHBAY_CONFIG").output().unwrap();
    assert!(out.status.success(), "patchbay {} --help failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_exec_start_in_the_deploy_guide_names_what_exists() {
    let doc = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/deploy.md")).unwrap();
    let run_help = help(&["run"]);
    let is_service = |name: &str| run_help.contains(&format!("- {name}:"));
    let global = help(&[]);
    let mut checked = 0;
    for line in doc.lines().filter_map(|l| l.strip_prefix("ExecStart=")).filter(|l| !l.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], "/usr/bin/patchbay", "{line}");
        let mut i = 1;
        while words[i].starts_with("--") {
            assert!(global.contains(&format!("{} <", words[i])), "{line}: no global option {}", words[i]);
            i += 2;
        }
        let command = words[i];
        let text = help(&[command]);
        let mut previous_was_option = false;
        for w in &words[i + 1..] {
            if w.starts_with("--") {
                assert!(text.contains(&format!("{w} ")) || text.contains(&format!("{w}\n")), "{line}: `{command}` has no option {w}");
                previous_was_option = true;
            } else if previous_was_option {
                previous_was_option = false;
            } else {
                assert_eq!(command, "run", "{line}: `{command}` takes no argument {w}");
                assert!(*w == "%i" || is_service(w), "{line}: `run` has no service {w}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 4, "the guide's ExecStart lines were found: {checked}");
    // Template instances, as `systemctl enable patchbay@<service>` names them.
    let units: Vec<&str> = doc
        .split(|c: char| c.is_whitespace() || c == '/' || c == '`')
        .filter_map(|w| w.strip_prefix("patchbay@"))
        .map(|w| w.trim_end_matches(".service").trim_end_matches(".service.d"))
        .filter(|w| !w.is_empty() && !w.starts_with('.'))
        .collect();
    assert!(units.len() >= 8, "{units:?}");
    for u in units {
        assert!(is_service(u), "docs/deploy.md names patchbay@{u}, which `run` does not know");
    }
}
