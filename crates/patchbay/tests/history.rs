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

/// (status code, body) of a request; JSON unless `headers` name another Content-Type.
fn request(port: u16, method: &str, path: &str, body: &str, headers: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let json = if headers.to_ascii_lowercase().contains("content-type:") { "" } else { "Content-Type: application/json\r\n" };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{json}Content-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    let _ = s.write_all(req.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_string())
}

/// Follows a `$ref` inside the document.
fn resolve<'a>(doc: &'a serde_json::Value, v: &'a serde_json::Value) -> &'a serde_json::Value {
    match v.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => resolve(doc, doc.pointer(r.trim_start_matches('#')).unwrap_or_else(|| panic!("dangling {r}"))),
        None => v,
    }
}

/// Checks `value` against a JSON Schema of the subset the document uses (type, enum,
/// properties, required, additionalProperties: false, items, minimum/maximum); returns what
/// does not fit.
fn check(doc: &serde_json::Value, schema: &serde_json::Value, value: &serde_json::Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            serde_json::Value::String(s) => vec![s.as_str()],
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
            _ => vec![],
        };
        let fits = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
        if !fits {
            errors.push(format!("{at}: {value} is not {types:?}"));
            return;
        }
    }
    if let Some(e) = schema.get("enum").and_then(|e| e.as_array())
        && !e.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {e:?}"));
    }
    if let Some(o) = value.as_object() {
        let props = schema.get("properties").and_then(|p| p.as_object());
        for r in schema.get("required").and_then(|r| r.as_array()).into_iter().flatten() {
            if !o.contains_key(r.as_str().unwrap()) {
                errors.push(format!("{at}: missing {r}"));
            }
        }
        for (k, v) in o {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(doc, s, v, &format!("{at}.{k}"), errors),
                None if schema.get("additionalProperties") == Some(&serde_json::Value::Bool(false)) => {
                    errors.push(format!("{at}: {k} is not in the schema"))
                }
                None => {}
            }
        }
    }
    if let (Some(a), Some(items)) = (value.as_array(), schema.get("items")) {
        for (i, v) in a.iter().enumerate() {
            check(doc, items, v, &format!("{at}[{i}]"), errors);
        }
    }
}

/// Checks one real response against the document's schema for (path, method, status).
fn conforms(doc: &serde_json::Value, path: &str, method: &str, status: u16, body: &str) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not in the document");
    let response = resolve(doc, &op["responses"][status.to_string()]);
    assert!(response.is_object(), "{method} {path} answered {status}, which the document does not list: {body}");
    let schema = &response["content"]["application/json"]["schema"];
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"));
    let mut errors = Vec::new();
    check(doc, schema, &value, "$", &mut errors);
    assert!(errors.is_empty(), "{method} {path} {status} does not fit the document:\n{}", errors.join("\n"));
}

