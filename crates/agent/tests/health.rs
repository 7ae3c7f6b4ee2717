//! Health probes against real servers and commands.

#![expect(
    clippy::disallowed_methods,
    reason = "real probes over real sockets: deadlines and measured durations are wall-clock"
)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_agent::health::{HealthCheck, Probe, Transition};
use berth_agent::process::Launch;
use berth_agent::ProcessDriver;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A tiny HTTP server answering every request with `status`, or never answering with `None`.
async fn serve(status: Option<u16>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                match status {
                    Some(code) => {
                        let response = format!(
                            "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        let _ = conn.write_all(response.as_bytes()).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn http_probe_passes_on_2xx_and_3xx_only_and_times_out() {
    let timeout = Duration::from_secs(2);
    for (code, ok) in [
        (200, true),
        (204, true),
        (302, true),
        (404, false),
        (500, false),
    ] {
        let addr = serve(Some(code)).await;
        let probe = Probe::Http {
            addr,
            path: "/healthz".into(),
        };
        let result = probe.run(timeout).await;
        assert_eq!(result.is_ok(), ok, "{code}: {result:?}");
        if !ok {
            assert!(result.unwrap_err().contains(&code.to_string()));
        }
    }
    let silent = serve(None).await;
    let t0 = Instant::now();
    let result = Probe::Http {
        addr: silent,
        path: "/".into(),
    }
    .run(Duration::from_millis(300))
    .await;
    assert!(result.unwrap_err().contains("timed out"));
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn http_probe_against_python_http_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = workload_dir();
    let mut server = tokio::process::Command::new(python())
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let root = Probe::Http {
        addr,
        path: "/".into(),
    };
    let mut ok = false;
    let deadline = Instant::now() + DEADLINE;
    while !ok && Instant::now() < deadline {
        ok = root.run(Duration::from_secs(1)).await.is_ok();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "python http.server never answered 2xx");
    let missing = Probe::Http {
        addr,
        path: "/nope".into(),
    };
    assert!(missing
        .run(Duration::from_secs(1))
        .await
        .unwrap_err()
        .contains("404"));
    server.kill().await.unwrap();
}

#[tokio::test]
async fn tcp_probe_needs_a_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let probe = Probe::Tcp { addr };
    assert!(probe.run(Duration::from_secs(1)).await.is_ok());
    drop(listener);
    assert!(probe.run(Duration::from_secs(1)).await.is_err());
}

#[tokio::test]
async fn exec_probe_exits_zero_gets_the_instance_env_and_is_killed_on_timeout() {
    let dir = workload_dir();
    let driver = ProcessDriver::new(dir.path());
    let mut spec = sh("exec-1", "true");
    spec.spec.ports = BTreeMap::from([("http".to_string(), 1234)]);
    let mut h = health(100, 1, 1);
    h.exec = Some(vec![
        "/bin/sh".into(),
        "-c".into(),
        "test \"$PORT\" = 1234".into(),
    ]);
    spec.spec.health = Some(h);
    std::fs::create_dir_all(driver.instance_dir("exec-1").unwrap()).unwrap();
    let mut check = HealthCheck::for_instance(&driver, &spec, &spec.spec.ports.clone())
        .unwrap()
        .unwrap();
    let (result, transition) = check.check().await;
    assert_eq!(result, Ok(()));
    assert_eq!(transition, Some(Transition::BecameHealthy));

    let launch = |script: &str| Launch {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: BTreeMap::new(),
        cwd: dir.path().to_path_buf(),
        run_as: None,
    };
    let fails = Probe::Exec(launch("exit 3"))
        .run(Duration::from_secs(5))
        .await;
    assert!(fails.unwrap_err().contains('3'));

    let pid_file = dir.path().join("sleeper.pid");
    let t0 = Instant::now();
    let slow = Probe::Exec(launch("sleep 30 & echo $! > sleeper.pid; wait"))
        .run(Duration::from_millis(300))
        .await;
    assert!(slow.unwrap_err().contains("did not finish"));
    assert!(t0.elapsed() < Duration::from_secs(5));
    let sleeper: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually("the timed-out check's whole group to be killed", || {
        (!alive(sleeper)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn checks_that_cannot_be_built_say_what_to_fix() {
    let dir = workload_dir();
    let driver = ProcessDriver::new(dir.path());
    let mut spec = sh("bad-1", "true");
    let mut h = health(100, 1, 1);
    h.http = Some("/healthz".into());
    h.port = Some("admin".into());
    spec.spec.health = Some(h.clone());
    let ports = BTreeMap::from([("http".to_string(), 8080)]);
    let e = HealthCheck::for_instance(&driver, &spec, &ports).unwrap_err();
    assert!(e.to_string().contains("`admin`"), "{e}");

    h.port = None;
    spec.spec.health = Some(h.clone());
    let check = HealthCheck::for_instance(&driver, &spec, &ports)
        .unwrap()
        .unwrap();
    assert_eq!(
        check.probe,
        Probe::Http {
            addr: "127.0.0.1:8080".parse().unwrap(),
            path: "/healthz".into()
        }
    );
    assert!(HealthCheck::for_instance(&driver, &spec, &BTreeMap::new()).is_err());

    h.tcp = Some(true);
    spec.spec.health = Some(h);
    let e = HealthCheck::for_instance(&driver, &spec, &ports).unwrap_err();
    assert!(e.to_string().contains("exactly one"), "{e}");
}
