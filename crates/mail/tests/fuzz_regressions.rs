//! Every input kept from fuzzing (`fuzz/regressions/`) goes through the parsers in the normal
//! suite: none may panic, and each mail still gets a bracketed Message-ID.

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions").join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn parse_regressions() {
    let all = inputs("parse");
    assert!(all.len() >= 20, "only {} parse regression inputs", all.len());
    for (path, data) in all {
        let p = patchbay_mail::parse(&data);
        assert!(p.message_id.starts_with('<') && p.message_id.ends_with('>'), "{}", path.display());
        for m in patchbay_mail::MboxReader::new(&data[..]) {
            let _ = patchbay_mail::parse(&m.unwrap().raw);
        }
    }
}

#[test]
fn subject_regressions() {
    let all = inputs("subject");
    assert!(all.len() >= 10, "only {} subject regression inputs", all.len());
    for (path, data) in all {
        let s = patchbay_mail::subject::parse(&String::from_utf8_lossy(&data));
        if let Some((n, total)) = s.counter {
            assert!(n <= 9999 && total <= 9999, "{}", path.display());
        }
    }
}
