//! Report mails checked against golden files in `tests/golden/`: what a
//! maintainer reads, whole. On a difference the test prints a line diff;
//! `PATCHBAY_BLESS=1 cargo test -p patchbay-report --test golden` rewrites
//! the files (read the diff before committing them).

use patchbay_report::compose::{Line, Recipients, Report, Settings, Thread, compose};

/// What the runner publishes for a series whose patch 2/3 conflicts: `git am -3`'s
/// stdout, then its stderr, then the failing patch's diff.
const APPLY_LOG: &str = "Applying: hwmon: (foo) add a reset attribute
Applying: hwmon: (foo) report the fan speed in rpm
Using index info to reconstruct a base tree...
M\tdrivers/hwmon/foo.c
Falling back to patching base and 3-way merge...
Auto-merging drivers/hwmon/foo.c
CONFLICT (content): Merge conflict in drivers/hwmon/foo.c
Patch failed at 0002 hwmon: (foo) report the fan speed in rpm
error: Failed to merge in the changes.
hint: Use 'git am --show-current-patch=diff' to see the failed patch
hint: When you have resolved this problem, run \"git am --continue\".
hint: If you prefer to skip this patch, run \"git am --skip\" instead.
hint: To restore the original branch and stop patching, run \"git am --abort\".
hint: Disable this message with \"git config advice.mergeConflict false\"

--- the patch that failed ---
---
 Documentation/hwmon/foo.rst |  2 +-
 drivers/hwmon/foo.c         | 23 +++++++++++++++--------
 2 files changed, 16 insertions(+), 9 deletions(-)

diff --git a/Documentation/hwmon/foo.rst b/Documentation/hwmon/foo.rst
index 1a2b3c4..5d6e7f8 100644
--- a/Documentation/hwmon/foo.rst
+++ b/Documentation/hwmon/foo.rst
@@ -20,7 +20,7 @@ Sysfs entries
 ============= ===========================================
 temp1_input   Temperature in millidegrees Celsius
-fan1_input    Fan speed in pulses
+fan1_input    Fan speed in rpm
 reset         Write 1 to reset the chip
 ============= ===========================================
diff --git a/drivers/hwmon/foo.c b/drivers/hwmon/foo.c
index ac9837c..d2f4bfa 100644
--- a/drivers/hwmon/foo.c
+++ b/drivers/hwmon/foo.c
@@ -112,15 +112,22 @@ static int foo_read_fan(struct device *dev, long *val)
 {
 \tstruct foo_data *data = dev_get_drvdata(dev);
-\tint pulses;
+\tint pulses, ppr;
 
 \tpulses = foo_read_word(data, FOO_REG_FAN);
 \tif (pulses < 0)
 \t\treturn pulses;
-\t*val = pulses;
+\tppr = foo_read_byte(data, FOO_REG_PPR);
+\tif (ppr < 0)
+\t\treturn ppr;
+\tif (!pulses || !ppr)
+\t\t*val = 0;
+\telse
+\t\t*val = DIV_ROUND_CLOSEST(60 * data->clock, pulses * ppr);
 \treturn 0;
 }
 
@@ -240,6 +247,7 @@ static const struct hwmon_channel_info *foo_info[] = {
 \tHWMON_CHANNEL_INFO(temp, HWMON_T_INPUT),
 \tHWMON_CHANNEL_INFO(fan, HWMON_F_INPUT),
+\tHWMON_CHANNEL_INFO(fan, HWMON_F_DIV),
 \tNULL
 };
-- 
2.47.3

";

fn apply_failure_report() -> (Report, Thread) {
    let line = |what: &str, outcome: &str, reason: &str, seconds| Line {
        what: what.into(),
        outcome: outcome.into(),
        reason: Some(reason.into()),
        seconds,
        excerpt: Some(APPLY_LOG.into()),
        log_url: Some(format!("https://ci.example.org/api/v1/logs/7-v2-{}", what.replace('/', "-"))),
        flaky: false,
        pre_existing: false,
    };
    let report = Report {
        series: 7,
        version: 2,
        total: 3,
        project: "hwmon".into(),
        verdict: "FAILED".into(),
        failed: vec!["apply".into()],
        missing: vec![],
        flaky: vec![],
        pre_existing: vec![],
        lines: vec![
            line("apply", "FAILED", "apply", 2),
            line("build/x86_64", "ERROR", "series-does-not-apply", 2),
            line("check/x86_64", "ERROR", "series-does-not-apply", 1),
        ],
        base: Some("5f0e1d2c3b4a59687766554433221100ffeeddcc (branch hwmon-next)".into()),
        link: None,
        reproduce: vec![],
        round: 0,
        recheck: vec![],
    };
    let thread = Thread {
        reply_to: "<20240102.cover@example.org>".into(),
        references: vec![],
        subject: "[PATCH v2 0/3] hwmon: (foo) fan speed in rpm".into(),
        submitter: "Dev Eloper <dev@example.org>".into(),
        list: Some("linux-hwmon@vger.kernel.org".into()),
    };
    (report, thread)
}

/// Compares `actual` with the golden file `name`, printing a line diff; rewrites it under `PATCHBAY_BLESS=1`.
fn check_golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("PATCHBAY_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (PATCHBAY_BLESS=1 writes it)", path.display()));
    if expected == actual {
        return;
    }
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut diff = String::new();
    for i in 0..e.len().max(a.len()) {
        match (e.get(i), a.get(i)) {
            (Some(x), Some(y)) if x == y => diff.push_str(&format!("  {x}\n")),
            (x, y) => {
                if let Some(x) = x {
                    diff.push_str(&format!("- {x}\n"));
                }
                if let Some(y) = y {
                    diff.push_str(&format!("+ {y}\n"));
                }
            }
        }
    }
    panic!("{} differs from the mail composed now (- golden, + now; PATCHBAY_BLESS=1 rewrites it):\n{diff}", path.display());
}

#[test]
fn an_apply_failure_names_the_patch_the_file_and_the_hunk_in_under_40_lines() {
    let (report, thread) = apply_failure_report();
    let settings = Settings { from: "patchbay <ci@example.org>".into(), domain: "ci.example.org".into(), recipients: Recipients::Both };
    let mail = String::from_utf8(compose(&report, &thread, &settings, "Tue, 2 Jan 2024 10:00:00 +0000")).unwrap();
    check_golden("apply-failure.txt", &mail);
    let body = mail.split_once("\n\n").unwrap().1;
    assert!(body.lines().count() < 40, "{} lines:\n{body}", body.lines().count());
    assert!(body.contains("patch 2/3") && body.contains("[2/3] hwmon: (foo) report the fan speed in rpm"), "{body}");
    assert!(body.contains("drivers/hwmon/foo.c") && body.contains("| @@ -112,15 +112,22 @@"), "{body}");
    assert!(body.contains("5f0e1d2c3b4a59687766554433221100ffeeddcc (branch hwmon-next)"), "{body}");
    assert!(body.contains("What to do:"), "{body}");
    // The conflict is shown once, and tests that never ran take one line.
    assert_eq!(body.matches("CONFLICT (content)").count(), 1, "{body}");
    assert_eq!(body.matches("foo_read_word").count(), 1, "{body}");
    assert_eq!(body.lines().filter(|l| l.contains("build/x86_64") || l.contains("check/x86_64")).count(), 1, "{body}");
    assert!(body.lines().all(|l| l.chars().count() <= 72 || l.starts_with("| ") || l.starts_with("Full log: ")), "{body}");
}
