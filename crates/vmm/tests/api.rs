//! The API socket against a running guest, over a real Unix socket: info, pause (the guest's
//! progress counter stops and its memory does not change), resume, stop, shutdown, statistics
//! that match what the guest did, and hostile clients (garbage, oversized, half-sent, wrong
//! method, slow and many at once) that leave it answering.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{build, config, kvm, Capture};
use hypervisor::kvm::KvmVm;
use vm_memory::{Bytes, GuestAddress};
use vmm::api::http::parse_response;
use vmm::api::{ApiServer, Limits, Listener};
use vmm::stats::{ExitKind, Stats};
use vmm::{Outcome, Vm};

fn socket_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "vibe-vmm-api-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

struct Running {
    vm: Vm<KvmVm>,
    api: ApiServer,
    path: PathBuf,
}

/// Boots the counter guest with the API on a fresh socket.
fn start(limits: Limits) -> Option<Running> {
    start_guest(test_guests::COUNTER, true, limits).map(|(r, _)| r)
}

/// Boots `guest`, with or without ACPI, with the API on a fresh socket.
fn start_guest(guest: &'static [u8], acpi: bool, limits: Limits) -> Option<(Running, Capture)> {
    let out = Capture::default();
    let mut c = config(guest, 1, &out);
    c.acpi = acpi;
    start_with(c, limits).map(|r| (r, out))
}

/// Boots a VM built from `config` with the API on a fresh socket.
fn start_with(config: vmm::VmConfig, limits: Limits) -> Option<Running> {
    let kvm = kvm()?;
    let mut vm = build(&kvm, config);
    let path = socket_path();
    let listener = Listener::bind(&path).unwrap();
    vm.start().unwrap();
    let api = ApiServer::start(
        listener,
        vm.controller().unwrap(),
        limits,
        vmm::SeccompMode::Kill,
    )
    .unwrap();
    let r = Running { vm, api, path };
    // Give up after a minute whatever happens.
    let stop = r.vm.stop_handle();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        stop.stop(Outcome::Stopped("test time limit".into()));
    });
    Some(r)
}

impl Running {
    fn counter(&self) -> u64 {
        self.vm
            .memory()
            .read_obj::<u64>(GuestAddress(test_guests::COUNTER_ADDR))
            .unwrap()
    }