#[test]
fn real_responses_match_the_openapi_document() {
    let (_tmp, _config, port, _serve) = setup();
    let (code, text) = request(port, "GET", "/api/openapi.json", "", "");
    assert_eq!(code, 200);
    let doc = json(&text);
    assert_eq!(doc["openapi"], "3.1.0");

    let (code, body) = request(port, "GET", "/healthz", "", "");
    conforms(&doc, "/healthz", "get", code, &body);
    let (code, body) = request(port, "GET", "/readyz", "", "");
    assert_eq!((code, json(&body)["checks"].clone()), (200, serde_json::json!({"bus": "ok", "store": "ok"})), "{body}");
    conforms(&doc, "/readyz", "get", code, &body);
    // The series read model: an empty list, no such series, bad values named.
    let (code, body) = request(port, "GET", "/api/v1/series?state=complete&page=1", "", "");
    assert_eq!((code, json(&body)["total"].clone()), (200, serde_json::json!(0)), "{body}");
    conforms(&doc, "/api/v1/series", "get", code, &body);
    for (path, want) in [("/api/v1/series?state=bogus", 400), ("/api/v1/series?per_page=0", 400), ("/api/v1/series?nope=1", 400)] {
        let (code, body) = request(port, "GET", path, "", "");
        assert_eq!(code, want, "{path}: {body}");
        conforms(&doc, "/api/v1/series", "get", code, &body);
    }
    let (code, body) = request(port, "GET", "/api/v1/series/7", "", "");
    assert_eq!(code, 404, "{body}");
    conforms(&doc, "/api/v1/series/{id}", "get", code, &body);
    let (code, body) = request(port, "GET", "/api/v1/series/abc/mbox", "", "");
    assert_eq!(code, 400, "{body}");
    conforms(&doc, "/api/v1/series/{id}/mbox", "get", code, &body);
    // Every peer needs a token, this host too: `serve` keeps its own in the data directory.
    let token = std::fs::read_to_string(_tmp.path().join("data/publish.token")).unwrap();
    let auth = format!("Authorization: Bearer {}\r\n", token.trim());
    let (code, body) = request(port, "POST", "/api/v1/publish", "{\"topic\":\"demo.widget.built\",\"body\":{\"n\":1}}", "");
    assert_eq!(code, 403, "{body}");
    conforms(&doc, "/api/v1/publish", "post", code, &body);
    let (code, body) = request(port, "POST", "/api/v1/publish", "{\"topic\":\"demo.widget.built\",\"body\":{\"n\":1}}", &auth);
    assert_eq!(code, 200, "{body}");
    conforms(&doc, "/api/v1/publish", "post", code, &body);
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let (code, body) = request(port, "POST", "/api/v1/publish", "{\"topic\":\"x\"}", &auth);
    assert_eq!(code, 400);
    conforms(&doc, "/api/v1/publish", "post", code, &body);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (code, body) = loop {
        let (code, body) = request(port, "GET", "/api/v1/messages?category=demo", "", "");
        if json(&body)["total"] == 1 || Instant::now() > deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(json(&body)["total"], 1);
    conforms(&doc, "/api/v1/messages", "get", code, &body);
    let (code, body) = request(port, "GET", "/api/v1/messages?page=0", "", "");
    conforms(&doc, "/api/v1/messages", "get", code, &body);
    let (code, body) = request(port, "GET", &format!("/api/v1/messages/{id}"), "", "");
    conforms(&doc, "/api/v1/messages/{id}", "get", code, &body);
    let (code, body) = request(port, "GET", "/api/v1/messages/nope", "", "");
    conforms(&doc, "/api/v1/messages/{id}", "get", code, &body);
    let (code, body) = request(port, "GET", "/api/v1/results?latest=true", "", "");
    conforms(&doc, "/api/v1/results", "get", code, &body);
    let (code, body) = request(port, "GET", "/api/v1/results?limit=x", "", "");
    conforms(&doc, "/api/v1/results", "get", code, &body);
    let (code, body) = request(port, "GET", "/api/v1/logs/no-such-job", "", "");
    conforms(&doc, "/api/v1/logs/{job}", "get", code, &body);
    let (code, body) =
        request(port, "POST", "/api/v1/results/1/waive", "{\"comment\":\"flaky\"}", "Authorization: Bearer wrong-token-wrong-token\r\n");
    conforms(&doc, "/api/v1/results/{id}/waive", "post", code, &body);
    // What publish refuses, each as documented: not JSON (415), a web page's origin, a topic a
    // service owns (403), one of patchbay's own names in any case (400).
    let publish = "{\"topic\":\"demo.widget.built\",\"body\":{\"n\":2}}";
    for (headers, body, want) in [
        (format!("{auth}Content-Type: text/plain\r\n"), publish, 415),
        (format!("{auth}Origin: http://evil.example\r\n"), publish, 403),
        (auth.clone(), "{\"topic\":\"ci.test.finished\",\"body\":{}}", 403),
        (auth.clone(), "{\"topic\":\"demo.widget.built\",\"body\":{},\"service\":\"RUNNER\"}", 400),
    ] {
        let (code, text) = request(port, "POST", "/api/v1/publish", body, &headers);
        assert_eq!(code, want, "{headers:?} {body}: {text}");
        conforms(&doc, "/api/v1/publish", "post", code, &text);
    }
    // A bad path parameter, or a value the document rules out, is the documented JSON 400 (it
    // was axum's text/plain), before any token is looked at.
    for (method, path, documented) in [
        ("POST", "/api/v1/results/abc/waive", "/api/v1/results/{id}/waive"),
        ("POST", "/api/v1/results/0/waive", "/api/v1/results/{id}/waive"),
        ("POST", "/api/v1/reports/x/1/resend", "/api/v1/reports/{series}/{version}/resend"),
        ("POST", "/api/v1/reports/1/0/resend", "/api/v1/reports/{series}/{version}/resend"),
        ("POST", "/api/v1/reports/1/4294967296/resend", "/api/v1/reports/{series}/{version}/resend"),
        ("GET", "/api/v1/messages?series=0", "/api/v1/messages"),
        ("GET", "/api/v1/messages?topic=", "/api/v1/messages"),
        ("GET", "/api/v1/messages?start=1e9", "/api/v1/messages"),
        ("GET", "/api/v1/messages?contains=%20%E3%80%80", "/api/v1/messages"),
        ("GET", "/api/v1/results?before=0", "/api/v1/results"),
        ("GET", "/api/v1/results?series=0", "/api/v1/results"),
        ("GET", "/api/v1/stream?after=x", "/api/v1/stream"),
        ("GET", "/api/v1/stream?topic=", "/api/v1/stream"),
    ] {
        let (code, text) = request(port, method, path, "{\"comment\":\"flaky\"}", "");
        assert_eq!(code, 400, "{method} {path}: {text}");
        conforms(&doc, documented, &method.to_lowercase(), code, &text);
    }
    // What the document allows is answered: a NUL in a phrase once made the full-text query fail.
    let (code, text) = request(port, "GET", "/api/v1/messages?contains=a%00b&start=2000-02-29T00:00:00.000000Z&series=1", "", "");
    assert_eq!(code, 200, "{text}");
    conforms(&doc, "/api/v1/messages", "get", code, &text);
    // No such endpoint, or no such method, is JSON under /api/ too; a page stays a page.
    for (method, path, want) in [("GET", "/api/v1/nope", 404), ("DELETE", "/api/v1/results", 405), ("GET", "/api/v1/publish", 405)] {
        let (code, text) = request(port, method, path, "", "");
        assert_eq!(code, want, "{method} {path}: {text}");
        assert!(json(&text)["error"].is_string(), "{text}");
    }
    let (status, page) = get(port, "/series/abc");
    assert!(status.contains("400") && page.contains("<html"), "{status} {page}");

    // The checker is real: a response that does not fit is caught.
    let mut errors = Vec::new();
    check(&doc, &serde_json::json!({"$ref": "#/components/schemas/MessagePage"}), &serde_json::json!({"total": "many"}), "$", &mut errors);
    assert!(errors.len() >= 2, "{errors:?}");
}
