//! TLS to PostgreSQL: a throwaway cluster (`scripts/postgres`) serving a certificate from a
//! private CA made here with openssl; `sslmode=require` with that CA (`store.ca_file`)
//! connects encrypted, and without it the server's certificate is refused. Needs Debian's
//! postgresql and openssl; fails, never skips, without them.

use std::path::Path;
use std::process::Command;

use patchbay_bus::Sealer;
use patchbay_store_pg::PgStore;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_connects_encrypted_and_checks_the_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let cluster = tmp.path().join("pg");
    let admin = run(Command::new(&script).arg("start").arg(&cluster));
    struct Stop(std::path::PathBuf, std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new(&self.0).arg("stop").arg(&self.1).status();
        }
    }
    let _stop = Stop(script.clone(), cluster.clone());

    // A private CA, and a certificate for 127.0.0.1 signed by it.
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    openssl(
        &certs,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=patchbay test CA",
        ],
    );
    openssl(&certs, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
    std::fs::write(certs.join("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(
        &certs,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
    let data = cluster.join("data");
    for f in ["server.crt", "server.key"] {
        std::fs::copy(certs.join(f), data.join(f)).unwrap();
    }
    // The cluster runs as the data directory's owner, who must own a private key of mode 0600.
    let owner = run(Command::new("stat").args(["-c", "%U"]).arg(&data));
    for f in ["server.crt", "server.key"] {
        run(Command::new("chown").arg(&owner).arg(data.join(f)));
    }
    run(Command::new("chmod").arg("600").arg(data.join("server.key")));
    let client = PgStore::connect(&admin, 2, Sealer::default()).await.unwrap().client().await.unwrap();
    client.batch_execute("ALTER SYSTEM SET ssl = on").await.unwrap();
    client.query_one("SELECT pg_reload_conf()", &[]).await.unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));

    let url = format!("{admin}?sslmode=require");
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    let store = PgStore::connect_with(&url, 2, Some(&ca), Sealer::default()).await.expect("TLS with the private CA");
    let encrypted: bool =
        store.client().await.unwrap().query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(encrypted, "the connection is encrypted");
    let refused = PgStore::connect_with(&url, 2, None, Sealer::default()).await;
    assert!(refused.is_err(), "a certificate from an unknown CA is refused");
    assert!(
        PgStore::connect_with(&url, 2, Some(b"not a certificate"), Sealer::default()).await.is_err(),
        "a CA file without PEM is an error"
    );
}