    /// Waits until the guest's counter moves past `above`.
    fn counter_passes(&self, above: u64) -> u64 {
        let t0 = Instant::now();
        loop {
            let c = self.counter();
            if c > above {
                return c;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "counter stuck at {c}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends raw bytes, returns the raw answer.
    fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        let mut s = UnixStream::connect(&self.path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        answer
    }

    fn call(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = self.raw(req.as_bytes());
        let (status, body) = parse_response(&answer)
            .unwrap_or_else(|| panic!("not HTTP: {:?}", String::from_utf8_lossy(&answer)));
        let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, json)
    }

    fn stop(mut self) -> Outcome {
        // The first stop wins: a test that stopped the VM through the API keeps its outcome.
        self.vm
            .stop_handle()
            .stop(Outcome::Stopped("test done".into()));
        self.api.stop();
        assert!(!self.path.exists(), "the socket file outlived the server");
        self.vm.wait()
    }
}

fn guest_memory(vm: &Vm<KvmVm>) -> Vec<u8> {
    let mut m = vec![0u8; 4 << 20];
    vm.memory().read_slice(&mut m, GuestAddress(0)).unwrap();
    m
}

#[test]
fn info_pause_resume_stats_and_stop() {
    let Some(r) = start(Limits::default()) else {
        return;
    };
    let mode = std::fs::metadata(&r.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let c0 = r.counter_passes(0);

    let (status, info) = r.call("GET", "/vm", "");
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["state"], "running");
    assert_eq!(info["vcpus"], 1);
    assert_eq!(info["config"]["memory"], 32 << 20);
    assert_eq!(info["devices"][0], "serial (COM1)");
    assert_eq!(info["devices"][1], "ACPI power button (GED)");
    assert_eq!(info["boot"], 1);

    // Every one of the guest's 1000 port writes is one exit, to no device.
    let (status, stats) = r.call("GET", "/vm/stats", "");
    assert_eq!(status, 200, "{stats}");
    let stats: Stats = serde_json::from_value(stats).unwrap();
    assert_eq!(stats.count(ExitKind::PioOut), test_guests::COUNTER_WRITES);
    assert_eq!(stats.pio_count("unclaimed"), test_guests::COUNTER_WRITES);
    assert_eq!(stats.vcpus[0].exits, stats.total.exits);

    let (status, answer) = r.call("PUT", "/vm/pause", "");
    assert_eq!((status, &answer["state"]), (200, &"paused".into()));
    let frozen = guest_memory(&r.vm);
    let count = r.counter();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(r.counter(), count, "the counter moved while paused");
    assert!(
        guest_memory(&r.vm) == frozen,
        "guest memory changed while paused"
    );
    let (status, answer) = r.call("PUT", "/vm/pause", "");
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("already paused"));
    assert_eq!(r.call("GET", "/vm", "").1["state"], "paused");

    let (status, answer) = r.call("PUT", "/vm/resume", "{}");
    assert_eq!((status, &answer["state"]), (200, &"running".into()));
    r.counter_passes(count.max(c0));
    assert_eq!(r.call("POST", "/vm/resume", "").0, 409);

    let (status, answer) = r.call("PUT", "/vm/stop", r#"{"reason": "test"}"#);
    assert_eq!(status, 200, "{answer}");
    match r.stop() {
        Outcome::Requested(why) => assert!(why.contains("stop") && why.contains("test"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// The virtio-blk guest's requests, bytes, refused write and interrupts, as `GET /vm/stats`
/// serves them.
#[test]
fn stats_show_each_virtio_queue_and_interrupt_line() {
    let disks: Vec<PathBuf> = ["rw", "ro"]
        .iter()
        .map(|tag| {
            let p = socket_path().with_extension(format!("{tag}.img"));
            std::fs::write(&p, vec![0u8; 64 * 512]).unwrap();
            p
        })
        .collect();
    let out = Capture::default();
    let mut c = config(test_guests::VIRTIO_BLK, 1, &out);
    c.disks = disks
        .iter()
        .zip([false, true])
        .map(|(path, read_only)| vmm::DiskConfig {
            path: path.clone(),
            read_only,
        })
        .collect();
    let Some(r) = start_with(c, Limits::default()) else {
        return;
    };
    // The guest is done when the read-only disk has refused its write.
    let t0 = Instant::now();
    let stats = loop {
        let (status, stats) = r.call("GET", "/vm/stats", "");
        assert_eq!(status, 200, "{stats}");
        if stats["virtio"][1]["queues"][0]["errors"] == 1 {
            break stats;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{stats}\n{}",
            out.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let blk0 = &stats["virtio"][0];
    assert_eq!(blk0["device"], "virtio-blk0");
    assert_eq!(blk0["transport"], "mmio");
    let q = &blk0["queues"][0];
    assert_eq!(q["name"], "requests");
    assert_eq!(
        (&q["requests"], &q["bytes"], &q["errors"]),
        (&4.into(), &1044.into(), &0.into())
    );
    assert_eq!(blk0["used_interrupts"], 4);
    assert_eq!(stats["virtio"][1]["queues"][0]["requests"], 1);
    let lines = stats["interrupts"].as_array().unwrap();
    let blk0_lines: Vec<_> = lines
        .iter()
        .filter(|l| l["device"] == "virtio-blk0")
        .collect();
    assert_eq!(blk0_lines.len(), 1, "{lines:?}");
    assert!(blk0_lines[0]["line"].as_str().unwrap().starts_with("gsi "));
    assert_eq!(blk0_lines[0]["count"], 4);
    assert!(lines.iter().any(|l| l["device"] == "serial"), "{lines:?}");
    r.stop();
    for d in disks {
        let _ = std::fs::remove_file(d);
    }
}

/// With ACPI, shutdown presses the power button (202: the guest decides); a guest that
/// ignores it keeps running. The power-button guest powers off.
#[test]
fn shutdown_presses_the_power_button_of_an_acpi_guest() {
    let Some(r) = start(Limits::default()) else {
        return;
    };
    let c = r.counter_passes(0);
    let (status, answer) = r.call("PUT", "/vm/shutdown", "");
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["shutdown"], "power_button");
    assert_eq!(answer["state"], "running");
    // The counter guest has interrupts off: it never hears the button.
    r.counter_passes(c);
    assert_eq!(r.call("GET", "/vm", "").1["state"], "running");
    r.stop();

    let Some((r, out)) = start_guest(test_guests::POWER_BUTTON, true, Limits::default()) else {
        return;
    };
    let t0 = Instant::now();
    while !out.text().contains("waiting for the power button") {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", out.text());
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, answer) = r.call("PUT", "/vm/shutdown", "");
    assert_eq!(
        (status, &answer["shutdown"]),
        (202, &"power_button".into()),
        "{answer}"
    );
    let Running { vm, mut api, .. } = r;
    assert_eq!(vm.wait(), Outcome::PowerOff, "{}", out.text());
    api.stop();
    assert!(
        out.text().contains("power button pressed"),
        "{}",
        out.text()
    );
}

/// Without ACPI there is no button: shutdown stops the VM (200, "stopped").
#[test]
fn shutdown_stops_a_guest_without_acpi_and_stop_then_conflicts() {
    let Some((r, _)) = start_guest(test_guests::COUNTER, false, Limits::default()) else {
        return;
    };
    r.counter_passes(0);
    let (status, answer) = r.call("PUT", "/vm/shutdown", "");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["shutdown"], "stopped");
    let (status, answer) = r.call("PUT", "/vm/stop", "");
    assert_eq!(status, 409, "{answer}");
    assert_eq!(r.call("GET", "/vm", "").1["state"], "stopped");
    match r.stop() {
        Outcome::Requested(why) => assert!(why.contains("shutdown"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_requests_get_json_errors_with_the_right_status() {
    let Some(r) = start(Limits::default()) else {
        return;
    };
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("GET", "/nope", "", 404, "no such endpoint"),
        ("GET", "/vm/pause", "", 405, "not allowed"),
        ("DELETE", "/vm", "", 405, "not allowed"),
        ("PUT", "/vm/pause", "not json", 400, "bad request body"),
        ("PUT", "/vm/pause", r#"{"state": 1}"#, 400, "unknown field"),
        ("PUT", "/vm/stop", r#"{"reason": 5}"#, 400, "invalid type"),
        ("GET", "/vm", "{}", 400, "takes no body"),
    ];
    for &(method, path, body, want, needle) in cases {
        let (status, answer) = r.call(method, path, body);
        assert_eq!(status, want, "{method} {path} {body}: {answer}");
        let msg = answer["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{method} {path}: {msg}");
    }
    // Nothing of that paused or stopped the guest.
    assert_eq!(r.call("GET", "/vm", "").1["state"], "running");
    r.stop();
}

#[test]
fn hostile_clients_leave_the_socket_answering() {
    let limits = Limits {
        max_clients: 4,
        timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let Some(r) = start(limits) else {
        return;
    };
    let status = |answer: &[u8]| parse_response(answer).map(|(s, _)| s);
    // Garbage, a head that never ends, a body too large, a version we do not speak.
    assert_eq!(status(&r.raw(b"\x00\xff\x13garbage\r\n\r\n")), Some(400));
    assert_eq!(status(&r.raw(&vec![b'A'; 20_000])), Some(431));
    let big = b"PUT /vm/stop HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n";
    assert_eq!(status(&r.raw(big)), Some(413));
    assert_eq!(status(&r.raw(b"GET /vm HTTP/3\r\n\r\n")), Some(505));
    // Half a request, then silence: answered 408 at the deadline.
    let t0 = Instant::now();
    assert_eq!(status(&r.raw(b"GET /vm HTTP/1.1\r\nHost: x")), Some(408));
    assert!(t0.elapsed() < Duration::from_secs(3));
    // Half a request, then gone.
    drop(
        UnixStream::connect(&r.path)
            .unwrap()
            .write_all(b"PUT /vm/pa"),
    );
    std::thread::sleep(Duration::from_millis(50));
    // Silent clients hold every slot until their deadline; an honest client waits in the
    // backlog meanwhile, and then gets in.
    let idle: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(&r.path).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    assert_eq!(r.call("GET", "/vm", "").0, 200);
    assert!(
        t0.elapsed() > Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    drop(idle);
    // Many clients at once, more than the slots: each gets its whole answer.
    let path = r.path.clone();
    let threads: Vec<_> = (0..24)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&path).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(b"GET /vm/stats HTTP/1.1\r\n\r\n").unwrap();
                let mut a = Vec::new();
                s.read_to_end(&mut a).unwrap();
                parse_response(&a).map(|(s, _)| s)
            })
        })
        .collect();
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(answers.iter().all(|a| *a == Some(200)), "{answers:?}");
    // The guest ran all along, and the API still works.
    let c = r.counter();
    r.counter_passes(c);
    assert_eq!(r.call("GET", "/vm", "").1["state"], "running");
    r.stop();
}

#[test]
fn an_existing_path_is_refused() {
    let path = socket_path();
    std::fs::write(&path, b"someone else's").unwrap();
    let err = Listener::bind(&path).err().expect("bound over a file");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
    std::fs::remove_file(&path).unwrap();
}
