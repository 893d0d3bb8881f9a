//! The message history as users reach it: `serve` records what `patchbay
//! publish` sends; `GET /api/v1/messages` finds it by filter, `GET
//! /api/v1/messages/{id}` returns it byte for byte and its signature verifies
//! against the daemon's public key; `patchbay query` says the same; bad
//! filters are refused naming the parameter.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_patchbay"));
    c.env_remove("PATCHBAY_CONFIG").env_remove("PATCHBAY_DATA_DIR").env_remove("RUST_LOG");
    c
}

struct Serve(Child);
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (status line, body) of a GET.
fn get(port: u16, path: &str) -> (String, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (String::new(), String::new()) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

fn setup() -> (tempfile::TempDir, PathBuf, u16, Serve) {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[ingest]\nlmtp_listen = \"\"\n[bus]\nprefix = \"e2e\"\nenv = \"test\"\n"),
    )
    .unwrap();
    let serve = Serve(bin().arg("--config").arg(&config).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(port, "/healthz").0.contains("200") {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (tmp, config, port, serve)
}

fn publish(config: &std::path::Path, topic: &str, body: &str) {
    let out = bin().arg("--config").arg(config).args(["publish", "--topic", topic, "--json", body]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn history_over_http_and_the_command_line() {
    let (tmp, config, port, _serve) = setup();
    for i in 0..12 {
        publish(&config, "demo.widget.built", &format!("{{\"n\":{i},\"project\":\"qemu\",\"note\":\"widget {i} built\"}}"));
    }
    publish(&config, "other.thing.happened", "{\"project\":\"linux\",\"note\":\"a rare needle\"}");
    // The indexer follows commits; wait until it has all 13.
    let deadline = Instant::now() + Duration::from_secs(20);
    let all = loop {
        let (status, body) = get(port, "/api/v1/messages?topic=e2e.test.%23&rows_per_page=100");
        assert!(status.contains("200"), "{status} {body}");
        let v = json(&body);
        if v["total"] == 13 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(all["total"], 13);
    let (_, body) = get(port, "/api/v1/messages?category=demo&project=qemu&rows_per_page=5&page=2");
    let page = json(&body);
    assert_eq!((page["total"].as_u64(), page["pages"].as_u64(), page["messages"].as_array().unwrap().len()), (Some(12), Some(3), 5));
    assert_eq!(page["messages"][0]["body"]["n"], 6, "newest first: page 2 starts at the 7th newest");
    let (_, body) = get(port, "/api/v1/messages?contains=needle");
    let found = json(&body);
    assert_eq!(found["total"], 1);
    assert_eq!(found["messages"][0]["topic"], "e2e.test.other.thing.happened");
    let (_, body) = get(port, "/api/v1/messages?not_category=demo&not_category=other");
    assert_eq!(json(&body)["total"], 0);

    // One message by id: the bytes stored, and the daemon's signature verifies.
    let id = found["messages"][0]["id"].as_str().unwrap().to_string();
    let (status, raw) = get(port, &format!("/api/v1/messages/{id}"));
    assert!(status.contains("200"));
    let env = patchbay_model::Envelope::from_wire(raw.as_bytes()).unwrap();
    let mut policy = patchbay_bus::TrustPolicy::new(true);
    let trusted = policy.trust_dir(&tmp.path().join("data/keys")).unwrap();
    policy.allow(&trusted[0], vec![patchbay_bus::TopicPattern::parse("#").unwrap()]);
    policy.check(&env).expect("a message from history verifies");
    let mut tampered = env.clone();
    tampered.body["note"] = serde_json::json!("something else");
    assert!(policy.check(&tampered).is_err(), "and the check is real");
    assert!(get(port, "/api/v1/messages/00000000-0000-0000-0000-000000000000").0.contains("404"));

    // Bad filters name the parameter.
    let (status, body) = get(port, "/api/v1/messages?rows_per_page=1000");
    assert!(status.contains("400") && body.contains("rows_per_page"), "{status} {body}");
    let (status, body) = get(port, "/api/v1/messages?colour=red");
    assert!(status.contains("400") && body.contains("colour"), "{status} {body}");

    // The command line, with or without serve.
    let out = bin().arg("--config").arg(&config).args(["query", "--json", "contains=needle"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&String::from_utf8_lossy(&out.stdout))["messages"][0]["id"], id.as_str());
    let out = bin().arg("--config").arg(&config).args(["query", "category=demo", "rows_per_page=3"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.contains("e2e.test.demo.widget.built")), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("12 message(s)"));
    let bad = bin().arg("--config").arg(&config).args(["query", "order=sideways"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("order"));
}
